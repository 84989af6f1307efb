"""pyllmc.shards: llm.c's token shard format, and the loaders over it."""
import os

import numpy as np
import pytest

from pyllmc.shards import DataLoader, ShardError, read_shard, val_batches, write_shard


def llmc_shard_bytes(tokens, magic=20240520, version=1, count=None):
    """A shard laid out by hand as llm.c's data_common.write_datafile does:
    256 little-endian int32 (magic, version, token count, zeros), uint16 tokens."""
    header = np.zeros(256, dtype="<i4")
    header[:3] = magic, version, len(tokens) if count is None else count
    return header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes()


def test_round_trip_and_layout(tmp_path):
    tokens = np.array([50256, 0, 1, 65535, 31373, 995], dtype=np.int64)
    path = tmp_path / "a.bin"
    write_shard(path, tokens)
    assert path.read_bytes() == llmc_shard_bytes(tokens)
    got = read_shard(path)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, tokens)
    write_shard(path, [])  # empty shard is legal
    assert len(read_shard(path)) == 0 and path.stat().st_size == 1024
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_reads_files_written_as_llmc_does(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50257, size=10_001)
    path = tmp_path / "fineweb_train_000001.bin"
    path.write_bytes(llmc_shard_bytes(tokens))
    np.testing.assert_array_equal(read_shard(path), tokens)


def test_write_refuses_out_of_range(tmp_path):
    with pytest.raises(ValueError, match="0..65535"):
        write_shard(tmp_path / "x.bin", [1, 70000])
    with pytest.raises(ValueError, match="0..65535"):
        write_shard(tmp_path / "x.bin", [-1])
    assert not os.path.exists(tmp_path / "x.bin")


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "s.bin"
    write_shard(path, [1, 2, 3])

    class Boom(Exception):
        pass
    real_fsync = os.fsync
    def fsync_fails(fd):
        raise Boom
    monkeypatch.setattr(os, "fsync", fsync_fails)
    with pytest.raises(Boom):
        write_shard(path, [4, 5, 6, 7])
    monkeypatch.setattr(os, "fsync", real_fsync)
    np.testing.assert_array_equal(read_shard(path), [1, 2, 3])
    assert os.listdir(tmp_path) == ["s.bin"]


@pytest.mark.parametrize("content, message", [
    (llmc_shard_bytes([1, 2], magic=20240326), "not a token shard (magic 20240326, expected 20240520 or 20240801)"),
    (llmc_shard_bytes([1, 2], version=7), "shard version 7 is not supported"),
    (llmc_shard_bytes([1, 2, 3])[:-2], "header says 3 tokens (1030 bytes) but the file has 1028 bytes"),
    (llmc_shard_bytes([1, 2]) + b"\0\0", "header says 2 tokens (1028 bytes) but the file has 1030 bytes"),
    (llmc_shard_bytes([1], count=-5), "header says -5 tokens"),
    (b"\x01" * 100, "100 bytes is too short for a shard"),
])
def test_bad_files_are_named(tmp_path, content, message):
    path = tmp_path / "bad_shard.bin"
    path.write_bytes(content)
    with pytest.raises(ShardError) as e:
        read_shard(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_missing_and_unmatched(tmp_path):
    with pytest.raises(ShardError, match="nope.bin: cannot read shard"):
        read_shard(tmp_path / "nope.bin")
    with pytest.raises(ShardError, match="no shard files match"):
        DataLoader(str(tmp_path / "*_train_*.bin"), 2, 4)


def make_shards(folder, sizes, start=0):
    """Shards whose tokens count up, so a batch shows where it came from."""
    paths = []
    for i, n in enumerate(sizes):
        path = folder / f"d_train_{i:06d}.bin"
        write_shard(path, np.arange(start, start + n) % 65536)
        start += n
        paths.append(path)
    return paths


def test_sequential_batches_as_llmc(tmp_path):
    # B*T = 6: shard 0 (20 tokens) has windows at 0, 6, 12 (12+7 <= 20), shard 1 (13) at 0, 6
    make_shards(tmp_path, [20, 13])
    loader = DataLoader(str(tmp_path / "d_train_*.bin"), B=2, T=3)
    assert loader.windows == [3, 2] and loader.windows_per_epoch == 5
    starts = [0, 6, 12, 20, 26, 0, 6]  # then the next epoch
    for s in starts:
        x, y = loader.next_batch()
        assert x.shape == y.shape == (2, 3) and x.dtype == np.int32
        np.testing.assert_array_equal(x.ravel(), np.arange(s, s + 6))
        np.testing.assert_array_equal(y.ravel(), np.arange(s + 1, s + 7))
    assert loader.state() == {"epoch": 1, "shard": 0, "window": 2}


def test_short_shards_are_skipped_and_too_little_data_is_refused(tmp_path):
    make_shards(tmp_path, [5, 9])
    loader = DataLoader(str(tmp_path / "*.bin"), B=2, T=4)  # 9 tokens: one window in shard 1
    assert loader.windows == [0, 1]
    first = loader.next_batch()[0]
    np.testing.assert_array_equal(loader.next_batch()[0], first)
    with pytest.raises(ShardError, match=r"too little data for one batch of B=2 x T=8: needs 17 "
                                         r"tokens in one shard, the largest of 2 shard\(s\) holds 9"):
        DataLoader(str(tmp_path / "*.bin"), B=2, T=8)


@pytest.mark.parametrize("shuffle", [False, True])
def test_resume_from_state_is_exact(tmp_path, shuffle):
    make_shards(tmp_path, [50, 31, 77])
    pattern = str(tmp_path / "*.bin")
    straight = DataLoader(pattern, 2, 4, shuffle=shuffle, seed=3)
    expected = [straight.next_batch()[0].copy() for _ in range(40)]
    for cut in (0, 5, 13, 27):
        first = DataLoader(pattern, 2, 4, shuffle=shuffle, seed=3)
        for _ in range(cut):
            first.next_batch()
        resumed = DataLoader(pattern, 2, 4, shuffle=shuffle, seed=3)
        resumed.load_state(first.state())
        for want in expected[cut:]:
            np.testing.assert_array_equal(resumed.next_batch()[0], want)


@pytest.mark.parametrize("shuffle", [False, True])
def test_skip_moves_as_reading_does(tmp_path, shuffle):
    # ranks of a data-parallel run skip the others' batches: the position and
    # what follows must be those of reading them, across shards and epochs
    make_shards(tmp_path, [50, 31, 77])
    pattern = str(tmp_path / "*.bin")
    for n in (0, 1, 7, 13, 40):
        reading = DataLoader(pattern, 2, 4, shuffle=shuffle, seed=3)
        for _ in range(n):
            reading.next_batch()
        skipping = DataLoader(pattern, 2, 4, shuffle=shuffle, seed=3)
        skipping.skip(n)
        assert skipping.state() == reading.state()
        np.testing.assert_array_equal(skipping.next_batch()[0], reading.next_batch()[0])


def test_shuffle_is_a_permutation_per_epoch(tmp_path):
    make_shards(tmp_path, [50, 31, 77])
    pattern = str(tmp_path / "*.bin")
    plain = DataLoader(pattern, 2, 4)
    n = plain.windows_per_epoch
    windows = sorted(tuple(plain.next_batch()[0].ravel()) for _ in range(n))
    mixed = DataLoader(pattern, 2, 4, shuffle=True, seed=1)
    epoch0 = [tuple(mixed.next_batch()[0].ravel()) for _ in range(n)]
    epoch1 = [tuple(mixed.next_batch()[0].ravel()) for _ in range(n)]
    assert sorted(epoch0) == sorted(epoch1) == windows
    assert epoch0 != epoch1 and epoch0 != sorted(epoch0)
    other_seed = DataLoader(pattern, 2, 4, shuffle=True, seed=2)
    assert [tuple(other_seed.next_batch()[0].ravel()) for _ in range(n)] != epoch0


def test_val_batches_are_the_first_windows(tmp_path):
    make_shards(tmp_path, [30])
    batches = val_batches(str(tmp_path / "*.bin"), 1, 5, max_batches=100)
    assert len(batches) == 5  # (30 - 1) // 5
    np.testing.assert_array_equal(batches[2][0].ravel(), np.arange(10, 15))
    assert len(val_batches(str(tmp_path / "*.bin"), 1, 5, max_batches=2)) == 2


def test_bad_state_is_refused(tmp_path):
    make_shards(tmp_path, [30])
    loader = DataLoader(str(tmp_path / "*.bin"), 1, 5)
    with pytest.raises(ValueError, match="does not fit 1 shard"):
        loader.load_state({"epoch": 0, "shard": 4, "window": 0})


def test_a_folder_splits_into_train_and_val_shards(tmp_path):
    write_shard(tmp_path / "c_val_000000.bin", np.full(40, 60000))
    write_shard(tmp_path / "c_train_000001.bin", np.arange(40))
    write_shard(tmp_path / "c_train_000002.bin", np.arange(40, 80))
    train = DataLoader(str(tmp_path), 1, 4)
    assert [os.path.basename(p) for p in train.paths] == ["c_train_000001.bin", "c_train_000002.bin"]
    assert not any(60000 in x for x, _ in (train.next_batch() for _ in range(train.windows_per_epoch)))
    val = val_batches(str(tmp_path), 1, 4, max_batches=100)
    assert len(val) == 9 and all((x == 60000).all() for x, _ in val)
    os.remove(tmp_path / "c_val_000000.bin")
    with pytest.raises(ShardError, match="no val shards in the folder"):
        val_batches(str(tmp_path), 1, 4, max_batches=1)

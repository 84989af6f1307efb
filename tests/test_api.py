"""The C API through pyllmc: checkpoints, determinism and bad input.

Every bad input must raise an exception naming the problem and leave the
process alive and the model usable."""

import numpy as np
import pytest

import pyllmc
from pyllmc import Config, Model

TINY = Config(max_seq_len=16, vocab_size=97, num_layers=2, num_heads=2, channels=16)


def batch(rng, B=2, T=8, V=97, micro_steps=None):
    shape = (B, T + 1) if micro_steps is None else (micro_steps, B, T + 1)
    tokens = rng.integers(0, V, size=shape)
    return tokens[..., :-1].copy(), tokens[..., 1:].copy()


@pytest.fixture
def model():
    with Model.from_config(TINY, max_batch_size=2, seed=7) as m:
        yield m


def assert_usable(m):
    x, y = batch(np.random.default_rng(0))
    assert np.isfinite(m.eval(x, y))


# ---- shape, init -----------------------------------------------------------

def test_presets_and_padding():
    c = Config.preset("d12")
    assert (c.num_layers, c.num_heads, c.channels, c.padded_vocab_size) == (12, 12, 768, 50304)
    assert Config.preset("d48").channels == 1600
    with pytest.raises(pyllmc.InvalidArgumentError, match="d7"):
        Config.preset("d7")


def test_padded_vocab_and_parameter_count(model):
    assert model.config.padded_vocab_size == 128
    C, L, Vp, T = 16, 2, 128, 16
    expected = Vp * C + T * C + L * (12 * C * C + 13 * C) + 2 * C
    assert model.num_parameters == expected


def test_init_is_gpt2(model):
    p = model.parameters()
    C, Vp, V = 16, 128, 97
    wte = p[:Vp * C].reshape(Vp, C)
    assert np.all(wte[V:] == 0), "padded rows start at zero"
    assert abs(wte[:V].std() - 0.02) < 0.003
    ln1w = p[Vp * C + 16 * C: Vp * C + 16 * C + 2 * C]
    assert np.all(ln1w == 1)


def test_same_seed_same_weights_and_training():
    rng = np.random.default_rng(1)
    data = [batch(rng) for _ in range(3)]
    runs = []
    for _ in range(2):
        with Model.from_config(TINY, max_batch_size=2, seed=3) as m:
            runs.append(([m.step(x, y, lr=1e-2, weight_decay=0.1)[0] for x, y in data], m.parameters()))
    assert runs[0][0] == runs[1][0]
    assert np.array_equal(runs[0][1], runs[1][1])
    with Model.from_config(TINY, max_batch_size=2, seed=4) as other:
        assert not np.array_equal(other.parameters(), runs[0][1])


# ---- checkpoints -------------------------------------------------------------

def test_checkpoint_round_trip_is_bit_exact(model, tmp_path):
    x, y = batch(np.random.default_rng(2))
    model.step(x, y, lr=1e-2)
    path = tmp_path / "m.bin"
    model.save(path)
    with Model.load(path, max_batch_size=2) as again:
        assert again.config == model.config
        assert np.array_equal(again.parameters(), model.parameters())
        assert np.array_equal(again.logits(x), model.logits(x))
    header = np.fromfile(path, dtype=np.int32, count=256)
    assert list(header[:8]) == [20240326, 3, 16, 97, 2, 2, 16, 128]
    assert path.stat().st_size == 1024 + 4 * model.num_parameters


def test_bf16_checkpoint(model, tmp_path):
    path = tmp_path / "m16.bin"
    model.save(path, dtype="bf16")
    header = np.fromfile(path, dtype=np.int32, count=2)
    assert list(header) == [20240326, 5]
    assert path.stat().st_size == 1024 + 2 * model.num_parameters
    with Model.load(path) as again:
        p, q = model.parameters(), again.parameters()
        assert np.allclose(p, q, rtol=2 ** -8, atol=0)
        # bf16 values survive a second round trip exactly
        again.save(tmp_path / "m16b.bin", dtype="bf16")
        assert (tmp_path / "m16.bin").read_bytes() == (tmp_path / "m16b.bin").read_bytes()


def test_optimizer_state_resume_is_exact(tmp_path):
    rng = np.random.default_rng(3)
    data = [batch(rng) for _ in range(4)]
    hp = dict(lr=1e-2, weight_decay=0.1)
    with Model.from_config(TINY, max_batch_size=2) as m:
        straight = [m.step(x, y, **hp) for x, y in data]
    with Model.from_config(TINY, max_batch_size=2) as m:
        first = [m.step(x, y, **hp) for x, y in data[:2]]
        m.save(tmp_path / "m.bin")
        m.save_optimizer(tmp_path / "opt.bin")
    with Model.load(tmp_path / "m.bin", max_batch_size=2) as m:
        m.load_optimizer(tmp_path / "opt.bin")
        assert m.step_count == 2
        resumed = first + [m.step(x, y, **hp) for x, y in data[2:]]
    assert resumed == straight


def test_checkpoint_written_in_llmc_layout_by_hand_loads(tmp_path):
    """A file assembled tensor by tensor (as a PyTorch export script does)."""
    rng = np.random.default_rng(4)
    C, L, V, Vp, T = 16, 2, 97, 128, 16
    shapes = [(Vp, C), (T, C), (L, C), (L, C), (L, 3 * C, C), (L, 3 * C), (L, C, C), (L, C),
              (L, C), (L, C), (L, 4 * C, C), (L, 4 * C), (L, C, 4 * C), (L, C), (C,), (C,)]
    tensors = [rng.standard_normal(s).astype(np.float32) * 0.1 for s in shapes]
    header = np.zeros(256, dtype=np.int32)
    header[:8] = [20240326, 3, T, V, L, 2, C, Vp]
    path = tmp_path / "hand.bin"
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for t in tensors:
            f.write(t.tobytes())
    with Model.load(path) as m:
        assert np.array_equal(m.parameters(), np.concatenate([t.ravel() for t in tensors]))


def write_header(path, fields, payload_floats=0, version=3):
    header = np.zeros(256, dtype=np.int32)
    header[:len(fields)] = fields
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(b"\0" * (4 if version == 3 else 2) * payload_floats)


def test_missing_file():
    with pytest.raises(pyllmc.LlmcIOError, match="no/such/file.bin"):
        Model.load("/no/such/file.bin")


def test_truncated_checkpoint(model, tmp_path):
    path = tmp_path / "m.bin"
    model.save(path)
    data = path.read_bytes()
    path.write_bytes(data[:-4])
    with pytest.raises(pyllmc.FileFormatError, match="truncated"):
        Model.load(path)
    path.write_bytes(data[:100])
    with pytest.raises(pyllmc.FileFormatError, match="too short"):
        Model.load(path)


def test_wrong_magic_and_version(tmp_path):
    path = tmp_path / "bad.bin"
    write_header(path, [12345, 3, 16, 97, 2, 2, 16, 128])
    with pytest.raises(pyllmc.FileFormatError, match="magic 12345"):
        Model.load(path)
    write_header(path, [20240326, 4, 16, 97, 2, 2, 16, 128])
    with pytest.raises(pyllmc.FileFormatError, match="version 4"):
        Model.load(path)


def test_header_sizes_that_would_overflow(tmp_path):
    path = tmp_path / "huge.bin"
    write_header(path, [20240326, 3, 2**24, 2**24, 2**24, 1, 2**24, 2**24])
    with pytest.raises(pyllmc.FileFormatError, match="parameters"):
        Model.load(path)
    write_header(path, [20240326, 3, 16, 97, 2, 3, 16, 128])
    with pytest.raises(pyllmc.FileFormatError, match="divisible"):
        Model.load(path)
    write_header(path, [20240326, 3, 16, -5, 2, 2, 16, 128])
    with pytest.raises(pyllmc.FileFormatError, match="vocab_size = -5"):
        Model.load(path)


def test_corrupted_optimizer_file(model, tmp_path):
    model.save_optimizer(tmp_path / "opt.bin")
    (tmp_path / "short.bin").write_bytes((tmp_path / "opt.bin").read_bytes()[:2000])
    with pytest.raises(pyllmc.FileFormatError, match="short.bin"):
        model.load_optimizer(tmp_path / "short.bin")
    with Model.from_config(Config(max_seq_len=16, vocab_size=97, num_layers=1, num_heads=2,
                                  channels=16)) as other:
        with pytest.raises(pyllmc.FileFormatError, match="L=2"):
            other.load_optimizer(tmp_path / "opt.bin")
    assert_usable(model)


def test_save_to_unwritable_place_keeps_old_file(model, tmp_path):
    with pytest.raises(pyllmc.LlmcIOError, match="no_dir"):
        model.save(tmp_path / "no_dir" / "m.bin")
    assert list(tmp_path.iterdir()) == []
    assert_usable(model)


# ---- bad batches ---------------------------------------------------------------

def test_token_out_of_vocab(model):
    x, y = batch(np.random.default_rng(5))
    x[1, 3] = 97
    with pytest.raises(pyllmc.InvalidArgumentError, match=r"inputs\[11\] = 97, expected 0..96"):
        model.step(x, y, lr=1e-3)
    x[1, 3] = -1
    with pytest.raises(pyllmc.InvalidArgumentError, match="= -1"):
        model.eval(x, y)
    x[1, 3] = 0
    y[0, 0] = -2
    with pytest.raises(pyllmc.InvalidArgumentError, match="targets"):
        model.backward(x, y)
    assert_usable(model)


def test_batch_beyond_plan(model):
    x, y = batch(np.random.default_rng(6), B=3)
    with pytest.raises(pyllmc.InvalidArgumentError, match="B = 3, expected 1..2"):
        model.step(x, y, lr=1e-3)
    x, y = batch(np.random.default_rng(6), T=17)
    with pytest.raises(pyllmc.InvalidArgumentError, match="T = 17, expected 1..16"):
        model.eval(x, y)
    assert_usable(model)


def test_mismatched_shapes(model):
    x, y = batch(np.random.default_rng(7))
    with pytest.raises(pyllmc.InvalidArgumentError, match="shape"):
        model.step(x, y[:, :-1], lr=1e-3)
    with pytest.raises(pyllmc.InvalidArgumentError, match="integer"):
        model.eval(x.astype(np.float32), y)
    assert_usable(model)


def test_bad_options():
    with pytest.raises(pyllmc.InvalidArgumentError, match="max_seq_len = 32"):
        Model.from_config(TINY, max_seq_len=32)
    with pytest.raises(pyllmc.InvalidArgumentError, match="device"):
        Model.from_config(TINY, device="tpu")
    with pytest.raises(pyllmc.InvalidArgumentError, match="channels = 15"):
        Model.from_config(Config(max_seq_len=16, vocab_size=97, num_layers=1, num_heads=2, channels=15))


def test_update_needs_gradients_and_finite_hyperparameters(model):
    with pytest.raises(pyllmc.InvalidArgumentError, match="llmc_backward first"):
        model.update(lr=1e-3)
    x, y = batch(np.random.default_rng(8))
    model.backward(x, y)
    with pytest.raises(pyllmc.InvalidArgumentError, match="beta1=1.5"):
        model.update(lr=1e-3, beta1=1.5)
    before = model.parameters()
    model.update(lr=1e-2)
    assert model.step_count == 1
    assert not np.array_equal(before, model.parameters())


def test_ignored_targets(model):
    x, y = batch(np.random.default_rng(9))
    y_masked = y.copy()
    y_masked[:, :4] = -1
    mean, per_token = model.eval(x, y_masked, per_token=True)
    _, full = model.eval(x, y, per_token=True)
    assert np.all(per_token[:, :4] == 0)
    # the LM head runs on the counted rows only; OpenBLAS may pick another
    # kernel for fewer rows, so equal up to rounding
    np.testing.assert_allclose(per_token[:, 4:], full[:, 4:], rtol=2e-6)
    assert abs(mean - full[:, 4:].mean()) < 1e-6
    with pytest.raises(pyllmc.InvalidArgumentError, match="every target is -1"):
        model.eval(x, np.full_like(y, -1))


def test_closed_model_raises(tmp_path):
    m = Model.from_config(TINY)
    m.close()
    with pytest.raises(pyllmc.InvalidArgumentError, match="closed"):
        m.parameters()


def test_config_from_file_reads_only_the_header(model, tmp_path):
    model.save(tmp_path / "m.bin")
    assert Config.from_file(tmp_path / "m.bin") == model.config
    (tmp_path / "cut.bin").write_bytes((tmp_path / "m.bin").read_bytes()[:2000])
    with pytest.raises(pyllmc.FileFormatError, match="cut.bin"):
        Config.from_file(tmp_path / "cut.bin")

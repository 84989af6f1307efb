"""data_prep/fineweb.py (pyllmc.fineweb) on small local files the tests write: the shards hold
exactly the tokens llm.c's fineweb.py would write, whatever the input format,
and an interrupted run picks up where it stopped."""
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pyllmc import fineweb
from pyllmc.shards import read_shard
from pyllmc.tokenizer import EOT, gpt2_encoding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHARD_SIZE = 1500


def make_docs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    words = ("the quick brown fox jumps over lazy dogs while 42 engineers write C, "
             "Python & CUDA; naïve café résumé 東京 emoji 🙂 <|endoftext|> don't it's").split(" ")
    docs = []
    for i in range(n):
        length = int(rng.integers(0, 300)) if i != 7 else 2500  # doc 7 spans shards
        docs.append(" ".join(rng.choice(words, size=length)) + ("\n\n" if i % 3 else ""))
    docs[3] = ""  # an empty document still gets its <|endoftext|>
    return docs


def reference_shards(docs, shard_size):
    """What llm.c's fineweb.py writes: every document as <|endoftext|> then its
    encode_ordinary tokens, the stream cut into shard_size pieces."""
    enc = gpt2_encoding()
    stream = []
    for doc in docs:
        stream.append(EOT)
        stream.extend(enc.encode_ordinary(doc))
    return [np.array(stream[i:i + shard_size], dtype=np.uint16)
            for i in range(0, len(stream), shard_size)]


def shard_names(name, count):
    return [f"{name}_{'val' if i == 0 else 'train'}_{i:06d}.bin" for i in range(count)]


def assert_shards(out_dir, name, expected):
    names = shard_names(name, len(expected))
    assert sorted(f for f in os.listdir(out_dir) if f.endswith(".bin")) == sorted(names)
    for fname, want in zip(names, expected):
        np.testing.assert_array_equal(read_shard(os.path.join(out_dir, fname)), want)


def write_parquet(folder, docs):
    os.makedirs(folder, exist_ok=True)
    half = len(docs) // 2  # two files, several row groups each: order must hold across them
    for i, part in enumerate([docs[:half], docs[half:]]):
        table = pa.table({"id": list(range(len(part))), "text": part})
        pq.write_table(table, os.path.join(folder, f"part{i}.parquet"), row_group_size=16)
    return folder


def write_jsonl(path, docs, field="text"):
    with open(path, "w", encoding="utf-8") as f:
        for i, doc in enumerate(docs):
            f.write(json.dumps({"n": i, field: doc}) + "\n")
    return path


def run(inputs, out_dir, name="t", **kw):
    builder, files = fineweb.list_local_files(inputs)
    source = {"kind": "local", "builder": builder, "files": files}
    return fineweb.prepare(source, str(out_dir), name, kw.pop("shard_size", SHARD_SIZE),
                           progress=False, **kw)


def test_parquet_and_jsonl_give_llmc_shards(tmp_path):
    docs = make_docs()
    expected = reference_shards(docs, SHARD_SIZE)
    assert len(expected) >= 4
    run([write_parquet(tmp_path / "pq", docs)], tmp_path / "a", num_threads=2)
    assert_shards(tmp_path / "a", "t", expected)
    run([write_jsonl(tmp_path / "docs.jsonl", docs)], tmp_path / "b", num_threads=3)
    assert_shards(tmp_path / "b", "t", expected)


def test_text_files_are_one_document_each(tmp_path):
    docs = make_docs(12, seed=1)
    folder = tmp_path / "txt"
    os.makedirs(folder / "sub")
    for i, doc in enumerate(docs):  # sorted walk order: 00.txt .. 11.txt
        with open(folder / ("sub" if i > 5 else "") / f"{i:02d}.txt", "w", encoding="utf-8") as f:
            f.write(doc)
    run([folder], tmp_path / "out", shard_size=600)  # 11 shards: llm.c's layout
    assert_shards(tmp_path / "out", "t", reference_shards(docs, 600))


def test_resume_after_interruption_skips_finished_shards(tmp_path, monkeypatch):
    docs = make_docs(150, seed=2)
    expected = reference_shards(docs, SHARD_SIZE)
    src = write_parquet(tmp_path / "pq", docs)
    run([src], tmp_path / "out", max_shards=2)
    assert_shards(tmp_path / "out", "t", expected[:2])

    # interrupted while writing shard 3: a temp file is left, no progress for it
    real_write = fineweb.write_shard
    def failing_write(path, tokens, **kw):
        if path.endswith("_000003.bin"):
            open(path + ".tmp.1", "wb").write(b"partial")
            raise KeyboardInterrupt
        real_write(path, tokens, **kw)
    monkeypatch.setattr(fineweb, "write_shard", failing_write)
    with pytest.raises(KeyboardInterrupt):
        run([src], tmp_path / "out")
    monkeypatch.setattr(fineweb, "write_shard", real_write)

    # the finished shards are not tokenized again
    written = []
    monkeypatch.setattr(fineweb, "write_shard", lambda p, t, **kw: (written.append(p), real_write(p, t, **kw)))
    run([src], tmp_path / "out")
    assert [os.path.basename(p) for p in written] == shard_names("t", len(expected))[3:]
    os.remove(tmp_path / "out" / "t_train_000003.bin.tmp.1")
    assert_shards(tmp_path / "out", "t", expected)
    progress = json.load(open(tmp_path / "out" / "t_progress.json"))
    assert progress["complete"] and len(progress["shards"]) == len(expected)

    # a damaged shard is written again, the ones before it kept
    with open(tmp_path / "out" / "t_train_000002.bin", "r+b") as f:
        f.truncate(2000)
    written.clear()
    run([src], tmp_path / "out")
    assert [os.path.basename(p) for p in written] == shard_names("t", len(expected))[2:]
    assert_shards(tmp_path / "out", "t", expected)


def test_hub_path_streams_the_named_sample(tmp_path, monkeypatch):
    import datasets
    docs = make_docs(40, seed=3)
    src = write_parquet(tmp_path / "pq", docs)
    calls = []
    real_load = datasets.load_dataset
    def fake_hub(path, name=None, **kw):
        calls.append((path, name, kw))
        return real_load("parquet", data_files=sorted(map(str, src.glob("*.parquet"))), **kw)
    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    out = tmp_path / "hub"
    fineweb.main(["-t", "edu", "-v", "100B", "-s", "1000", "-o", str(out)])
    assert calls == [("HuggingFaceFW/fineweb-edu", "sample-100BT",
                      {"split": "train", "streaming": True})]
    assert_shards(out, "edu_fineweb", reference_shards(docs, 1000))


def test_clear_errors(tmp_path, capsys):
    docs = make_docs(10)
    jsonl = write_jsonl(tmp_path / "d.jsonl", docs, field="body")
    write_parquet(tmp_path / "mixed", docs)
    write_jsonl(tmp_path / "mixed" / "x.jsonl", docs)
    cases = [
        (["--input", str(tmp_path / "nope")], "nope: no such file or folder"),
        (["--input", str(tmp_path / "mixed")], "inputs mix formats"),
        (["--input", str(jsonl), "-o", str(tmp_path / "o1")], "no column 'text'"),
        (["--input", str(tmp_path / "d.jsonl"), "-s", "0"], "--shard-size must be"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit):
            fineweb.main(argv)
        assert message in capsys.readouterr().err
    # the same folder asked for another shard size: refuse instead of mixing shards
    fineweb.main(["--input", str(jsonl), "--text-column", "body", "-o", str(tmp_path / "o2"),
                  "-s", "500"])
    with pytest.raises(SystemExit):
        fineweb.main(["--input", str(jsonl), "--text-column", "body", "-o", str(tmp_path / "o2"),
                      "-s", "600"])
    assert "holds shards of another job" in capsys.readouterr().err


def test_command_line(tmp_path):
    docs = make_docs(30, seed=4)
    jsonl = write_jsonl(tmp_path / "corpus.jsonl", docs)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "data_prep", "fineweb.py"),
                           "--input", str(jsonl), "-o", str(out), "-s", "800"],
                          env=dict(os.environ, PYTHONPATH=REPO),  # as `make` installs pyllmc
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert_shards(out, "corpus", reference_shards(docs, 800))


def test_small_corpus_gets_validation_and_training(tmp_path, capsys):
    docs = make_docs(30, seed=5)
    stream = np.concatenate(reference_shards(docs, 10**6))
    jsonl = write_jsonl(tmp_path / "small.jsonl", docs)
    out = tmp_path / "out"
    fineweb.main(["--input", str(jsonl), "-o", str(out), "-s", "3000"])
    # validation ends at the document start nearest 10% of the tokens, training is the rest
    starts = np.flatnonzero(stream == EOT)
    cut = starts[np.argmin(np.abs(starts - 0.1 * len(stream)))]
    expected = [stream[:cut]] + [stream[i:i + 3000] for i in range(cut, len(stream), 3000)]
    assert len(expected) >= 3 and 0 < cut < 3000
    assert_shards(out, "small", expected)
    assert f"split: val {cut:,} tokens (1 shard), train {len(stream) - cut:,} tokens" \
        in capsys.readouterr().out
    # one document alone is cut inside it; running again finds the job done
    one = tmp_path / "one.txt"
    one.write_text(docs[7])
    fineweb.main(["--input", str(one), "-o", str(tmp_path / "one"), "-s", "1e8"])
    fineweb.main(["--input", str(one), "-o", str(tmp_path / "one"), "-s", "1e8"])
    val, train = (read_shard(tmp_path / "one" / name) for name in shard_names("one", 2))
    assert len(val) == round(0.1 * (len(val) + len(train))) and len(train) > 0


def test_empty_or_unsupported_input_is_refused(tmp_path, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "paper.pdf").write_bytes(b"%PDF-1.4")
    (folder / "notes.txt").write_text("")
    with pytest.raises(SystemExit) as e:
        fineweb.main(["--input", str(folder), "-o", str(tmp_path / "o")])
    assert e.value.code == 1
    assert "paper.pdf" in capsys.readouterr().err
    os.remove(folder / "paper.pdf")
    with pytest.raises(SystemExit):
        fineweb.main(["--input", str(folder), "-o", str(tmp_path / "o")])
    assert f"no text to prepare: {folder / 'notes.txt'} empty" in capsys.readouterr().err
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n")
    with pytest.raises(SystemExit):
        fineweb.main(["--input", str(blank), "-o", str(tmp_path / "o")])
    assert "holds no documents" in capsys.readouterr().err


def test_undecodable_bytes_are_replaced_and_counted(tmp_path, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    good = "A good document. " * 200
    (folder / "a.txt").write_text(good)
    (folder / "b.txt").write_bytes(("Mostly fine. " * 200).encode() + b"\xff")
    (folder / "c.txt").write_bytes(b"caf\xe9 and \xef\xbf\xbd already there " * 50)
    fineweb.main(["--input", str(folder), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert (f"warning: 51 undecodable byte sequence(s) in 2 file(s) (first: {folder / 'b.txt'}, 1)"
            " replaced with U+FFFD") in err
    stream = np.concatenate([read_shard(tmp_path / "o" / n) for n in shard_names("docs", 2)])
    expected = reference_shards([good, "Mostly fine. " * 200 + "\ufffd",
                                 "caf\ufffd and \ufffd already there " * 50], 10**8)[0]
    np.testing.assert_array_equal(stream, expected)


def test_a_llama3_rank_file_gives_uint32_shards(llama3_tokenizer_files, tmp_path, capsys):
    """--tokenizer with a Llama-3-shaped tiktoken rank file: the stream is
    each document as <|begin_of_text|> then its tokens as transformers'
    conversion of the file gives them, in llm.c's uint32 shards."""
    import tokenizers
    rank_path, json_path = llama3_tokenizer_files
    docs = make_docs(40, seed=5)
    hf = tokenizers.Tokenizer.from_file(str(json_path))
    expected = [t for doc in docs for t in [128_000, *hf.encode(doc, add_special_tokens=False).ids]]
    jsonl = write_jsonl(tmp_path / "corpus.jsonl", docs)
    fineweb.main(["--input", str(jsonl), "-o", str(tmp_path / "out"), "-s", "1000",
                  "--tokenizer", str(rank_path)])
    shards = sorted((tmp_path / "out").glob("*.bin"), key=lambda p: p.name.split("_")[-1])
    assert len(shards) >= 3
    for shard in shards:
        assert list(np.fromfile(shard, dtype="<i4", count=2)) == [20240801, 7]  # uint32 shards
    got = np.concatenate([read_shard(p) for p in shards])
    assert got.dtype == np.uint32 and got.max() > 65_535
    np.testing.assert_array_equal(got, expected)
    progress = json.loads((tmp_path / "out" / "corpus_progress.json").read_text())
    assert progress["tokenizer"] == str(rank_path)
    capsys.readouterr()
    with pytest.raises(SystemExit):  # a file that is no tokenizer: one line, no traceback
        fineweb.main(["--input", str(jsonl), "-o", str(tmp_path / "bad"),
                      "--tokenizer", str(shards[0])])
    err = capsys.readouterr().err
    assert err.startswith(f"error: {shards[0]}: line 1 is") and err.count("\n") == 1

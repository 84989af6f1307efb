"""Seeded fuzzing of every loader: mutated model, optimizer, shard and
HellaSwag (.bin and jsonl) files, plus special files (FIFOs, directories, a
device), each loaded by tests/fuzz_worker.py in child processes. Each file
must load or be refused with a clean exception; never a signal, a hang or
another exception. Many files per child keep it under a minute on 2 cores;
when a child dies or hangs, the file it was on is named."""
import dataclasses
import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pyllmc
from pyllmc import shards
from hellaswag_files import write_eval_file

REPO = Path(__file__).resolve().parent.parent
SEED = 20261201
COUNTS = {"model": 2000, "optimizer": 500, "shard": 500, "hellaswag_bin": 500,
          "hellaswag_jsonl": 500}
WORKERS = 4
WORKER_TIMEOUT_S = 150

# values that sit on the edges of the checks: zero, one, signs, the dimension
# limit 2^24 and its neighbours, int32 extremes, and the fields of the crafted
# headers that once wrapped the parameter count
EDGES = [0, 1, -1, 2, 3, 5, 7, 8, 16, 127, 128, 1024, 65535, 65536, 2**24 - 1, 2**24, 2**24 + 1,
         2**31 - 1, -2**31, 50257, 3872085, 16771756, 98315, 14188543, 20240326, 20240520,
         20240522, 20261121]
FLOAT_EDGES = [float("nan"), float("inf"), float("-inf"), -1.0, 3.4e38, -3.4e38, 1e-45, -0.0]
# the crafted model header of issue 10 that passed the old checks and crashed on forward
WRAPPING_HEADER = [20240326, 3, 1, 50257, 3872085, 1, 16777216, 16771756]


def mutate(base, rng, header_fields):
    """A damaged copy of base: header fields at edge values, bit flips, a
    float at a special value, truncation or extension, or a mix."""
    data = bytearray(base)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        op = rng.randrange(6)
        if op == 0 and len(data) >= 4 * header_fields:
            i = rng.randrange(header_fields)
            value = rng.choice(EDGES + [rng.randrange(-2**31, 2**31)])
            data[4 * i:4 * i + 4] = struct.pack("<i", value)
        elif op == 1 and data:
            for _ in range(rng.randint(1, 8)):
                bit = rng.randrange(8 * len(data))
                data[bit // 8] ^= 1 << (bit % 8)
        elif op == 2 and len(data) > 1028:
            i = 1024 + 4 * rng.randrange((len(data) - 1024) // 4)
            data[i:i + 4] = struct.pack("<f", rng.choice(FLOAT_EDGES))
        elif op == 3:
            del data[rng.randrange(len(data) + 1):]
        elif op == 4:
            data += bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 4, 1024])))
        else:
            i = rng.randrange(max(1, len(data)))
            data[i:i + 1] = bytes([rng.randrange(256)])
    return bytes(data)


RECORD = {"ctx": "A man is sitting on a roof. He", "label": 3,
          "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                      "is holding a rubber ball.", "starts pulling up roofing on a roof."]}
LABELS = ["²", "0" * 5001, "3", "03", "-1", 4, -1, 3.0, True, None, [1], {"a": 1}, "", " 1",
          "١", 10**30]


def mutate_jsonl(rng):
    """HellaSwag jsonl text with one damaged record, as bytes."""
    record = json.loads(json.dumps(RECORD))
    op = rng.randrange(8)
    lines = [json.dumps(RECORD)] * rng.randint(0, 2)
    if op == 0:
        record["label"] = rng.choice(LABELS)
        line = json.dumps(record)
    elif op == 1:  # a label too long for int(): as a JSON number
        line = json.dumps(record).replace('"label": 3', '"label": ' + "7" * rng.choice([4301, 5001]))
    elif op == 2:  # nesting deeper than the parser's recursion limit
        depth = rng.choice([1000, 100000])
        line = '{"ctx": ' + "[" * depth + "]" * depth + "}"
    elif op == 3:
        del record[rng.choice(["ctx", "endings", "label"])]
        line = json.dumps(record)
    elif op == 4:
        record[rng.choice(["ctx", "endings"])] = rng.choice(["", [], ["a"] * 5, 7, None, "\ud800"])
        line = json.dumps(record)
    elif op == 5:
        line = json.dumps(record)[:rng.randrange(len(json.dumps(record)))]
    elif op == 6:
        line = rng.choice(["[]", "1", "null", '"x"', "{}", "\x00", "NaN", "{" * 50])
    else:
        line = json.dumps(record)
    data = bytearray("\n".join(lines + [line] + lines).encode("utf-8", "surrogatepass"))
    if rng.random() < 0.25 and data:  # bytes that may not be UTF-8 any more
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def hellaswag_file(path):
    """The bytes of a small llm.c HellaSwag .bin file."""
    write_eval_file(path, [([1, 2, 3], [[4], [5, 6], [7], [8, 9, 10]], 2)] * 3)
    return path.read_bytes()


def special_files(folder, kind, count):
    """FIFOs, a directory and a device, named like the real files."""
    paths = []
    for i in range(count):
        path = folder / f"{kind}_fifo_{i}.bin"
        os.mkfifo(path)
        paths.append(path)
    directory = folder / f"{kind}_dir.bin"
    directory.mkdir()
    paths.append(directory)
    device = folder / f"{kind}_dev.bin"
    os.symlink("/dev/zero", device)
    paths.append(device)
    return paths


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(manifest of (kind, path), base model path), all files written here."""
    folder = tmp_path_factory.mktemp("fuzz")
    rng = random.Random(SEED)
    config = pyllmc.Config(max_seq_len=16, vocab_size=64, num_layers=2, num_heads=2, channels=16)
    base_model = folder / "base_model.bin"
    with pyllmc.Model.from_config(config, max_batch_size=1, max_seq_len=4, num_threads=1) as m:
        m.step(np.zeros((1, 4), np.int32), np.ones((1, 4), np.int32), lr=1e-3)
        m.save(base_model)
        m.save(folder / "base_bf16.bin", dtype="bf16")
        m.save_optimizer(folder / "base_optim.bin")
    shards.write_shard(folder / "base_shard.bin", rng.choices(range(64), k=300))
    shards.write_shard(folder / "base_wide_shard.bin", rng.choices(range(70000), k=300), wide=True)
    # Llama files (llm.c's llama3 layout): tied with RoPE scaling, and untied in bf16
    llama = pyllmc.Config(family=1, max_seq_len=16, vocab_size=64, num_layers=2, num_heads=2,
                          channels=16, num_kv_heads=1, ffn_hidden=24, rope_scaling_factor=8.0,
                          rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                          rope_original_max_seq_len=8)
    for name, cfg, dtype in [("base_llama.bin", llama, "fp32"),
                             ("base_llama_untied_bf16.bin",
                              dataclasses.replace(llama, untied_head=1), "bf16")]:
        with pyllmc.Model.from_config(cfg, max_batch_size=1, max_seq_len=4, num_threads=1) as m:
            m.save(folder / name, dtype=dtype)
    bases = {
        "model": [base_model.read_bytes(), (folder / "base_bf16.bin").read_bytes(),
                  struct.pack("<8i", *WRAPPING_HEADER) + bytes(1024 - 32),
                  (folder / "base_llama.bin").read_bytes(),
                  (folder / "base_llama_untied_bf16.bin").read_bytes()],
        "optimizer": [(folder / "base_optim.bin").read_bytes()],
        "shard": [(folder / "base_shard.bin").read_bytes(),
                  (folder / "base_wide_shard.bin").read_bytes()],
        "hellaswag_bin": [hellaswag_file(folder / "base_hellaswag.bin")],
    }
    files = []
    for kind, count in COUNTS.items():
        specials = special_files(folder, kind, 3)
        files += [(kind, str(p)) for p in specials]
        for i in range(count - len(specials)):
            path = folder / f"{kind}_{i}.{'jsonl' if kind == 'hellaswag_jsonl' else 'bin'}"
            if kind == "hellaswag_jsonl":
                path.write_bytes(mutate_jsonl(rng))
            else:
                path.write_bytes(mutate(rng.choice(bases[kind]), rng, header_fields=16))
            files.append((kind, str(path)))
    rng.shuffle(files)  # every worker gets every kind
    return files, str(base_model), folder


def test_every_loader_refuses_or_loads_cleanly(corpus):
    files, base_model, folder = corpus
    assert len(files) == sum(COUNTS.values())
    parts = [files[i::WORKERS] for i in range(WORKERS)]
    procs = []
    for w, part in enumerate(parts):
        manifest = folder / f"manifest_{w}.json"
        manifest.write_text(json.dumps({"base_model": base_model, "files": part}))
        out = open(folder / f"worker_{w}.out", "w+")
        procs.append((part, out, subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "fuzz_worker.py"), str(manifest)],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))))
    problems, outcomes = [], {}
    for part, out, proc in procs:
        try:
            proc.wait(timeout=WORKER_TIMEOUT_S)
            hung = False
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            hung = True
        out.seek(0)
        lines = out.read().splitlines()
        started = [int(l.split()[1]) for l in lines if l.startswith("start ")]
        for line in lines:
            if line.startswith("done "):
                _, i, outcome = line.split(" ", 2)
                kind, path = part[int(i)]
                outcomes.setdefault(kind, {}).setdefault(outcome.split(":")[0], 0)
                outcomes[kind][outcome.split(":")[0]] += 1
                if outcome.startswith("unclean"):
                    problems.append(f"{kind} {path}: {outcome}")
        if hung or proc.returncode != 0:
            culprit = part[started[-1]] if started else ("-", "before the first file")
            why = "hung" if hung else f"exited with {proc.returncode}"
            problems.append(f"worker {why} on {culprit[0]} file {culprit[1]}; its output ends: "
                            + " | ".join(lines[-5:]))
    print("fuzz outcomes:", json.dumps(outcomes, sort_keys=True))
    assert not problems, "\n".join(problems[:20])
    assert sum(sum(v.values()) for v in outcomes.values()) == len(files)
    # the corpus really exercises both sides
    for kind in COUNTS:
        assert outcomes[kind].get("refused", 0) > 0, kind
    assert outcomes["model"].get("loaded", 0) > 0 and outcomes["shard"].get("loaded", 0) > 0

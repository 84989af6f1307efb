"""python -m pyllmc.evaluate: the validation loss a training run logs, again
from its checkpoint, with perplexity; bad inputs are one-line errors."""
import json
import math
import os
import subprocess
import sys

import numpy as np

from pyllmc import shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO)


def command(*args):
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)


def test_evaluate_repeats_the_logged_validation_loss(tmp_path):
    rng = np.random.default_rng(0)
    shards.write_shard(tmp_path / "d_val_000000.bin", rng.integers(0, 256, 3000))
    shards.write_shard(tmp_path / "d_train_000001.bin", rng.integers(0, 256, 5000))
    out = tmp_path / "out"
    run = command("pyllmc.train", "--num-layers", 1, "--num-heads", 2, "--channels", 16,
                  "--max-seq-len", 32, "-B", 2, "-T", 16, "--steps", 4, "--val-every", 0,
                  "--val-steps", 5, "--sample-every", 0, "--num-threads", 1, "--no-progress",
                  "--train-data", tmp_path, "--val-data", tmp_path, "--out-dir", out)
    assert run.returncode == 0, run.stderr
    logged = [json.loads(line) for line in (out / "main.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in logged if "val_loss" in r][-1]
    model = out / "model_00000004.bin"
    result = tmp_path / "result.json"
    proc = command("pyllmc.evaluate", model, "--data", tmp_path, "-B", 2, "-T", 16,
                   "--max-batches", 5, "--num-threads", 1, "--json", result)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(result.read_text())
    assert abs(got["loss"] - val) < 1e-5 and got["batches"] == 5 and got["tokens"] == 160
    assert got["perplexity"] == math.exp(got["loss"])
    assert f"val loss {got['loss']:.4f}, perplexity {got['perplexity']:.2f} (5 batches of 2x16" \
        in proc.stdout
    # every window of the val shard, with the model's own length: T = 32
    whole = command("pyllmc.evaluate", model, "--data", tmp_path / "d_val_000000.bin", "-B", 2)
    assert whole.returncode == 0 and f"({(3000 - 1) // 64} batches of 2x32" in whole.stdout, \
        whole.stderr
    for args, message in [(["--data", tmp_path / "none_*.bin"], "no shard files match"),
                          (["--data", tmp_path, "-T", 64], "-T 64 is longer than the 32 positions"),
                          (["--data", tmp_path, "-B", 1000], "too little data for one batch")]:
        bad = command("pyllmc.evaluate", model, *args)
        assert bad.returncode == 1 and message in bad.stderr and bad.stderr.count("\n") == 1, \
            bad.stderr

"""pyllmc as an installed package: the commands work from any folder (the
editable install `make` does finds build/libllmc.so in the repository), say
how they are called, and a missing library is one line telling to run make."""
import os
import subprocess
import sys

import numpy as np
import pytest

from pyllmc.shards import write_shard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args, cwd, **env):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=env)


def test_commands_work_from_another_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if run(["-c", "import pyllmc"], tmp_path, **env).returncode:
        pytest.skip("pyllmc is not installed in this Python (`make` installs it)")
    made = run(["-c", "from pyllmc import Config, Model; "
                      "Model.from_config(Config(max_seq_len=16, vocab_size=300, num_layers=1, "
                      "num_heads=2, channels=32)).save('m.bin')"], tmp_path, **env)
    assert made.returncode == 0, made.stderr
    sample = run(["-m", "pyllmc.sample", "m.bin", "--max-new-tokens", 3, "--prompt", "!"],
                 tmp_path, **env)
    assert sample.returncode == 0 and sample.stdout.startswith("!"), sample.stderr
    for script in ("evals/hellaswag.py", "data_prep/fineweb.py"):
        usage = run([os.path.join(REPO, script), "--help"], tmp_path, **env)
        assert usage.returncode == 0 and f"usage: python {script}" in usage.stdout, usage.stderr


def test_usage_names_the_command(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    for module in ("train", "sample", "plot", "hf", "serve"):
        usage = run(["-m", f"pyllmc.{module}", "--help"], tmp_path, **env)
        assert usage.stdout.startswith(f"usage: python -m pyllmc.{module}"), usage.stdout


def test_without_the_library_one_line_says_make(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, LLMC_LIB=str(tmp_path / "libllmc.so"))
    write_shard(tmp_path / "d_train_000001.bin", np.arange(2000))
    for args in (["-m", "pyllmc.sample", "m.bin"],
                 ["-m", "pyllmc.train", "--train-data", tmp_path / "d_train_000001.bin",
                  "--val-data", tmp_path / "d_train_000001.bin", "--out-dir", tmp_path / "out"]):
        proc = run(args, tmp_path, **env)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert "libllmc not found" in proc.stderr and "run `make`" in proc.stderr
    assert not (tmp_path / "out").exists()

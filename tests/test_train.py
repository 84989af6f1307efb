"""python -m pyllmc.train end to end on tiny models: losses fall, a run killed
at any moment resumes to exactly the same loss curve, and bad settings or
data get a one-line error."""
import collections
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import pyllmc
from pyllmc import checkpoint
from pyllmc.shards import write_shard
from pyllmc.train import check_loss, build_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--num-layers", "1", "--num-heads", "2", "--channels", "32", "--max-seq-len", "64",
        "-B", "4", "-T", "32", "--lr", "3e-3", "--warmup-steps", "5", "--num-threads", "2",
        "--no-progress"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Subprocess environment with the default corpus cached in a temp folder."""
    e = dict(os.environ, LLMC_CACHE_DIR=str(tmp_path_factory.mktemp("cache")), PYTHONPATH=REPO)
    return e


def train(args, env, check=True, background=False):
    cmd = [sys.executable, "-m", "pyllmc.train", *TINY, *map(str, args)]
    if background:
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def records(out_dir):
    with open(os.path.join(out_dir, "main.jsonl")) as f:
        return [json.loads(line) for line in f]


def logged_lines(out_dir):
    try:
        with open(os.path.join(out_dir, "main.jsonl")) as f:
            return f.read().count("\n")
    except FileNotFoundError:
        return 0


def curve(out_dir):
    """Everything in the logs but the timings."""
    timing = {"ms", "tokens_per_s"}
    return [{k: v for k, v in r.items() if k not in timing} for r in records(out_dir)]


def test_default_data_run_learns_and_leaves_checkpoints(tmp_path, env):
    out = tmp_path / "run"
    proc = train(["--out-dir", out, "--steps", 40, "--val-every", 20, "--val-steps", 8,
                  "--sample-every", 40, "--sample-length", 8, "--checkpoint-every", 10,
                  "--keep-last", 2, "--print-every", 10], env)
    assert "val loss" in proc.stdout and "--- sample at step 40 ---" in proc.stdout
    val = [r["val_loss"] for r in records(out) if "val_loss" in r]
    assert len(val) == 3 and val[0] > 10 > val[0] - 1.5 > val[1] > val[2], val
    train_steps = [r["step"] for r in records(out) if "train_loss" in r]
    assert train_steps == list(range(40))
    lines = open(out / "main.log").read().splitlines()
    assert lines[0].startswith("s:0 tel:") and lines[1].startswith("s:0 trl:")
    assert " lr:" in lines[1] and " norm:" in lines[1]
    assert checkpoint.complete_steps(out) == [30, 40]  # --keep-last 2
    assert sorted(os.listdir(out)) == sorted(
        ["main.log", "main.jsonl", "model_00000030.bin", "optim_00000030.bin",
         "state_00000030.json", "DONE_00000030", "model_00000040.bin", "optim_00000040.bin",
         "state_00000040.json", "DONE_00000040"])
    with pyllmc.Model.load(out / "model_00000040.bin") as m:  # llm.c format, any reader
        assert (m.config.num_layers, m.config.channels) == (1, 32)
    sample = subprocess.run([sys.executable, "-m", "pyllmc.sample", out / "model_00000040.bin",
                             "--prompt", "The", "--max-new-tokens", "5"],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert sample.returncode == 0 and sample.stdout.startswith("The"), sample.stderr
    # a second run into the same folder must not clobber it
    again = train(["--out-dir", out, "--steps", 40], env, check=False)
    assert again.returncode == 1 and "already holds a run" in again.stderr
    assert checkpoint.complete_steps(out) == [30, 40]


RESUME_ARGS = ["--steps", 60, "--val-every", 7, "--val-steps", 3, "--sample-every", 25,
               "--sample-length", 4, "--checkpoint-every", 5, "--keep-last", 2,
               "--total-batch-size", 256, "--shuffle"]


def test_kill_9_and_resume_gives_the_same_curve(tmp_path, env):
    straight = tmp_path / "straight"
    train(["--out-dir", straight, *RESUME_ARGS], env)
    expected = curve(straight)

    out = tmp_path / "killed"
    rng = np.random.default_rng(0)
    # kill -9 three times, each a random moment after the log shows fresh progress
    # (mid-step, mid-evaluation or mid-checkpoint: checkpoints come every 5 steps)
    kills = 0
    for target in sorted(rng.choice(np.arange(10, len(expected) - 20), 3, replace=False)):
        proc = train(["--out-dir", out, "--resume", "--start-if-empty", *RESUME_ARGS], env,
                     background=True)
        while proc.poll() is None and logged_lines(out) < target:
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0, 0.05)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2
    train(["--out-dir", out, "--resume", *RESUME_ARGS], env)
    assert curve(out) == expected
    assert (out / "model_00000060.bin").read_bytes() == (straight / "model_00000060.bin").read_bytes()


def test_resume_ignores_a_checkpoint_cut_short(tmp_path, env):
    out = tmp_path / "run"
    train(["--out-dir", out, *RESUME_ARGS, "--steps", 20], env)
    expected = curve(out)
    # as if killed while writing step 20's checkpoint: marker missing, state half-written,
    # a temp file of the model write left behind
    paths = checkpoint.paths(out, 20)
    os.remove(paths["done"])
    with open(paths["state"], "r+b") as f:
        f.truncate(10)
    open(str(paths["model"]) + ".tmp.4242", "wb").write(b"partial")
    with open(out / "main.log", "a") as f:
        f.write("s:19 trl:0.12")  # a log line cut short
    train(["--out-dir", out, *RESUME_ARGS, "--steps", 20, "--resume"], env)
    assert curve(out) == expected
    assert not [n for n in os.listdir(out) if ".tmp." in n]
    assert checkpoint.complete_steps(out) == [15, 20]


def test_resume_takes_the_settings_of_the_saved_run(tmp_path, env):
    run_args = ["--num-layers", 4, "--steps", 12, "--checkpoint-every", 6, "--keep-last", 0,
                "--seed", 7, "--shuffle", "--lr-schedule", "linear", "--val-every", 6,
                "--val-steps", 2, "--sample-every", 0]
    straight = tmp_path / "straight"
    train(["--out-dir", straight, *run_args], env)
    out = tmp_path / "resumed"
    train(["--out-dir", out, *run_args, "--steps", 6], env)
    # nothing but --resume, a longer --steps and output settings: the rest is the run's
    cmd = [sys.executable, "-m", "pyllmc.train", "--out-dir", out, "--resume", "--steps", 12,
           "--no-progress", "--print-every", 3]
    proc = subprocess.run(list(map(str, cmd)), env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "model: 4 layers, 2 heads, 32 channels" in proc.stdout
    resumed, reference = curve(out), curve(straight)
    first = [r for r in reference if r["step"] < 6]
    assert resumed[:len(first)] == first
    # the 6-step run had decayed to its final rate: the longer run goes on at it, no jump
    assert [r["lr"] for r in resumed if r["step"] >= 6 and "lr" in r] == \
        pytest.approx([3e-3 * 0.1] * 6)


def test_resume_refuses_other_settings(tmp_path, env):
    out = tmp_path / "run"
    train(["--out-dir", out, "--num-layers", 4, "--steps", 4, "--val-every", 0,
           "--sample-every", 0], env)
    for args, messages in [  # (TINY gives --num-layers 1: a later flag wins)
        (["--num-layers", 6], ["--num-layers 6 (the run has 4)"]),
        (["--num-layers", 4, "--steps", 2], ["--steps 2 (the run has 4)"]),
        (["--num-layers", 4, "--lr", "1e-4", "--shuffle"],
         ["--lr 0.0001 (the run has 0.003)", "--shuffle True (the run has False)"]),
    ]:
        proc = train(["--out-dir", out, "--resume", *args], env, check=False)
        assert proc.returncode == 1 and all(m in proc.stderr for m in messages), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    # the same values, and settings that do not change the weights, are fine
    train(["--out-dir", out, "--resume", "--num-layers", 4, "--steps", 6, "--keep-last", 1,
           "--print-every", 1, "--val-every", 2, "--num-threads", 1], env)
    assert checkpoint.complete_steps(out) == [6]


def test_bad_updates_are_reported_and_skippable(tmp_path, env):
    # a huge learning rate blows the weights up in the first update: the next loss is not finite
    args = ["--steps", 6, "--lr", "1e30", "--warmup-steps", 0, "--val-every", 0,
            "--sample-every", 0, "--checkpoint-every", 1]
    stop = train(["--out-dir", tmp_path / "stop", *args], env, check=False)
    assert stop.returncode == 1, stop.stderr
    assert "error: step 1: loss is nan" in stop.stderr and "--skip-bad-updates" in stop.stderr
    assert "Traceback" not in stop.stderr
    assert checkpoint.complete_steps(tmp_path / "stop") == [1]  # nothing lost

    skip = train(["--out-dir", tmp_path / "skip", *args, "--skip-bad-updates"], env)
    assert "update skipped" in skip.stdout + skip.stderr
    steps = [r for r in records(tmp_path / "skip") if "train_loss" in r]
    assert [r["skipped"] for r in steps] == [False] + [True] * 5
    assert all(r["train_loss"] is None for r in steps[1:])


def test_loss_spike_detection():
    args = build_parser().parse_args([])
    recent = collections.deque([5.0 + 0.01 * (i % 3) for i in range(args.spike_window)],
                               maxlen=args.spike_window)
    assert check_loss(5.02, recent, args) is None
    assert "loss spike: 9.0000" in check_loss(9.0, recent, args)
    assert "loss is inf" in check_loss(float("inf"), recent, args)
    assert check_loss(9.0, collections.deque([5.0, 5.1], maxlen=args.spike_window), args) is None


def test_clear_errors(tmp_path, env):
    short = tmp_path / "short_train_000001.bin"
    write_shard(short, np.arange(50))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["--train-data", short], "too little data for one batch of B=4 x T=32"),
        (["--train-data", tmp_path / "nothing_*.bin"], "no shard files match"),
        (["-T", 128], "-T 128 is longer than the 64 positions of the model (--max-seq-len)"),
        (["--out-dir", a_file / "sub"], f"output folder {a_file / 'sub'} is not writable"),
        (["--total-batch-size", 100], "--total-batch-size 100 is not a multiple of B*T = 4*32"),
        (["--model", tmp_path / "missing.bin"], "missing.bin"),
        (["--model", "d99"], "--model d99: neither a preset (d12, d24, d36, d48, llama-124m, "
                                 "llama3.2-1b, llama3.2-3b, llama3.1-8b) nor a model file"),
        (["--hellaswag-every", 1, "--hellaswag-data", tmp_path / "none.jsonl"],
         f"{tmp_path / 'none.jsonl'}: No such file or directory"),
        (["--model", short], "short_train_000001.bin"),
        (["--steps", -1], "--steps -1: expected 0 or more"),
    ]
    for args, message in cases:
        if "--out-dir" not in args:
            args = ["--out-dir", tmp_path / "out", *args]
        proc = train(args, env, check=False)
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, \
            proc.stderr
        assert "[Errno" not in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()  # a run that could not start leaves no folder


def test_hellaswag_in_training(tmp_path, env):
    data = tmp_path / "hellaswag.jsonl"
    with open(data, "w") as f:
        for i in range(3):
            f.write(json.dumps({"ctx": f"A man opens the door number {i} and",
                                "endings": ["walks in.", "eats it.", "sings a song.", "flies."],
                                "label": i}) + "\n")
    out = tmp_path / "run"
    train(["--out-dir", out, "--steps", 4, "--hellaswag-every", 2, "--hellaswag-data", data,
           "--val-every", 0, "--sample-every", 0], env)
    evals = [line for line in open(out / "main.log") if " eval:" in line]
    assert [line.split()[0] for line in evals] == ["s:0", "s:2", "s:4"]
    accs = [r["hellaswag_acc_norm"] for r in records(out) if "hellaswag_acc_norm" in r]
    assert len(accs) == 3 and all(a in (0, 1 / 3, 2 / 3, 1) for a in accs)
    missing = train(["--out-dir", tmp_path / "r2", "--steps", 2, "--hellaswag-every", 1,
                     "--hellaswag-data", tmp_path / "none.jsonl"], env, check=False)
    assert missing.returncode == 1 and "none.jsonl" in missing.stderr


def test_schedules():
    from pyllmc.schedule import learning_rate
    lr = lambda step, sched, **kw: learning_rate(step, 100, 1.0, warmup_steps=10, schedule=sched,
                                                 final_lr_frac=0.1, **kw)
    for sched in ("cosine", "linear", "constant", "wsd"):
        assert lr(0, sched) == pytest.approx(0.1) and lr(9, sched) == pytest.approx(1.0)
        assert lr(10, sched) == pytest.approx(1.0)
    assert lr(55, "cosine") == pytest.approx(0.55)  # half way: mean of max and min
    assert lr(55, "linear") == pytest.approx(0.55)
    assert lr(99, "constant") == 1.0
    assert lr(79, "wsd") == 1.0 and lr(80, "wsd") == 1.0
    assert lr(85, "wsd") == pytest.approx(0.1 + 0.9 * (1 - 0.25 ** 0.5))
    cos = [lr(s, "cosine") for s in range(10, 100)]
    assert all(a > b for a, b in zip(cos, cos[1:])) and cos[-1] > 0.1
    with pytest.raises(ValueError, match="unknown schedule"):
        lr(5, "step")


def test_a_longer_run_continues_the_learning_rate():
    """--steps growing on resume (schedule.continued_rate): from the resumed
    step the rate goes from where it was down to the final one at the new
    end, in the schedule's shape."""
    from pyllmc.schedule import continued_rate, learning_rate
    kw = dict(warmup_steps=10, final_lr_frac=0.1)
    for sched in ("cosine", "linear", "constant", "wsd"):
        kw["schedule"] = sched
        for s0 in (40, 100):  # cut short at 40 of 100, or finished; then 200 steps
            rebase = (s0, learning_rate(s0, 100, 1.0, **kw))
            rates = [continued_rate(s, 200, 1.0, rebase, **kw) for s in range(s0, 201)]
            assert rates[0] == pytest.approx(rebase[1])
            assert rates[-1] == pytest.approx(0.1 if sched != "constant" else 1.0)
            assert all(a >= b - 1e-12 for a, b in zip(rates, rates[1:]))
            if sched in ("cosine", "linear"):  # (wsd's own 1 - sqrt drops fast at first)
                assert max(abs(a - b) for a, b in zip(rates, rates[1:])) < 0.02  # no jump
        assert continued_rate(20, 200, 1.0, (40, 0.7), **kw) == learning_rate(20, 200, 1.0, **kw)


def test_recompute_default_by_size():
    from pyllmc.train import default_recompute
    chosen = {name: default_recompute(pyllmc.Config.preset(name)) for name in ("d12", "d24", "d36", "d48")}
    assert chosen == {"d12": 0, "d24": 1, "d36": 1, "d48": 2}
    assert build_parser().parse_args([]).recompute is None  # None: chosen by size when the model opens


def test_plot(tmp_path, monkeypatch):
    from pyllmc import plot
    with open(tmp_path / "main.jsonl", "w") as f:
        for s in range(20):
            f.write(json.dumps({"step": s, "train_loss": 10 - s * 0.2, "lr": 1e-3, "grad_norm": 1.5,
                                "skipped": False}) + "\n")
            if s % 10 == 0:
                f.write(json.dumps({"step": s, "val_loss": 10.5 - s * 0.2}) + "\n")
    series = plot.load_log(tmp_path)
    assert series["val_loss"] == ([0, 10], [10.5, 8.5]) and len(series["train_loss"][0]) == 20
    assert "skipped" not in series
    with pytest.raises(FileNotFoundError, match="no training log here"):
        plot.load_log(tmp_path / "elsewhere")
    with monkeypatch.context() as m:  # as on a machine without matplotlib
        m.setitem(sys.modules, "matplotlib", None)
        with pytest.raises(ImportError, match="pip install matplotlib"):
            plot.plot(tmp_path)
    try:
        import matplotlib  # noqa: F401  (optional: llmc does not install it)
    except ImportError:
        return
    png = plot.plot(tmp_path)
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    other = tmp_path / "other"
    other.mkdir()
    (other / "main.jsonl").write_text((tmp_path / "main.jsonl").read_text())
    with pytest.raises(ValueError, match="-o"):
        plot.plot([tmp_path, other])
    png = plot.plot([tmp_path, other], tmp_path / "both.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

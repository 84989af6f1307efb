"""
Data-parallel training on the GPUs of one machine, llmc beside llm.c in the
same call (issue 12): tokens/s and per-GPU memory at d12 and d48 on 1, 2, 4
and 8 GPUs (as many as the machine has), scaling efficiency, 2-GPU against
1-GPU losses, and a 2-GPU checkpoint resumed on 1 and on 2 GPUs.

    python3 -m bench.multi_gpu [--gpus 1,2,4,8] [--sizes d12,d48] [--steps 8] [--no-check]
    python3 -m bench.multi_gpu --smoke     # the same logic with 1 and 2 CPU ranks, a tiny model

On 8 GPUs both sizes and the checks take longer than one 10-minute device
call: `--sizes d12` in one call, `--sizes d48 --no-check` in the next.

llmc runs through the trainer with --zero 1 (every GPU count through
--nproc-per-node; the largest also through mpirun), llm.c through
`mpirun -np N llm.c.sh run ... -z 1` (build it first: `bash llm.c.sh build mpi`).
Time per step: the median of steps 3.. (llmc: main.jsonl's `ms`, the whole
step as the trainer sees it; llm.c: its printed step times). Memory: the
peak of nvidia-smi's used memory over the run on the busiest GPU, less the
idle level. One table last, with the projected wall time of GPT-2 124M on
10B tokens and GPT-2 1.6B on 32B tokens at the largest GPU count.
"""
import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from bench.peer_bench import gpu_used_mib, llm_c_step_times, run_watched, write_data
from pyllmc import checkpoint, distributed
from pyllmc.plot import load_log

HERE = Path(__file__).resolve().parent
T = 1024
# size: micro-batch B, tokens per optimizer step (llm.c's recipes)
SIZES = {"d12": (64, 524_288), "d48": (16, 1_048_576)}
# what a run of the whole recipe would take: tokens to train on
RECIPES = {"d12": 10e9, "d48": 32e9}
SMOKE = ["--num-layers", "1", "--num-heads", "2", "--channels", "32", "--max-seq-len", "64",
         "--num-threads", "1"]


class Runner:
    def __init__(self, a):
        self.a = a
        self.env = distributed.mpi_environment()
        self.env["NCCL_NVLS_ENABLE"] = "0"  # NVLink multicast stays off on these machines
        self.env["PYTHONPATH"] = str(HERE.parent)
        self.work = Path(a.work)
        self.train, self.val = write_data(self.work / "data", 2_000_000 if a.smoke else 20_000_000)

    def tokens_per_step(self, size):
        return 2 * 32 * 4 if self.a.smoke else SIZES[size][1]

    def trainer_args(self, size, steps, out, batch=None, tokens=None, extra=()):
        B, tok = SIZES[size][0], self.tokens_per_step(size)
        if self.a.smoke:  # tiny model on CPU: same flags, small shapes
            model, B, seq = SMOKE, 2, 32
        else:
            model, seq = ["--model", size, "--device", "cuda"], T
        return ["-m", "pyllmc.train", *model, "-B", batch or B, "-T", seq,
                "--total-batch-size", tokens or tok, "--train-data", self.train,
                "--val-data", self.val, "--val-every", 0, "--sample-every", 0, "--print-every", 0,
                "--no-progress", "--steps", steps, "--zero", 1, "--lr-schedule", "constant",
                "--warmup-steps", 0, "--checkpoint-every", 0, "--out-dir", out, *extra]

    def command(self, size, n, launcher, steps, out, **kw):
        """The trainer on n ranks, started by mpirun or by --nproc-per-node."""
        argv = [str(v) for v in self.trainer_args(size, steps, out, **kw)]
        if launcher == "mpirun":
            return distributed.mpirun_command(n, argv)
        return [sys.executable, *argv] + (["--nproc-per-node", str(n)] if n > 1 else [])

    def llmc(self, size, n, launcher, steps, out, **kw):
        """One fresh trainer run on n ranks; returns (ms/step, peak GB) or None."""
        shutil.rmtree(out, ignore_errors=True)
        text, rc, gb = run_watched(self.command(size, n, launcher, steps, out, **kw), self.env)
        if rc != 0:
            print(f"llmc {size} x{n} ({launcher}): failed (rc {rc})\n{text[-3000:]}", flush=True)
            return None
        ms = [v for step, v in zip(*load_log(out)["ms"]) if step >= 2]
        return statistics.median(ms) if ms else None, gb

    def llm_c(self, size, n, steps):
        B, tok = SIZES[size]
        peers = Path(self.a.peers)
        flags = ["-i", self.train, "-j", self.val, "-v", 100000, "-m", 1, "-s", 0, "-h", 0, "-n", 0,
                 "-e", size, "-b", B, "-t", T, "-d", tok, "-x", steps, "-z", 1]
        cmd = distributed.mpirun_command(n, [str(peers / "llm.c.sh"), "run", *map(str, flags)],
                                         program="bash")
        text, rc, gb = run_watched(cmd, self.env)
        ms = llm_c_step_times(text, 3)
        if rc != 0 or not ms:
            print(f"llm.c {size} x{n}: failed (rc {rc})\n{text[-3000:]}", flush=True)
            return None
        return statistics.median(ms), gb


def losses(out):
    return load_log(out)["train_loss"][1]


def correctness(r, gpus):
    """20 steps on 1 GPU and on 2; the 2-GPU run's step-10 checkpoint resumed
    on 1 GPU and on 2 (the latter must repeat the straight run bit for bit)."""
    work, n2 = r.work / "check", min(2, max(gpus))
    kw = dict(batch=16, tokens=65_536) if not r.a.smoke else {}
    every = ["--checkpoint-every", 10, "--keep-last", 0]
    one, two = work / "one", work / "two"
    r.llmc("d12", 1, "nproc", 20, one, **kw)
    r.llmc("d12", n2, "nproc", 20, two, extra=every, **kw)
    report = {"max |loss 1 GPU - loss 2 GPUs|": max_diff(losses(one), losses(two))}
    for n in (1, n2):
        out = work / f"resumed_on_{n}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(two, out)
        checkpoint.remove(out, 20)
        text, rc, _ = run_watched(r.command("d12", n, "nproc", 20, out,
                                            extra=[*every, "--resume"], **kw), r.env)
        if rc != 0:
            report[f"resume on {n}"] = f"failed: {text[-500:]}"
            continue
        diff = max_diff(losses(out)[10:], losses(two)[10:])
        same = (out / "model_00000020.bin").read_bytes() == (two / "model_00000020.bin").read_bytes()
        report[f"resumed on {n} GPU(s): max |loss diff| steps 11-20"] = diff
        report[f"resumed on {n} GPU(s): final weights bit-identical"] = same
    return report


def max_diff(a, b):
    return max((abs(x - y) for x, y in zip(a, b)), default=float("nan")) if len(a) == len(b) else "lengths differ"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", help="GPU counts (default 1,2,4,8 up to what the machine has)")
    p.add_argument("--sizes", default="d12,d48")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per timed run")
    p.add_argument("--peers", default=str(HERE.parent / ".carry" / "peers"))
    p.add_argument("--work", default="/tmp/multi_gpu")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the 1- against 2-GPU and resume checks")
    p.add_argument("--smoke", action="store_true", help="CPU ranks and a tiny model: checks the logic")
    p.add_argument("--json")
    a = p.parse_args()
    have = len(gpu_used_mib()) if not a.smoke else 2
    counts = [int(n) for n in a.gpus.split(",")] if a.gpus else [n for n in (1, 2, 4, 8) if n <= have]
    r = Runner(a)
    with_llm_c = not a.smoke and (Path(a.peers) / "llm.c" / "train_gpt2cu").exists()
    rows = []
    for size in a.sizes.split(","):
        for n in counts:
            row = {"size": size, "gpus": n, "tokens_per_step": r.tokens_per_step(size),
                   "llmc": r.llmc(size, n, "nproc", a.steps, r.work / f"{size}_{n}")}
            if n == max(counts) and n > 1:
                row["llmc_mpirun"] = r.llmc(size, n, "mpirun", a.steps, r.work / f"{size}_{n}_mpi")
            if with_llm_c:
                row["llm.c"] = r.llm_c(size, n, a.steps + 2)
            print(json.dumps(row), flush=True)
            rows.append(row)
    check = correctness(r, counts) if a.check else {}
    print(json.dumps(check, indent=1), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "correctness": check}, indent=1))
    print_table(rows)


def print_table(rows):
    print(f"\n{'size':4} {'GPUs':>4} | {'llmc ms/step':>12} {'tok/s':>10} {'GB/GPU':>7} {'scaling':>7} | "
          f"{'llm.c ms/step':>13} {'tok/s':>10} {'GB/GPU':>7} {'scaling':>7} | llmc/llm.c tok/s")
    base = {}
    for row in rows:
        tok = row["tokens_per_step"]
        cells = []
        for who in ("llmc", "llm.c"):
            v = row.get(who)
            if not v or v[0] is None:
                cells.append(f"{'-':>12} {'':>10} {'':>7} {'':>7}")
                continue
            tps = tok / (v[0] / 1000)
            key = (row["size"], who)
            if row["gpus"] == 1:
                base[key] = tps
            eff = f"{tps / (row['gpus'] * base[key]):.3f}" if key in base else ""
            cells.append(f"{v[0]:12.1f} {tps:10.0f} {v[1]:7.1f} {eff:>7}")
        ratio = ""
        if row.get("llmc") and row.get("llm.c") and row["llmc"][0]:
            ratio = f"{row['llm.c'][0] / row['llmc'][0]:.2f}x"
        mpi = row.get("llmc_mpirun")
        note = f"  (mpirun: {mpi[0]:.1f} ms)" if mpi and mpi[0] else ""
        print(f"{row['size']:4} {row['gpus']:>4} | {cells[0]} | {cells[1]} | {ratio}{note}")
    for size, tokens in RECIPES.items():
        last = [row for row in rows if row["size"] == size and row.get("llmc") and row["llmc"][0]]
        if last:
            row = last[-1]
            hours = tokens / row["tokens_per_step"] * row["llmc"][0] / 1000 / 3600
            print(f"projected: {size} on {tokens / 1e9:.0f}B tokens with {row['gpus']} GPU(s): "
                  f"{hours:.1f} h (llmc)")


if __name__ == "__main__":
    main()

"""
Two training runs that differ in one setting, side by side on real text:
the same seed, data, batches and learning rates through `python -m
pyllmc.train`, then their final validation losses, the relative gap and
whether either diverged (a loss that is not finite, or a validation loss
above the first one after warm-up).

    python -m bench.quality fp8 --model d12 --steps 2000      # --precision bf16 against fp8
    python -m bench.quality llama --steps 250                 # d12 against llama-124m

Every run's main.jsonl is kept under --out, with summary.json (the numbers
printed; plot the runs together with `python -m pyllmc.plot OUT/a OUT/b -o
both.png`). The data are FineWeb token shards
(--data, ../shared/data/fineweb_sample carried as .carry/fineweb_sample).
"""
import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent / ".carry" / "fineweb_sample"
# what the two runs of each comparison change: (label, trainer flags)
COMPARISONS = {
    "fp8": lambda a: [("bf16", ["--model", a.model, "--precision", "bf16"]),
                      ("fp8", ["--model", a.model, "--precision", "fp8"])],
    "llama": lambda a: [("d12", ["--model", "d12"]), ("llama-124m", ["--model", "llama-124m"])],
}


def run(label, flags, a, data):
    out = Path(a.out) / label
    cmd = [sys.executable, "-m", "pyllmc.train", "--device", a.device, "-B", str(a.B), "-T", str(a.T),
           "--total-batch-size", str(a.B * a.T), "--steps", str(a.steps), "--lr", str(a.lr),
           "--warmup-steps", str(a.warmup), "--final-lr-frac", "0", "--weight-decay", "0.1",
           "--train-data", str(data / "*train*.bin"), "--val-data", str(data / "*val*.bin"),
           "--val-every", str(a.val_every), "--sample-every", "0", "--checkpoint-every", "0",
           "--no-progress", "--print-every", "0", "--seed", "1", "--out-dir", str(out), *flags]
    proc = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{label}: failed (rc {proc.returncode})\n{(proc.stdout + proc.stderr)[-3000:]}")
        return None
    for path in out.iterdir():  # only the log is kept (d48's checkpoints are 18 GB)
        if path.name != "main.jsonl":
            path.unlink()
    log = [json.loads(line) for line in open(out / "main.jsonl")]
    val = [(r["step"], r["val_loss"]) for r in log if "val_loss" in r]
    train = [r["train_loss"] for r in log if "train_loss" in r]
    # one small batch's loss is too noisy to judge by: the validation curve after warm-up
    after_warmup = [v for step, v in val if step >= a.warmup] or [v for _, v in val]
    return {"label": label, "final_val": val[-1][1], "val": val,
            "diverged": max(after_warmup) > after_warmup[0] or not all(math.isfinite(v) for v in train),
            "ms": sorted(r["ms"] for r in log if "ms" in r)[len(train) // 2]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("comparison", choices=sorted(COMPARISONS))
    p.add_argument("--model", default="d12", help="fp8: the preset (GPT-2 or Llama)")
    p.add_argument("--device", default="cuda")
    p.add_argument("-B", type=int, default=4)
    p.add_argument("-T", type=int, default=512)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default="/dev/shm/llmc-quality")
    a = p.parse_args()
    results = [run(label, flags, a, Path(a.data)) for label, flags in COMPARISONS[a.comparison](a)]
    if None in results:
        sys.exit(1)
    first, second = results
    gap = (second["final_val"] - first["final_val"]) / first["final_val"]
    summary = json.dumps({"comparison": a.comparison, "model": a.model, "steps": a.steps, "B": a.B,
                          "T": a.T, "lr": a.lr, "runs": results, "relative_gap": gap})
    (Path(a.out) / "summary.json").write_text(summary)
    print(summary)
    print(f"{a.comparison}{' ' + a.model if a.comparison == 'fp8' else ''}: {a.steps} steps of {a.B}x{a.T}: "
          + "; ".join(f"{r['label']} val {r['final_val']:.4f}{' DIVERGED' if r['diverged'] else ''} "
                      f"({r['ms']:.1f} ms/step)" for r in results)
          + f"; {second['label']} / {first['label']} - 1 = {100 * gap:+.2f}%")


if __name__ == "__main__":
    main()

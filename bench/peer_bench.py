"""
llmc against its peers at the four GPT-2 sizes, in one call on one GPU:
llm.c (../shared/peers, carried as .carry/peers) at its default and, at d12,
its fastest setting; llmc at the recompute settings asked for; optionally
PyTorch (bench/gpu_torch_peer.py) under torch.compile. One table last, with
llm.c's time divided by llmc's.

    python3 -m bench.peer_bench [--sizes d12,d24,d36,d48] [--llmc d48=1,2] [--torch]

Every run is its own process, one after the other, on random tokens (the
same tokens per step for every system is not needed: the step's work does
not depend on their values). Time: llmc's and PyTorch's median step time
after warm-up (bench/gpu_bench.py, bench/gpu_torch_peer.py); llm.c's median
of its printed step times from step 2 on. Memory, the same way for all: the
peak of the GPU's used memory (nvidia-smi, sampled every 0.2 s) while the
run's process lives, less what was used before it started.
"""
import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from pyllmc.shards import ShardError, read_shard_header, write_shard

HERE = Path(__file__).resolve().parent
# size: micro-batch B, micro-steps per optimizer step, timed llmc steps (T = 1024)
SIZES = {"d12": (64, 8, 8), "d24": (32, 16, 4), "d36": (32, 4, 6), "d48": (16, 4, 6)}
T = 1024
LLMC_DEFAULT = {"d12": "0,1", "d24": "1,2", "d36": "1,2", "d48": "1,2"}
# llm.c settings per size: (label, extra flags); the first is its default
LLM_C = {"d12": [("default (-r 1)", []), ("fastest (-r 0 -ge 2)", ["-r", "0", "-ge", "2"])]}


def gpu_used_mib():
    """Used memory of each GPU (MiB), or [] without nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(v) for v in out.split()]


def run_watched(cmd, env=None, cwd=None):
    """Runs cmd; returns (stdout+stderr, rc, peak GB above the idle level on the busiest GPU)."""
    base = gpu_used_mib()
    peak = list(base)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)

    def watch():
        while proc.poll() is None:
            peak[:] = [max(a, b) for a, b in zip(peak, gpu_used_mib())]
            time.sleep(0.2)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    out, _ = proc.communicate()
    w.join()
    return out, proc.returncode, max((p - b for p, b in zip(peak, base)), default=0) * 1048576 / 1e9


def llm_c_step_times(text, first):
    """ms of each `step n/N | ... | X ms |` line llm.c printed, from step `first` on."""
    return [float(m.group(2)) for m in re.finditer(r"step\s+(\d+)/\d+ \|.*?\| ([\d.]+) ms \|", text)
            if int(m.group(1)) >= first]


def write_data(folder, tokens=20_000_000):
    """Random-token train and val shards (llm.c's format), written unless
    folder already holds them at these sizes."""
    train, val = folder / "train_000001.bin", folder / "val_000000.bin"
    try:
        if read_shard_header(train) == tokens and read_shard_header(val) == tokens // 10:
            return train, val
    except ShardError:
        pass
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    write_shard(train, rng.integers(0, 50257, tokens))
    write_shard(val, rng.integers(0, 50257, tokens // 10))
    return train, val


def run_llm_c(peers, size, flags, data, steps):
    B, micro, _ = SIZES[size]
    train, val = data
    cmd = ["bash", str(peers / "llm.c.sh"), "run", "-i", str(train), "-j", str(val), "-v", "100000",
           "-m", "1", "-s", "0", "-h", "0", "-n", "0", "-e", size, "-b", str(B), "-t", str(T),
           "-d", str(B * T * micro), "-x", str(steps), *flags]
    out, rc, gb = run_watched(cmd)
    ms = llm_c_step_times(out, 2)
    if rc != 0 or not ms:
        print(f"llm.c {size} {flags}: failed (rc {rc})\n{out[-3000:]}", flush=True)
        return None
    return {"ms_per_step": statistics.median(ms), "gb": gb, "steps": len(ms)}


def run_llmc(size, recompute, steps):
    B, micro, _ = SIZES[size]
    spec = f"{size},{B},{T},{micro},{recompute}"
    out, rc, gb = run_watched([sys.executable, str(HERE / "gpu_bench.py"), "--child", "--run", spec,
                               "--steps", str(steps), "--warmup", "2"])
    if rc != 0:
        print(f"llmc {spec}: failed (rc {rc})\n{out[-3000:]}", flush=True)
        return None
    r = json.loads(out.strip().splitlines()[-1])
    return {"ms_per_step": r["ms_per_step"], "gb": gb, "library_gb": r["library_gb"]}


def run_torch(size):
    B, micro, _ = SIZES[size]
    out, rc, gb = run_watched([sys.executable, "-m", "bench.gpu_torch_peer", "--preset", size,
                               "-B", str(B), "-T", str(T), "--micro-steps", str(micro), "--compile"],
                              cwd=HERE.parent)
    if rc != 0:
        print(f"torch.compile {size}: failed (rc {rc})\n{out[-3000:]}", flush=True)
        return None
    r = json.loads(next(l for l in out.splitlines() if l.startswith("{")))
    return {"ms_per_step": r["ms_per_step"], "gb": gb}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="d12,d24,d36,d48")
    p.add_argument("--llmc", action="append", default=[],
                   help="SIZE=R1,R2: llmc's recompute settings at SIZE (default %s)" % LLMC_DEFAULT)
    p.add_argument("--peers", default=str(HERE.parent / ".carry" / "peers"),
                   help="folder with llm.c.sh and a built llm.c")
    p.add_argument("--llm-c-steps", type=int, default=10, help="llm.c steps per run")
    p.add_argument("--torch", action="store_true", help="also PyTorch torch.compile (slow to compile)")
    p.add_argument("--data", default="/tmp/peer_data")
    p.add_argument("--json")
    a = p.parse_args()
    settings = dict(LLMC_DEFAULT, **dict(s.split("=", 1) for s in a.llmc))
    data = write_data(Path(a.data))
    rows = []
    for size in a.sizes.split(","):
        B, micro, steps = SIZES[size]
        peers = {}
        for label, flags in LLM_C.get(size, [("default", [])]):
            peers[label] = run_llm_c(Path(a.peers), size, flags, data, a.llm_c_steps)
            print(f"llm.c {size} {label}: {peers[label]}", flush=True)
        if a.torch:
            peers["torch.compile"] = run_torch(size)
            print(f"torch.compile {size}: {peers['torch.compile']}", flush=True)
        for r in settings[size].split(","):
            mine = run_llmc(size, int(r), steps)
            print(f"llmc {size} recompute {r}: {mine}", flush=True)
            rows.append({"size": size, "B": B, "micro_steps": micro, "recompute": int(r),
                         "llmc": mine, "peers": peers})
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    print(f"\n{'size':4} {'B x micro':>9} {'llmc':>5} {'ms/step':>8} {'GB':>6} | "
          "peer: ms/step, GB, its time / llmc's")
    for row in rows:
        mine = row["llmc"]
        head = f"{row['size']:4} {row['B']:>4} x {row['micro_steps']:<2} r{row['recompute']:<4}"
        if not mine:
            print(f"{head} failed")
            continue
        cells = [f"{name} {v['ms_per_step']:.1f}, {v['gb']:.1f}, {v['ms_per_step'] / mine['ms_per_step']:.2f}x"
                 for name, v in row["peers"].items() if v]
        print(f"{head} {mine['ms_per_step']:8.1f} {mine['gb']:6.1f} | " + "; ".join(cells))


if __name__ == "__main__":
    main()

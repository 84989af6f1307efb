"""
Training speed of the CUDA backend: ms/step, tokens/s, MFU and GPU memory.

    python bench/gpu_bench.py                      # the default set below, a table last
    python bench/gpu_bench.py --run d12,64,1024,8,1 --steps 10

A run is preset,B,T,micro_steps,recompute[,dp|dpz|fp8]... (the preset may be an
llm.c model file, FILE.bin, to start from instead); dp runs the model in
distributed mode with one rank (NCCL path: gradient buckets all-reduced during
the backward), dpz the same with ZeRO-1, fp8 with FP8 block products. Each runs
in its own process so that its memory is its own. Batches are real text: the
consecutive windows of a token shard (--data, FineWeb by default; the token
distribution changes step times, so random tokens are not used), a different
micro-batch for every micro-step, wrapping around the shard. Steps are timed from the host around whole
optimizer steps (the API returns once the step's work on the GPU is done,
so this is the GPU time plus the Python and host share), after warm-up
steps, median over the timed steps. MFU uses llm.c's convention: FLOPs per
token = 6*N + 6*L*C*T against the H100's 988.8 TFLOP/s bf16 peak. Memory:
the library's own allocations (model.memory_bytes) and what nvidia-smi shows
the process using (CUDA context, cuBLAS/cuDNN internals included).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import pyllmc
from pyllmc.shards import DataLoader

# FineWeb as GPT-2 token shards (../shared/data/fineweb_sample, carried as .carry/)
DEFAULT_DATA = Path(__file__).resolve().parent.parent / ".carry" / "fineweb_sample" / \
    "fineweb_sample_train_000001.bin"
DEFAULT_RUNS = ["d12,64,1024,8,0", "d12,64,1024,8,1", "d12,64,1024,8,2", "d24,32,1024,16,1"]
PEAK_FLOPS = 988.8e12


def gpu_memory_used_mb():
    """This process's GPU memory as nvidia-smi reports it (MiB), or -1."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return -1
    for line in out.splitlines():
        pid, used = [s.strip() for s in line.split(",")]
        if int(pid) == os.getpid():
            return int(used)
    return -1


def loaded_libraries(*names):
    """Paths of the shared libraries this process has mapped whose file name
    starts with one of names: which cuDNN and cuBLASLt the run really used
    (LD_LIBRARY_PATH or an earlier load can override the build's rpath)."""
    found = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            if os.path.basename(path).startswith(names):
                found.add(path)
    return sorted(found)


MODES = {"dp": dict(world_size=1, rank=0), "dpz": dict(world_size=1, rank=0, zero_stage=1),
         "fp8": dict(precision="fp8")}


def run_one(spec, steps, warmup, data):
    preset, B, T, micro, recompute, *modes = spec.split(",")
    B, T, micro, recompute = int(B), int(T), int(micro), int(recompute)
    options = {k: v for mode in modes for k, v in MODES[mode].items()}
    loader = DataLoader(data, B, T, shuffle=False, seed=0)
    batches = []
    for _ in range(warmup + steps):
        micro_batches = [loader.next_batch() for _ in range(micro)]
        batches.append((np.stack([x for x, _ in micro_batches]),
                        np.stack([y for _, y in micro_batches])))
    t0 = time.perf_counter()
    create = pyllmc.Model.load if preset.endswith(".bin") else pyllmc.Model.from_config
    m = create(preset, device="cuda", max_batch_size=B, max_seq_len=T, recompute=recompute, seed=0,
               **options)
    create_s = time.perf_counter() - t0
    cfg = m.config
    times, losses = [], []
    for i in range(warmup + steps):
        x, y = batches[i]
        t = time.perf_counter()
        loss, norm = m.step(x, y, lr=6e-4, weight_decay=0.1, grad_clip=1.0)
        dt = time.perf_counter() - t
        losses.append(loss)
        if i >= warmup:
            times.append(dt)
    ms = 1000 * float(np.median(times))
    tokens = micro * B * T
    flops_per_token = 6 * m.num_parameters + 6 * cfg.num_layers * cfg.channels * T
    tok_s = tokens / (ms / 1000)
    return {"run": spec, "preset": preset, "B": B, "T": T, "micro_steps": micro,
            "recompute": recompute, "ms_per_step": ms, "ms_min": 1000 * min(times),
            "ms_max": 1000 * max(times), "tokens_per_s": tok_s,
            "mfu": flops_per_token * tok_s / PEAK_FLOPS, "library_gb": m.memory_bytes / 1e9,
            "process_gb": gpu_memory_used_mb() * 1048576 / 1e9, "create_s": create_s,
            "libraries": loaded_libraries("libcudnn.so", "libcublasLt.so"),
            "losses": [float(v) for v in losses]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append",
                   help="preset or FILE.bin,B,T,micro_steps,recompute[,dp|dpz|fp8]... (repeatable)")
    p.add_argument("--data", default=str(DEFAULT_DATA),
                   help="token shard(s) the batches come from (default: %(default)s)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_one(args.run[0], args.steps, args.warmup, args.data)))
        return
    results = []
    for spec in args.run or DEFAULT_RUNS:
        cmd = [sys.executable, __file__, "--child", "--run", spec, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--data", args.data]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{spec}: failed\n{proc.stdout}{proc.stderr}", flush=True)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        print(json.dumps(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"\n{'run (preset,B,T,micro,recompute)':34} {'ms/step':>8} {'tok/s':>9} {'MFU':>6} "
          f"{'lib GB':>7} {'proc GB':>8}   (llm.c in the same call: bench/peer_bench.py)")
    for r in results:
        print(f"{r['run']:34} {r['ms_per_step']:8.1f} {r['tokens_per_s'] / 1e3:8.1f}k "
              f"{100 * r['mfu']:5.1f}% {r['library_gb']:7.2f} {r['process_gb']:8.2f}")


if __name__ == "__main__":
    main()

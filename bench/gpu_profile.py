"""
Where a CUDA training step spends its GPU time: one d12 step (B=64, T=1024,
2 micro-steps, real FineWeb tokens) under torch.profiler, whose CUPTI tracing records every kernel
in the process (libllmc's, cuBLASLt's and cuDNN's alike). torch is used only
as the tracer here, never by the library. Prints kernels by total GPU time.

    python bench/gpu_profile.py [--preset d12 --batch 64 --seq 1024 --micro 2 --recompute 0]
                                [--precision fp8] [--data SHARD]
    python bench/gpu_profile.py --generate 64 [--preset d12 --new-tokens 64]
    python bench/gpu_profile.py --followers Memset   # which kernels come right after memsets

--generate B profiles greedy generation instead: B prompts of 128 real tokens, then
--new-tokens decode steps (prefill included; decode steps run as CUDA graphs).
"""
import argparse
import time
from collections import Counter

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

import pyllmc
from bench.gpu_bench import DEFAULT_DATA
from pyllmc.shards import DataLoader


def idle_report(prof, wall_ms):
    """How much of the profiled step's GPU timeline is idle: the span from
    the first kernel's start to the last one's end, less the union of kernel
    and copy intervals. Idle time inside a step is launch gaps or host work."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    if not spans:
        return
    busy, gaps, end = 0.0, [], spans[0][0]
    for a, b in spans:
        if a > end:
            gaps.append(a - end)
        busy += max(0.0, b - max(a, end))
        end = max(end, b)
    span = end - spans[0][0]
    big = [g for g in gaps if g > 20]
    print(f"unprofiled run {wall_ms:.1f} ms; profiled GPU span {span / 1e3:.1f} ms, busy "
          f"{busy / 1e3:.1f} ms, idle {(span - busy) / 1e3:.1f} ms in {len(gaps)} gaps "
          f"({len(big)} over 20 us, {sum(big) / 1e3:.1f} ms; largest {max(gaps, default=0):.0f} us)")


def followers_report(prof, pattern, rows=12):
    """The kernels that start right after each GPU event whose name holds
    pattern (e.g. which library calls carry the step's memsets), by count."""
    events = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                    key=lambda e: e.time_range.start)
    after = Counter(b.name[:100] for a, b in zip(events, events[1:]) if pattern in a.name)
    print(f"what follows the {sum(after.values())} events named *{pattern}*:")
    for name, count in after.most_common(rows):
        print(f"{count:6d}x  {name}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="d12")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--micro", type=int, default=2)
    p.add_argument("--recompute", type=int, default=0)
    p.add_argument("--precision", default="default", choices=["default", "fp8"])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="token shard to read the batch from")
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--generate", type=int, default=0, metavar="B",
                   help="profile generation instead")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--followers", metavar="NAME",
                   help="also count the kernels that start right after events named *NAME*")
    a = p.parse_args()
    torch.cuda.init()
    # generation plans its own cache: the training plan is then the smallest (d48 at 64 x 1024
    # would not fit)
    m = pyllmc.Model.from_config(a.preset, device="cuda",
                                 max_batch_size=1 if a.generate else a.batch,
                                 max_seq_len=1 if a.generate else a.seq, recompute=a.recompute,
                                 precision=a.precision)
    if a.generate:
        loader = DataLoader(a.data, a.generate, 128, shuffle=False, seed=0)
        prompts = loader.next_batch()[0].tolist()

        def work():
            m.generate(prompts, max_new_tokens=a.new_tokens, temperature=0, stop_token=None)
        what = f"greedy generation of {a.new_tokens} tokens for {a.generate} prompts"
    else:
        loader = DataLoader(a.data, a.batch, a.seq, shuffle=False, seed=0)
        batches = [loader.next_batch() for _ in range(a.micro)]
        x, y = np.stack([b[0] for b in batches]), np.stack([b[1] for b in batches])

        def work():
            m.step(x, y, lr=1e-4)
        what = f"one step of {a.micro} micro-steps"
    work()  # warm-up: graphs, heuristics
    t = time.perf_counter()
    work()
    wall_ms = 1000 * (time.perf_counter() - t)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        work()
    idle_report(prof, wall_ms)
    if a.followers:
        followers_report(prof, a.followers)
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    events.sort(key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in events)
    print(f"GPU time in kernels and copies: {total / 1e3:.1f} ms for {what}")
    for e in events[:a.rows]:
        print(f"{100 * e.device_time_total / total:5.1f}% {e.device_time_total / 1e3:8.2f} ms "
              f"{e.count:6d}x  {e.key[:100]}")


if __name__ == "__main__":
    main()

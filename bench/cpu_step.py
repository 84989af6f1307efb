"""
One CPU training step of a small GPT-2, llmc against PyTorch eager, in the
same process on the same machine, from the same weights and batch.

A step is forward, backward, global-norm clipping and an AdamW update for
both. The two alternate step by step, so that whatever else the machine is
doing weighs on both alike; the median of the timed steps is reported.

    python -m bench.cpu_step [--layers 4 --channels 256 --heads 4 --seq 256 --batch 4 --steps 10]

torch is needed for the comparison only (the test reference, tests/torch_gpt2.py).
"""
import argparse
import os
import statistics
import time

import numpy as np
import torch

import pyllmc
from tests.torch_gpt2 import GPT, GPTConfig


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256, help="T")
    ap.add_argument("--batch", type=int, default=4, help="B")
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("--threads", type=int, default=0, help="0: every core, for both")
    args = ap.parse_args()

    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    cfg = pyllmc.Config(max_seq_len=args.seq, vocab_size=args.vocab, num_layers=args.layers,
                        num_heads=args.heads, channels=args.channels)
    model = pyllmc.Model.from_config(cfg, max_batch_size=args.batch, seed=1, num_threads=threads)
    c = model.config
    ref = GPT(GPTConfig(c.max_seq_len, c.vocab_size, c.padded_vocab_size, c.num_layers,
                        c.num_heads, c.channels))
    ref.load_flat(torch.from_numpy(model.parameters()))
    hp = dict(lr=1e-4, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8)
    opt = ref.configure_optimizer(hp["lr"], hp["weight_decay"], (hp["beta1"], hp["beta2"]), hp["eps"])

    rng = np.random.default_rng(0)
    x = rng.integers(0, args.vocab, (args.batch, args.seq))
    y = rng.integers(0, args.vocab, (args.batch, args.seq))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def llmc_step():
        return model.step(x, y, grad_clip=1.0, **hp)[0]

    def torch_step():
        _, loss = ref(xt, yt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    times = {"llmc": [], "torch": []}
    losses = {"llmc": [], "torch": []}
    for i in range(args.steps + 2):
        for name, fn in (("llmc", llmc_step), ("torch", torch_step)):
            t0 = time.perf_counter()
            loss = fn()
            dt = time.perf_counter() - t0
            losses[name].append(loss)
            if i >= 2:
                times[name].append(dt)

    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    tokens = args.batch * args.seq
    print(f"config: L={c.num_layers} C={c.channels} H={c.num_heads} T={args.seq} B={args.batch} "
          f"V={c.vocab_size} (padded {c.padded_vocab_size}), {model.num_parameters:,} parameters, "
          f"{threads} threads, median of {args.steps} steps")
    for name in ("llmc", "torch"):
        print(f"{name:6s} {ms[name]:8.1f} ms/step  {tokens / ms[name] * 1000:8.0f} tokens/s  "
              f"final loss {losses[name][-1]:.4f}")
    print(f"ratio llmc/torch: {ms['llmc'] / ms['torch']:.2f}x")
    logits_mib = tokens * c.vocab_size * 4 / 2**20
    print(f"llmc memory: {model.memory_bytes / 2**20:.0f} MiB in all (weights, gradients, AdamW "
          f"moments, activations); one fp32 copy of the B*T*V logits alone is {logits_mib:.0f} MiB")


if __name__ == "__main__":
    main()

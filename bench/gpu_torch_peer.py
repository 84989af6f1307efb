"""
The PyTorch peer for bench/gpu_bench.py, measured on the same GPU in the same
call: the reference GPT-2 of tests/torch_gpt2.py trained as llm.c's
train_gpt2.py trains it (bf16 autocast, flash SDPA, fused AdamW, gradient
accumulation, clipping), optionally under torch.compile.

    python -m bench.gpu_torch_peer --preset d12 -B 64 -T 1024 --micro-steps 8 [--compile] [--fp8]
    python -m bench.gpu_torch_peer --preset llama-124m -B 64 -T 1024 --micro-steps 8 --compile

Batches are real text, the consecutive windows of a token shard (--data, FineWeb by
default), as in bench/gpu_bench.py. --fp8 trains the block's four linear layers in FP8
with torchao's float8 training (tensorwise scaling, torchao's "tensorwise" recipe), the
LM head and the rest in bf16 as llmc's FP8 mode does (a Llama's lm_head is left out of
the conversion); torchao must be importable (carry its wheel: the GPU machine has no
network).

A llama preset (llama-124m, llama3.2-1b, llama3.2-3b, llama3.1-8b) trains
transformers' LlamaForCausalLM of that shape instead (fp32 weights as
masters, bf16 autocast, SDPA attention, fused AdamW decaying the 2-D weights);
--untied gives it an output layer of its own (bench/peer_bench.py's PRESET-untied).

Steps are timed with CUDA events after warm-up steps (the first ones include
compilation); the median is printed with tokens/s and peak GPU memory
(torch.cuda.max_memory_allocated, i.e. the caching allocator's peak).
"""
import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pyllmc.shards import DataLoader
from tests.torch_gpt2 import GPT, GPTConfig, init_gpt2_

DEFAULT_DATA = Path(__file__).resolve().parent.parent / ".carry" / "fineweb_sample" / \
    "fineweb_sample_train_000001.bin"

PRESETS = {"d12": (12, 12, 768), "d24": (24, 16, 1024), "d36": (36, 20, 1280), "d48": (48, 25, 1600)}
LLAMA_PRESETS = ("llama-124m", "llama3.2-1b", "llama3.2-3b", "llama3.1-8b")


class LlamaLoss(torch.nn.Module):
    """transformers' LlamaForCausalLM called as the GPT reference is: (inputs,
    targets) -> (logits, mean cross-entropy)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs, targets):
        logits = self.model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return logits, loss


def llama_model(preset, untied=False):
    """(model, fused AdamW) of a llmc Llama preset's shape, untied: with its own output layer."""
    import transformers

    import pyllmc
    from pyllmc import hf
    config = pyllmc.Config.preset(preset)
    if untied:
        config = dataclasses.replace(config, untied_head=1)
    hf_config = transformers.LlamaConfig(**hf.llama_hf_config(config), attn_implementation="sdpa")
    model = LlamaLoss(transformers.LlamaForCausalLM(hf_config)).cuda()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    return model, optimizer


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="d12", choices=sorted(PRESETS) + list(LLAMA_PRESETS))
    p.add_argument("-B", type=int, default=64)
    p.add_argument("-T", type=int, default=1024)
    p.add_argument("--micro-steps", type=int, default=8)
    p.add_argument("--steps", type=int, default=6, help="timed steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--untied", action="store_true", help="a Llama preset with its own output layer")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--fp8", action="store_true", help="torchao float8 training (tensorwise)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="token shard(s) to read batches from")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = True
    if args.preset in LLAMA_PRESETS:
        model, optimizer = llama_model(args.preset, args.untied)
    else:
        L, H, C = PRESETS[args.preset]
        model = init_gpt2_(GPT(GPTConfig(num_layers=L, num_heads=H, channels=C))).cuda()
        optimizer = model.configure_optimizer(lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95),
                                              eps=1e-8)
        for group in optimizer.param_groups:
            group["fused"] = True
    if args.fp8:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
        convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name("tensorwise"),
                                   module_filter_fn=lambda module, fqn: "lm_head" not in fqn)
    forward = torch.compile(model) if args.compile else model
    loader = DataLoader(args.data, args.B, args.T, shuffle=False, seed=0)
    batches = []
    for _ in range(args.warmup + args.steps):
        micro = [loader.next_batch() for _ in range(args.micro_steps)]
        batches.append((torch.from_numpy(np.stack([x for x, _ in micro])).long().cuda(),
                        torch.from_numpy(np.stack([y for _, y in micro])).long().cuda()))
    calls = iter(batches)

    def step():
        inputs, targets = next(calls)
        for k in range(args.micro_steps):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                _, loss = forward(inputs[k], targets[k])
            (loss / args.micro_steps).backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss, norm

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    ms = statistics.median(times)
    tokens = args.micro_steps * args.B * args.T
    result = {"peer": "pytorch" + (" compile" if args.compile else " eager") + (" fp8" if args.fp8 else ""),
              "torch": torch.__version__,
              "preset": args.preset + ("-untied" if args.untied else ""), "B": args.B, "T": args.T,
              "micro_steps": args.micro_steps,
              "ms_per_step": ms, "tokens_per_s": tokens / (ms / 1000),
              "peak_gb": torch.cuda.max_memory_allocated() / 1e9, "warmup_s": warmup_s}
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"{result['peer']:18} {args.preset} B={args.B} T={args.T} x{args.micro_steps}: "
          f"{ms:8.1f} ms/step {result['tokens_per_s'] / 1e3:7.1f}k tok/s "
          f"peak {result['peak_gb']:.2f} GB (warm-up {warmup_s:.0f} s)")


if __name__ == "__main__":
    main()

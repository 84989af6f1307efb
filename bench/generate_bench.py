"""
Text generation speed, llmc against Hugging Face transformers' `generate`, in
one process on the same weights: tokens/s at several batch sizes, each
sequence a prompt of --prompt-len real tokens (a window of a FineWeb shard,
--data) followed by exactly --new-tokens greedy tokens (no stop token),
prefill included in the time.

    python -m bench.generate_bench                      # GPU: d12 and d48, batch 1, 8, 64
    python -m bench.generate_bench --sizes llama-124m   # a Llama, against LlamaForCausalLM
    python -m bench.generate_bench --device cpu --sizes d12 --batches 1,8
    python -m bench.generate_bench --no-peer            # llmc alone (A/B of two library builds)

GPU: llmc (bf16 weights and cache, decode steps as CUDA graphs) against
transformers in bf16 with its static cache, eager and compiled by generate
itself (CompileConfig: torch.compile, mode "reduce-overhead", fullgraph).
CPU: llmc fp32 against transformers fp32 (its default dynamic cache), both
on every core. Each measurement runs once to warm up (graph capture, algorithm choice, compilation), then
--repeats times; the best is reported. The batch-1 bound on the GPU is the
time to read every weight once and the average cache once per token at
--bandwidth bytes/s (4.8e12: the H200's HBM3e).

torch and transformers are needed (the tests' packages).
"""
import argparse
import os
import tempfile
import time

import numpy as np
import torch
import transformers

import pyllmc
from bench.gpu_bench import DEFAULT_DATA
from pyllmc import hf
from pyllmc.shards import read_shard


def best_time(run, repeats):
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def llmc_runner(model, prompts, new_tokens):
    def run():
        out = model.generate(prompts, max_new_tokens=new_tokens, temperature=0, stop_token=None)
        assert all(len(t) == new_tokens for t in out)
    return run


def hf_runner(model, prompts, new_tokens, device, compile):
    """transformers' generate; on the GPU with its static cache, which
    generate compiles itself (CompileConfig) unless told not to: wrapping
    forward in torch.compile by hand breaks on the cache's in-place updates
    under CUDA graphs."""
    ids = torch.tensor(prompts, device=device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=0, attention_mask=torch.ones_like(ids))
    if device == "cuda":
        kwargs["cache_implementation"] = "static"
        kwargs["disable_compile"] = not compile
        if compile:
            kwargs["compile_config"] = transformers.CompileConfig(fullgraph=True,
                                                                  mode="reduce-overhead")

    def run():
        with torch.inference_mode():
            out = model.generate(ids, **kwargs)
        assert out.shape[1] == ids.shape[1] + new_tokens
        if device == "cuda":
            torch.cuda.synchronize()
    return run


def bound_tokens_per_s(config, prompt_len, new_tokens, bandwidth, dtype_bytes):
    """Batch 1: every weight read once per token (the LM head reads the
    vocabulary's rows, the embeddings one row each) and the cache at its
    average length."""
    C, L, V = config.channels, config.num_layers, config.vocab_size
    kv = (config.num_kv_heads if config.is_llama else config.num_heads) * (C // config.num_heads)
    qkv = C + 2 * kv
    fc, act = (2 * config.ffn_hidden, config.ffn_hidden) if config.is_llama else (4 * C, 4 * C)
    block = C * qkv + C * C + C * fc + act * C + 2 * C  # the products and the norms' gains
    if not config.is_llama:
        block += qkv + C + fc + C + 2 * C  # GPT-2's biases and LayerNorm shifts
    weights = V * C + L * block + (C if config.is_llama else 2 * C)
    cache = 2 * L * kv * (prompt_len + new_tokens / 2)
    return bandwidth / ((weights + cache) * dtype_bytes)


def peer_model(config, folder, device):
    """transformers' model of folder/model.bin (exported to folder/hf)."""
    hf.export_hf(os.path.join(folder, "model.bin"), os.path.join(folder, "hf"))
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    peer = transformers.LlamaForCausalLM if config.is_llama else transformers.GPT2LMHeadModel
    return peer.from_pretrained(os.path.join(folder, "hf"), torch_dtype=dtype).to(device).eval()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.generate_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--sizes", default=None, help="presets, comma-separated (cuda: d12,d48; "
                    "cpu: d12)")
    ap.add_argument("--batches", default=None, help="comma-separated (cuda: 1,8,64; cpu: 1,8)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="token shard the prompts come from")
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--bandwidth", type=float, default=4.8e12, help="bytes/s of device memory")
    ap.add_argument("--no-compile", action="store_true", help="skip transformers + torch.compile")
    ap.add_argument("--no-peer", action="store_true", help="llmc's rows alone (no transformers)")
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    sizes = (args.sizes or ("d12,d48" if cuda else "d12")).split(",")
    batches = [int(b) for b in (args.batches or ("1,8,64" if cuda else "1,8")).split(",")]
    if not cuda:
        torch.set_num_threads(os.cpu_count())
    rng = np.random.default_rng(0)
    text = read_shard(args.data)
    rows = []
    for size in sizes:
        config = pyllmc.Config.preset(size)
        with tempfile.TemporaryDirectory() as tmp:
            with pyllmc.Model.from_config(config, max_batch_size=1, max_seq_len=1, seed=1) as m:
                m.save(os.path.join(tmp, "model.bin"))
            theirs = None if args.no_peer else peer_model(config, tmp, args.device)
            ours = pyllmc.Model.load(os.path.join(tmp, "model.bin"), device=args.device,
                                     max_batch_size=1, max_seq_len=64)  # training plan unused
        for batch in batches:
            starts = rng.integers(0, len(text) - args.prompt_len, batch)
            prompts = [text[i:i + args.prompt_len].tolist() for i in starts]
            tokens = batch * args.new_tokens
            row = {"size": size, "batch": batch}
            row["llmc"] = tokens / best_time(llmc_runner(ours, prompts, args.new_tokens),
                                             args.repeats)
            if theirs is not None:
                row["hf"] = tokens / best_time(hf_runner(theirs, prompts, args.new_tokens,
                                                         args.device, compile=False), args.repeats)
            if theirs is not None and cuda and not args.no_compile:
                row["hf_compile"] = tokens / best_time(
                    hf_runner(theirs, prompts, args.new_tokens, args.device, compile=True),
                    args.repeats)
            if cuda and batch == 1:
                row["bound"] = bound_tokens_per_s(config, args.prompt_len, args.new_tokens,
                                                  args.bandwidth, 2)
            rows.append(row)
            print_row(row, flush=True)
        ours.close()
        del theirs
    print_table(rows, args)


def print_row(row, flush=False):
    best_hf = max(row.get("hf", 0.0), row.get("hf_compile", 0.0))
    cells = [f"{row['size']:>4}", f"{row['batch']:>5}", f"{row['llmc']:>10.1f}",
             f"{row['hf']:>10.1f}" if "hf" in row else f"{'-':>10}",
             f"{row['hf_compile']:>12.1f}" if "hf_compile" in row else f"{'-':>12}",
             f"{row['llmc'] / best_hf:>8.2f}x" if best_hf else f"{'-':>9}"]
    if "bound" in row:
        cells.append(f"{row['bound']:>9.1f} ({row['llmc'] / row['bound']:.0%})")
    print(" | ".join(cells), flush=flush)


def print_table(rows, args):
    print(f"\ntokens/s, {args.device}, prompt {args.prompt_len} + {args.new_tokens} new tokens, "
          f"greedy, best of {args.repeats}")
    print(" | ".join(["size", "batch", "llmc tok/s", "hf tok/s", "hf+compile", "llmc/best",
                      "batch-1 bound (llmc's share)"]))
    for row in rows:
        print_row(row)


if __name__ == "__main__":
    main()

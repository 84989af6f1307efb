"""
Speed of the HellaSwag eval (evals/hellaswag.py), end to end: read and
tokenize the data, load the checkpoint, score every example.

    python bench/hellaswag_bench.py --preset d12 --device cuda --cli  # 10,042 synthetic examples
    python bench/hellaswag_bench.py --checkpoint model.bin --data hellaswag_val.jsonl

Without --data it writes a synthetic set shaped like HellaSwag's validation
split (10,042 examples; contexts of 15-140 tokens, endings of 5-60, about 110
tokens per context+ending, 4.4M in all, like the real set's ~4M) as jsonl, so
the timing includes parsing and tokenizing as a real run does. The words are
GPT-2 vocabulary entries, so the scores mean nothing; the time does.
With --preset, a randomly initialised model of that shape is saved first
(not timed) and loaded from the file like a real checkpoint.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
import pyllmc
from pyllmc import hellaswag
from pyllmc.tokenizer import gpt2_encoding, gpt2_tokenizer


def write_synthetic_set(path, num_examples, seed=0):
    """A HellaSwag-shaped jsonl file of random common words (one GPT-2 token each)."""
    enc = gpt2_encoding()
    words = [w for w in (enc.decode([t]) for t in range(20000)) if re.fullmatch(r" [a-z]{2,7}", w)]
    words = np.array(words)
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(num_examples):
            ctx = "".join(words[rng.integers(len(words), size=rng.integers(15, 141))]).strip()
            endings = ["".join(words[rng.integers(len(words), size=rng.integers(5, 61))]).strip()
                       for _ in range(hellaswag.NUM_ENDINGS)]
            record = {"ind": i, "ctx": ctx, "endings": endings, "label": int(rng.integers(4))}
            f.write(json.dumps(record) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    model_arg = parser.add_mutually_exclusive_group(required=True)
    model_arg.add_argument("--checkpoint", help="model file in llm.c's format")
    model_arg.add_argument("--preset", help="d12/d24/d36/d48: a random model of that shape")
    parser.add_argument("--data", help="HellaSwag jsonl or llm.c .bin (default: a synthetic set)")
    parser.add_argument("--examples", type=int, default=10042, help="size of the synthetic set")
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        default="cuda" if pyllmc.cuda_available() else "cpu")
    parser.add_argument("--batch-size", type=int,
                        help="sequences per forward pass (default: the eval's)")
    parser.add_argument("--max-shapes", type=int, default=0,
                        help="distinct batch shapes (default: the eval's choice for the device; "
                             "-1: no limit)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="score the set this many times (warm timings)")
    parser.add_argument("--cli", action="store_true",
                        help="also time `python evals/hellaswag.py` on the same files, from process "
                             "start to exit (default settings of the eval)")
    args = parser.parse_args()
    if args.max_shapes:
        hellaswag.MAX_SHAPES[args.device] = None if args.max_shapes < 0 else args.max_shapes

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = os.path.join(tmp, "synthetic_hellaswag.jsonl")
            write_synthetic_set(data, args.examples)
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = os.path.join(tmp, f"{args.preset}.bin")
            with pyllmc.Model.from_config(args.preset, max_batch_size=1, max_seq_len=64) as m:
                m.save(checkpoint)

        gpt2_tokenizer.cache_clear()  # building the encoding is part of a real run
        gpt2_encoding.cache_clear()
        t0 = time.perf_counter()
        examples = hellaswag.load_examples(data)
        t_data = time.perf_counter()
        with hellaswag.open_model(checkpoint, examples, args.device, args.batch_size,
                                  args.threads) as model:
            t_model = time.perf_counter()
            score_times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                result = hellaswag.evaluate(model, examples, args.batch_size, progress=False)
                score_times.append(time.perf_counter() - t)
            t_end = t_model + score_times[0]
            rows = hellaswag.Rows(examples, model.max_seq_len)
            batch_size = args.batch_size or model.max_batch_size
            max_shapes = hellaswag.MAX_SHAPES[model.device]
            passes = rows.batches(batch_size, max_shapes)
            padded = sum((batch_size if max_shapes else len(r)) * t for r, t in passes)
            real = int(rows.length.sum())
            print(f"device      {model.device}  ({model!r})")
            print(f"plan        max_batch_size {model.max_batch_size}, max_seq_len {model.max_seq_len}; "
                  f"{len(passes)} forward passes, {len({t for _, t in passes})} sequence lengths")
        if args.cli:
            command = [sys.executable, str(REPO / "evals" / "hellaswag.py"), checkpoint, "--data", data,
                       "--device", args.device, "--quiet"]
            t = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            cli_seconds = time.perf_counter() - t

    n = result["num_examples"]
    best = min(score_times)
    print(f"examples    {n}  (acc {result['acc']:.4f}, acc_norm {result['acc_norm']:.4f})")
    print(f"tokens      {real:,} scored sequence positions, {padded:,} with padding "
          f"({padded / real - 1:.1%} padding)")
    print(f"data        {t_data - t0:.3f} s  (read + tokenize)")
    print(f"model load  {t_model - t_data:.3f} s")
    print(f"scoring     {score_times[0]:.3f} s first, {best:.3f} s best of {len(score_times)}: "
          f"{n / best:,.1f} examples/s, {padded / best:,.0f} tokens/s")
    print(f"end to end  {t_end - t0:.3f} s  ({n / (t_end - t0):,.1f} examples/s)")
    if args.cli:
        print(f"CLI         {cli_seconds:.3f} s  (python evals/hellaswag.py, process start to exit)")


if __name__ == "__main__":
    main()

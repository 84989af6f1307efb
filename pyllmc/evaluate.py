"""
Validation loss and perplexity of a model file on token shards:

    python -m pyllmc.evaluate out/model_00000300.bin --data "data/edu_fineweb10B/*_val_*.bin"
    python -m pyllmc.evaluate model.bin --data data/my_docs -B 4 -T 512 --max-batches 50

The shards are cut into B x T windows as the trainer's validation cuts them
(a folder means its _val_ shards), so the loss is the one training reports
for the same windows; perplexity is exp(loss).
"""
import argparse
import json
import math

from .cli import HelpFormatter, one_line_errors
from .files import write_atomic
from .shards import DataLoader, ShardError


def evaluate(model, pattern, batch_size, seq_len, max_batches=None):
    """{"loss", "perplexity", "batches", "tokens"} of model on the shards of
    pattern: the mean loss over its first max_batches (all: None) windows."""
    loader = DataLoader(pattern, batch_size, seq_len, split="val")
    count = loader.windows_per_epoch if max_batches is None else \
        min(max_batches, loader.windows_per_epoch)
    total = 0.0
    for _ in range(count):
        total += model.eval(*loader.next_batch())
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "batches": count,
            "tokens": count * batch_size * seq_len}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m pyllmc.evaluate", formatter_class=HelpFormatter,
                                description="Validation loss and perplexity of a model file on "
                                            "llm.c token shards.")
    p.add_argument("model", help="model file (llm.c format), e.g. out/model_00000300.bin")
    p.add_argument("--data", required=True, metavar="PATTERN",
                   help="shards: a glob pattern, a file, or a folder (its _val_ shards)")
    p.add_argument("-B", "--batch-size", type=int, default=8, metavar="N",
                   help="sequences per batch")
    p.add_argument("-T", "--seq-len", type=int, metavar="N",
                   help="tokens per sequence (default: the model's positions, at most 1024)")
    p.add_argument("--max-batches", type=int, metavar="N", help="evaluate only the first N batches")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--num-threads", type=int, default=0, metavar="N",
                   help="CPU threads (0: all cores)")
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    args = p.parse_args(argv)
    if args.batch_size < 1 or (args.seq_len is not None and args.seq_len < 1) or \
            (args.max_batches is not None and args.max_batches < 1):
        p.error("-B, -T and --max-batches must be 1 or more")

    import pyllmc
    with one_line_errors(ShardError, pyllmc.LlmcError, pyllmc.LibraryError):
        config = pyllmc.Config.from_file(args.model)
        seq_len = args.seq_len or min(config.max_seq_len, 1024)
        if seq_len > config.max_seq_len:
            raise ShardError(f"-T {seq_len} is longer than the {config.max_seq_len} positions of "
                             f"{args.model}")
        with pyllmc.Model.load(args.model, device=args.device, max_batch_size=args.batch_size,
                               max_seq_len=seq_len, num_threads=args.num_threads) as model:
            result = evaluate(model, args.data, args.batch_size, seq_len, args.max_batches)
        if args.json:
            write_atomic(args.json, [json.dumps({"model": args.model, "data": args.data,
                                                 "batch_size": args.batch_size,
                                                 "seq_len": seq_len, **result}, indent=1).encode()])
    print(f"{args.model}: val loss {result['loss']:.4f}, perplexity {result['perplexity']:.2f} "
          f"({result['batches']} batches of {args.batch_size}x{seq_len}, {result['tokens']:,} "
          "tokens)")


if __name__ == "__main__":
    main()

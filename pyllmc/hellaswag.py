"""
HellaSwag accuracy of a model file (GPT-2 or Llama), scored through libllmc.

    python -m pyllmc.hellaswag model.bin              # fetches the val set once; any folder
    python evals/hellaswag.py model.bin --data hellaswag_val.jsonl --limit 500   # in the repo
    python -m pyllmc.hellaswag llama1b.bin --tokenizer Llama-3.2-1B/tokenizer.json  # its vocabulary

Completion style, as llm.c and build-nanogpt score it: each example's context
is followed by " " + ending for each of its 4 endings, and the loss is taken
over the ending's tokens only. acc picks the ending with the lowest summed
loss, acc_norm the one with the lowest mean loss per token.

From Python (the training program's --hellaswag-every):

    examples = load_examples()          # once: read and tokenize
    evaluate(model, examples)           # -> {"acc", "acc_norm", "num_examples"}

Data: rowanz/hellaswag's jsonl (downloaded once into a cache dir, or a local
file), or llm.c's tokenized eval file (hellaswag_val.bin, magic 20240522,
GPT-2 tokens). The text is tokenized with GPT-2's BPE, or the tokenizer given
(pyllmc.tokenizer.load_tokenizer: a model's tokenizer.json or rank file).
"""

import argparse
import json
import os
import sys
import time
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
from tqdm import tqdm

import pyllmc
from . import files
from .tokenizer import TokenizerError, load_tokenizer
from .files import NotRegularFileError, open_regular, read_regular

VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
NUM_ENDINGS = 4
# llm.c's tokenized multiple-choice eval file (dev/data/data_common.py:write_evalfile)
EVAL_FILE_MAGIC = 20240522
EVAL_FILE_VERSION = 1
EVAL_HEADER_INTS = 256
START_OF_EXAMPLE = 65535
# Distinct batch shapes per evaluation, by device (None: no limit). The CUDA
# backend builds a cuDNN attention plan for every new (B, T), at 50-400 ms
# each, which the ~20 lengths of sorted HellaSwag batches would multiply; so
# there every pass has the full number of rows and the passes share at most
# this many sequence lengths, chosen to pad the fewest tokens (6: ~13% padding
# on HellaSwag-shaped data). The CPU pays nothing per shape, so each pass is
# exactly as long as its longest sequence.
MAX_SHAPES = {"cpu": None, "cuda": 6}
# Default tokens per forward pass (rows x sequence length) when the CLI plans
# the model's memory: on CPU larger passes keep the BLAS busier (1.4 GB for
# d12), on CUDA llm.c's 64 x 1024 training batch.
TOKEN_BUDGET = {"cpu": 16384, "cuda": 65536}


class DataError(ValueError):
    """A HellaSwag file is not what it should be."""


class DownloadError(OSError):
    """The HellaSwag validation set could not be downloaded."""


@dataclass(frozen=True)
class Example:
    """One HellaSwag question, tokenized."""
    context: list      # token ids of ctx
    endings: list      # NUM_ENDINGS lists: token ids of " " + ending
    label: int         # index of the correct ending


# -----------------------------------------------------------------------------
# data

def default_cache_dir():
    return Path(files.cache_dir()) / "hellaswag"


def load_examples(path=None, cache_dir=None, url=VAL_URL, tokenizer=None):
    """HellaSwag examples, tokenized. path: a local jsonl or llm.c .bin file;
    None downloads the validation set into cache_dir once and reuses it.
    tokenizer: a pyllmc.tokenizer.Tokenizer, GPT-2's when None."""
    if path is None:
        path = download(url, Path(cache_dir or default_cache_dir()) / "hellaswag_val.jsonl")
    path = Path(path)
    tokenizer = tokenizer or load_tokenizer()
    try:
        if is_eval_file(path):
            if tokenizer.name != "gpt2":
                raise DataError(f"{path}: llm.c's tokenized eval file holds GPT-2 tokens, not "
                                f"{tokenizer.name}'s; give the jsonl to tokenize it")
            return read_eval_file(path)
        return tokenize(read_jsonl(path), tokenizer)
    except NotRegularFileError as e:
        raise DataError(str(e)) from None


def download(url, dest):
    """Fetch url into dest unless dest exists. Written atomically, so an
    interrupted download never leaves a partial file behind."""
    dest = Path(dest)
    if dest.exists():
        return dest

    def chunks(response, bar):
        while chunk := response.read(1 << 20):
            bar.update(len(chunk))
            yield chunk

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=60) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=f"downloading {dest.name}") as bar:
                files.write_atomic(dest, chunks(response, bar))
    except OSError as e:  # urllib's URLError and HTTPError are OSErrors too
        reason = getattr(e, "reason", None) or e
        raise DownloadError(
            f"could not download the HellaSwag validation set from {url} ({reason}). "
            f"Fetch hellaswag_val.jsonl where there is internet and give it with --data PATH "
            f"(load_examples(path=...) from Python), or place it at {dest}; "
            f"llm.c's tokenized hellaswag_val.bin works as well") from None
    return dest


def is_eval_file(path):
    """True for llm.c's tokenized format: a .bin name or its magic number."""
    if path.suffix == ".bin":
        return True
    with open_regular(path) as f:
        head = f.read(4)
    return len(head) == 4 and int.from_bytes(head, "little") == EVAL_FILE_MAGIC


def read_jsonl(path):
    """(ctx, endings, label) of each line of a rowanz/hellaswag jsonl file."""
    try:
        text = read_regular(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e}); expected HellaSwag jsonl") from None
    rows = []
    # split on "\n" only: JSON strings may hold other line separators (U+2028)
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg}, column {e.colno}); "
                            f"expected one HellaSwag example object per line") from None
        except (ValueError, RecursionError) as e:
            # an integer beyond Python's digit limit, or nesting deeper than
            # the parser's recursion limit: JSON, but no HellaSwag record
            raise DataError(f"{where}: not a HellaSwag record ({type(e).__name__}: {e})") from None
        rows.append(parse_record(record, where))
    if not rows:
        raise DataError(f"{path}: no examples in the file")
    return rows


def parse_record(record, where):
    """Check one HellaSwag record and return (ctx, endings, label)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, found {type(record).__name__}")
    for key in ("ctx", "endings", "label"):
        if key not in record:
            raise DataError(f"{where}: missing field {key!r}")
    ctx, endings, label = record["ctx"], record["endings"], record["label"]
    if not isinstance(ctx, str) or not ctx:
        raise DataError(f"{where}: 'ctx' is {ctx!r}; expected a non-empty string")
    if (not isinstance(endings, list) or len(endings) != NUM_ENDINGS
            or not all(isinstance(e, str) for e in endings)):
        raise DataError(f"{where}: 'endings' is {endings!r}; expected a list of {NUM_ENDINGS} strings")
    # the Hugging Face copy of HellaSwag stores the label as a string; only
    # ASCII digits ("²".isdigit() is true, int("²") fails) and few of them
    if isinstance(label, str) and label.isascii() and label.isdigit() and len(label) <= 9:
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < NUM_ENDINGS:
        raise DataError(f"{where}: 'label' is {record['label']!r}; "
                        f"expected an integer in 0..{NUM_ENDINGS - 1}")
    return ctx, endings, label


def tokenize(rows, tokenizer):
    """Examples from (ctx, endings, label) rows: the context, and " " + each
    ending, encoded by tokenizer (a pyllmc.tokenizer.Tokenizer)."""
    texts = [ctx for ctx, _, _ in rows]
    texts += [" " + ending for _, endings, _ in rows for ending in endings]
    tokens = encode_parallel(tokenizer.encode, texts)
    n = len(rows)
    return [Example(tokens[i], tokens[n + NUM_ENDINGS * i: n + NUM_ENDINGS * (i + 1)], label)
            for i, (_, _, label) in enumerate(rows)]


def encode_parallel(encode, texts):
    """encode(text) of each text, over all cores. tiktoken releases the GIL
    while it encodes, so threads scale; each thread takes a contiguous
    slice, because encode_ordinary_batch's one future per text costs more
    than encoding a HellaSwag sentence (3.3 s against 0.6 s for 50,000
    texts on one core)."""
    num_threads = min(os.cpu_count() or 1, 32)
    bounds = [len(texts) * i // num_threads for i in range(num_threads + 1)]

    def encode_slice(i):
        return [encode(text) for text in texts[bounds[i]:bounds[i + 1]]]

    with ThreadPoolExecutor(num_threads) as pool:
        return [tokens for part in pool.map(encode_slice, range(num_threads)) for tokens in part]


def read_eval_file(path):
    """Examples from llm.c's tokenized eval file: a header of 256 int32
    (magic, version, number of examples, longest example in bytes), then per
    example a stream of uint16: 65535, its size in bytes, its index, label,
    number of endings, then the context and each ending as a length followed
    by that many tokens."""
    data = read_regular(path)
    header_bytes = 4 * EVAL_HEADER_INTS
    if len(data) < header_bytes:
        raise DataError(f"{path}: {len(data)} bytes, too short for the {header_bytes}-byte header "
                        f"of llm.c's eval format")
    magic, version, num_examples = (int(x) for x in np.frombuffer(data, "<i4", 3))
    if magic != EVAL_FILE_MAGIC:
        raise DataError(f"{path}: magic number {magic}; expected {EVAL_FILE_MAGIC} "
                        f"(llm.c's tokenized eval file) or give a HellaSwag .jsonl file")
    if version != EVAL_FILE_VERSION:
        raise DataError(f"{path}: version {version}; expected {EVAL_FILE_VERSION}")
    if num_examples <= 0:
        raise DataError(f"{path}: header says {num_examples} examples; expected at least one")
    if (len(data) - header_bytes) % 2:
        raise DataError(f"{path}: body of {len(data) - header_bytes} bytes "
                        f"is not a whole number of uint16")
    words = np.frombuffer(data, "<u2", offset=header_bytes).tolist()
    examples, pos = [], 0
    for index in range(num_examples):
        where = f"{path}: example {index} (at byte {header_bytes + 2 * pos})"
        if pos + 6 > len(words):
            raise DataError(f"{where}: file ends early; the header promises {num_examples} examples")
        if words[pos] != START_OF_EXAMPLE:
            raise DataError(f"{where}: starts with {words[pos]}; "
                            f"expected the delimiter {START_OF_EXAMPLE}")
        size, file_index, label, num_endings = words[pos + 1: pos + 5]
        end = pos + size // 2
        if size % 2 or size < 12 or end > len(words):
            raise DataError(f"{where}: size {size} bytes does not fit the file "
                            f"({2 * (len(words) - pos)} bytes left)")
        if file_index != index:
            raise DataError(f"{where}: holds index {file_index}; expected {index}")
        if label >= NUM_ENDINGS:
            raise DataError(f"{where}: label {label}; expected 0..{NUM_ENDINGS - 1}")
        if num_endings != NUM_ENDINGS:
            raise DataError(f"{where}: {num_endings} endings; expected {NUM_ENDINGS}")
        parts, cur = [], pos + 5
        for part in range(1 + NUM_ENDINGS):
            length = words[cur] if cur < end else 0
            if length == 0 or cur + 1 + length > end:
                name = "context" if part == 0 else f"ending {part - 1}"
                raise DataError(f"{where}: {name} length {length} does not fit the example's "
                                f"{size} bytes; expected 1 or more tokens inside it")
            parts.append(words[cur + 1: cur + 1 + length])
            cur += 1 + length
        if cur != end:
            raise DataError(f"{where}: size {size} bytes but its fields take {2 * (cur - pos)}")
        examples.append(Example(parts[0], parts[1:], label))
        pos = end
    if pos != len(words):
        raise DataError(f"{path}: {2 * (len(words) - pos)} bytes after the last of the "
                        f"{num_examples} examples the header announces")
    return examples


# -----------------------------------------------------------------------------
# scoring

class Rows:
    """Every (example, ending) pair as one sequence: context + ending, the last
    token only a target. Sequences are never packed side by side in a batch
    row (attention is causal but not masked per document, so a sequence must
    start at position 0 of its row); instead batches gather rows of similar
    length, and each batch is only as long as its longest sequence."""

    def __init__(self, examples, window):
        if not examples:
            raise ValueError("no examples to score")
        context_len = np.array([len(e.context) for e in examples], dtype=np.int64)
        ending_len = np.array([[len(t) for t in e.endings] for e in examples], dtype=np.int64)
        # all tokens in one array: per example the context, then its endings
        example_len = context_len + ending_len.sum(1)
        parts = (part for e in examples for part in (e.context, *e.endings))
        self.tokens = np.fromiter(chain.from_iterable(parts), dtype=np.int32,
                                  count=int(example_len.sum()))
        example_start = np.cumsum(example_len) - example_len
        ending_start = ((example_start + context_len)[:, None]
                        + np.cumsum(ending_len, 1) - ending_len)
        # one row per (example, ending), example-major
        self.ending_len = ending_len.reshape(-1)
        self.ending_start = ending_start.reshape(-1)
        self.context_len = np.repeat(context_len, NUM_ENDINGS)
        self.context_start = np.repeat(example_start, NUM_ENDINGS)
        self.length = self.context_len + self.ending_len - 1  # input positions
        # sequences beyond the model's window lose context tokens from the left
        too_long = self.ending_len > window
        if too_long.any():
            row = int(np.argmax(too_long))
            raise DataError(f"example {row // NUM_ENDINGS} ending {row % NUM_ENDINGS} has "
                            f"{self.ending_len[row]} tokens, more than the model's window of {window}")
        cut = np.maximum(self.length - window, 0)
        self.truncated = int(np.count_nonzero(cut))
        self.context_start += cut
        self.context_len -= cut
        self.length -= cut

    def __len__(self):
        return len(self.length)

    def batches(self, batch_size, max_shapes=None):
        """(rows, seq_len) of each forward pass: rows sorted longest first
        (any memory trouble shows at once), batch_size of them per pass; each
        pass as long as its longest row, or with max_shapes, as long as
        fitting_lengths allows."""
        order = np.argsort(-self.length, kind="stable")
        passes = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        longest = self.length[[rows[0] for rows in passes]]
        if max_shapes is not None:
            longest = fitting_lengths(longest, batch_size, max_shapes)
        return list(zip(passes, longest.tolist()))

    def batch(self, rows, seq_len, num_rows=None):
        """inputs and targets (num_rows, seq_len) for these rows; targets are
        -1 except at the ending's tokens, and padding (positions after a
        sequence, and rows after len(rows)) is token 0 with target -1."""
        pos = np.arange(seq_len + 1)
        cs, cl = self.context_start[rows, None], self.context_len[rows, None]
        es, n = self.ending_start[rows, None], self.length[rows, None]
        present = pos <= n
        src = np.where(pos < cl, cs + pos, es + pos - cl)
        seq = np.where(present, self.tokens[np.where(present, src, 0)], 0)
        scored = (pos[:-1] >= cl - 1) & (pos[:-1] < n)
        inputs = np.zeros((num_rows or len(rows), seq_len), dtype=np.int32)
        targets = np.full((num_rows or len(rows), seq_len), -1, dtype=np.int32)
        inputs[:len(rows)] = seq[:, :-1]
        targets[:len(rows)] = np.where(scored, seq[:, 1:], -1)
        return inputs, targets


def fitting_lengths(longest, rows_per_pass, max_shapes):
    """Sequence length of each pass when at most max_shapes distinct lengths
    may be used. longest: each pass's longest row, in decreasing order. The
    passes are split into contiguous groups, each padded to the length of its
    first pass; dynamic programming picks the split that pads the fewest tokens."""
    n = len(longest)
    if n <= max_shapes:
        return longest
    # cost[i, j]: tokens of passes i..j-1 all padded to longest[i]
    start, end = np.arange(n)[:, None], np.arange(n + 1)[None, :]
    cost = np.where(end > start, longest[:, None] * rows_per_pass * (end - start), np.inf)
    best = np.full(n + 1, np.inf)  # best[j]: fewest tokens for passes 0..j-1 in k groups
    best[0] = 0
    group_starts = []
    for _ in range(max_shapes):  # k groups can only beat k - 1, so use all of them
        total = best[:n, None] + cost
        group_starts.append(total.argmin(0))
        best = total.min(0)
    lengths, end = np.empty_like(longest), n
    for starts in reversed(group_starts):
        start = starts[end]
        lengths[start:end] = longest[start]
        end = start
    return lengths


def score(model, examples, batch_size=None, progress=False):
    """Summed loss over each ending's tokens and its token count: two
    (len(examples), 4) arrays."""
    batch_size = batch_size or model.max_batch_size
    if not 0 < batch_size <= model.max_batch_size:
        raise ValueError(f"batch_size {batch_size}: expected 1..{model.max_batch_size}, "
                         f"the model's planned max_batch_size")
    rows = Rows(examples, window=model.max_seq_len)
    if rows.tokens.size and rows.tokens.max() >= model.config.vocab_size:
        raise DataError(f"the examples hold token id {rows.tokens.max()}, beyond the model's "
                        f"vocabulary of {model.config.vocab_size}")
    if rows.truncated:
        warnings.warn(f"{rows.truncated} of {len(rows)} sequences are longer than the model's "
                      f"window of {model.max_seq_len} tokens; their contexts were cut from the left")
    max_shapes = MAX_SHAPES.get(model.device)
    num_rows = batch_size if max_shapes else None  # a short last pass would be one shape more
    sums = np.zeros(len(rows))
    with tqdm(total=len(rows), unit="seq", desc="hellaswag", disable=not progress) as bar:
        for batch, seq_len in rows.batches(batch_size, max_shapes):
            inputs, targets = rows.batch(batch, seq_len, num_rows)
            _, losses = model.eval(inputs, targets, per_token=True)
            sums[batch] = losses[:len(batch)].sum(1, dtype=np.float64)  # 0 where the target is -1
            bar.update(len(batch))
    return sums.reshape(-1, NUM_ENDINGS), rows.ending_len.reshape(-1, NUM_ENDINGS)


def evaluate(model, examples, batch_size=None, progress=False):
    """HellaSwag accuracy of a pyllmc.Model: {"acc", "acc_norm", "num_examples"}."""
    sums, counts = score(model, examples, batch_size, progress)
    labels = np.array([e.label for e in examples])
    return {
        "acc": float(np.mean(sums.argmin(1) == labels)),
        "acc_norm": float(np.mean((sums / counts).argmin(1) == labels)),
        "num_examples": len(examples),
    }


# -----------------------------------------------------------------------------
# command line

def open_model(checkpoint, examples, device="cpu", batch_size=None, num_threads=0):
    """Load a checkpoint with memory planned for scoring these examples:
    sequences as long as the longest one (or the model's window), batch_size
    rows per pass (default: TOKEN_BUDGET[device] tokens per pass)."""
    longest = max(len(e.context) + max(map(len, e.endings)) - 1 for e in examples)
    seq_len = min(longest, pyllmc.Config.from_file(checkpoint).max_seq_len)
    batch_size = batch_size or max(1, min(TOKEN_BUDGET[device] // seq_len, NUM_ENDINGS * len(examples)))
    return pyllmc.Model.load(checkpoint, device=device, max_batch_size=batch_size,
                             max_seq_len=seq_len, num_threads=num_threads)


def run(args):
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(args.tokenizer)
    examples = load_examples(args.data, args.cache_dir, tokenizer=tokenizer)
    if args.limit is not None:
        examples = examples[:args.limit]
    t_data = time.perf_counter()

    device = args.device or ("cuda" if pyllmc.cuda_available() else "cpu")
    with open_model(args.checkpoint, examples, device, args.batch_size, args.threads) as model:
        t_model = time.perf_counter()
        if model.config.vocab_size != tokenizer.vocab_size:
            warnings.warn(f"the model's vocabulary has {model.config.vocab_size:,} tokens, the "
                          f"tokenizer's ({tokenizer.name}) {tokenizer.vocab_size:,}: the scores "
                          "mean something only if the model learnt these tokens (--tokenizer "
                          "gives the model's own)")
        result = evaluate(model, examples, args.batch_size, progress=not args.quiet)
    t_end = time.perf_counter()

    n = result["num_examples"]
    print(f"examples  {n}")
    print(f"acc       {result['acc']:.4f}")
    print(f"acc_norm  {result['acc_norm']:.4f}")
    print(f"time      {t_end - t0:.2f} s on {device} (data {t_data - t0:.2f} s, model load "
          f"{t_model - t_data:.2f} s, scoring {t_end - t_model:.2f} s: "
          f"{n / (t_end - t_model):,.1f} examples/s)")
    if args.json:
        record = {**result, "checkpoint": str(args.checkpoint), "data": str(args.data or VAL_URL),
                  "device": device, "seconds": round(t_end - t0, 3)}
        files.write_atomic(args.json, [(json.dumps(record, indent=2) + "\n").encode()])
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python evals/hellaswag.py",
        description="HellaSwag accuracy (completion style, as llm.c) of a model file.")
    parser.add_argument("checkpoint", help="model file in llm.c's format (fp32 or bf16)")
    parser.add_argument("--data", help="local HellaSwag file: rowanz/hellaswag jsonl or llm.c's "
                                       "tokenized hellaswag_val.bin (default: the validation set, "
                                       "downloaded once)")
    parser.add_argument("--cache-dir",
                        help=f"where the downloaded set is kept (default {default_cache_dir()})")
    parser.add_argument("--limit", type=int, help="score only the first N examples")
    parser.add_argument("--tokenizer", metavar="FILE",
                        help="the model's local tokenizer.json or tiktoken rank file (default: "
                             "GPT-2's; llm.c's tokenized .bin holds GPT-2 tokens only)")
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        help="default: cuda when available, else cpu")
    parser.add_argument("--batch-size", type=int,
                        help="sequences per forward pass (default: about "
                             f"{TOKEN_BUDGET['cpu']} tokens on cpu, {TOKEN_BUDGET['cuda']} on cuda)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    parser.add_argument("--json", help="also write the result as a JSON object to this path")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit {args.limit}: expected 1 or more")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: expected 1 or more")
    try:
        run(args)
    except pyllmc.OutOfMemoryError as e:
        print(f"error: {e} (a smaller --batch-size needs less)", file=sys.stderr)
        return 1
    except (DataError, DownloadError, TokenizerError, pyllmc.LlmcError, pyllmc.LibraryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {files.os_error_message(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""
Tokenizing throughput, local parquet -> shards on disk, end to end:
data_prep/fineweb.py against llm.c's approach, in the same run, on the same
files, taking turns so that machine noise hits both alike.

llm.c's approach (dev/data/fineweb.py; re-implemented here, not copied): a
multiprocessing pool over documents (imap, chunksize 16) whose workers call
tiktoken's encode_ordinary, prefix <|endoftext|> and turn the list into a
uint16 array; the parent fills a shard buffer and writes it. As written it
uses max(1, cores - 2) processes (1 on a 2-core machine); it is timed that
way and with a pool of all cores. Both read the parquet files through
`datasets` streaming and must write byte-identical shards (checked).

    python bench/tokenize_bench.py                     # ~40M tokens, 3 rounds
    python bench/tokenize_bench.py --tokens 1e7 --rounds 1
    python bench/tokenize_bench.py --text my_corpus.txt   # other source text

The corpus: documents cut at random from the source text (default: the
Python reference docs in pydoc_data, present in every CPython), with
lognormal lengths around FineWeb-Edu's mean (~4.5 kB), in parquet files
with FineWeb's columns.
"""
import argparse
import glob
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import tempfile
import time

import numpy as np

from pyllmc import fineweb
from pyllmc.tokenizer import EOT, gpt2_encoding


def make_corpus(folder, target_tokens, source_paths, seed=0):
    """Parquet files of documents with FineWeb's columns; returns (files, docs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    if source_paths:
        text = "".join(open(p, encoding="utf-8").read() for p in source_paths)
    else:
        import pydoc_data.topics
        text = "\n\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
    chars_per_token = len(text) / len(gpt2_encoding().encode_ordinary(text))
    rng = np.random.default_rng(seed)
    files, docs, chars, part = [], 0, 0, 0
    while chars < target_tokens * chars_per_token:
        lengths = np.minimum(rng.lognormal(8.0, 0.9, size=20_000).astype(int) + 50, len(text) - 1)
        needed = target_tokens * chars_per_token - chars
        lengths = lengths[:max(1, int(np.searchsorted(np.cumsum(lengths), needed)) + 1)]
        starts = rng.integers(0, len(text) - lengths)
        texts = [text[s:s + n] for s, n in zip(starts.tolist(), lengths.tolist())]
        n = len(texts)
        table = pa.table({
            "text": texts,
            "id": [f"<urn:uuid:{docs + i:08d}>" for i in range(n)],
            "dump": ["CC-MAIN-2024-10"] * n,
            "url": [f"https://example.org/page/{docs + i}" for i in range(n)],
            "date": ["2024-02-21T12:00:00Z"] * n,
            "file_path": ["s3://commoncrawl/crawl-data/segment.warc.gz"] * n,
            "language": ["en"] * n,
            "language_score": rng.random(n),
            "token_count": (lengths / chars_per_token).astype(np.int64),
        })
        path = os.path.join(folder, f"train-{part:05d}.parquet")
        pq.write_table(table, path, row_group_size=10_000)
        files.append(path)
        docs, chars, part = docs + n, chars + int(lengths.sum()), part + 1
    return files, docs


# ---- llm.c's approach -------------------------------------------------------

def llmc_tokenize(doc):
    ids = [EOT]
    ids.extend(gpt2_encoding().encode_ordinary(doc["text"]))
    return np.array(ids).astype(np.uint16)


def llmc_write(path, tokens):
    header = np.zeros(256, dtype=np.int32)
    header[:3] = 20240520, 1, len(tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())


def llmc_style(files, out_dir, shard_size, nprocs):
    import datasets
    docs = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
    buffer = np.empty(shard_size, dtype=np.uint16)
    count, index = 0, 0
    def shard_path(i):
        return os.path.join(out_dir, f"bench_{'val' if i == 0 else 'train'}_{i:06d}.bin")
    with mp.Pool(nprocs) as pool:
        for tokens in pool.imap(llmc_tokenize, docs, chunksize=16):
            if count + len(tokens) < shard_size:
                buffer[count:count + len(tokens)] = tokens
                count += len(tokens)
            else:
                room = shard_size - count
                buffer[count:] = tokens[:room]
                llmc_write(shard_path(index), buffer)
                index += 1
                buffer[:len(tokens) - room] = tokens[room:]
                count = len(tokens) - room
    if count:
        llmc_write(shard_path(index), buffer[:count])


# ---- ours ---------------------------------------------------------------------

def ours(files, out_dir, shard_size, num_threads):
    source = {"kind": "local", "builder": "parquet", "files": files}
    fineweb.prepare(source, out_dir, "bench", shard_size, num_threads=num_threads, progress=False)


def cpu_seconds():
    """User + system time of this process and its finished children (pool workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def shard_bytes(out_dir):
    return [open(p, "rb").read() for p in sorted(glob.glob(os.path.join(out_dir, "*.bin")))]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--tokens", type=float, default=4e7, help="corpus size in tokens")
    p.add_argument("--shard-size", type=float, default=1e7, help="tokens per shard")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of each approach")
    p.add_argument("--text", nargs="*", help="source text files for the corpus")
    p.add_argument("--workdir", help="where corpus and shards go (default: a temp folder)")
    args = p.parse_args()

    cores = os.cpu_count()
    work = args.workdir or tempfile.mkdtemp(prefix="tokenize_bench_")
    os.makedirs(os.path.join(work, "corpus"), exist_ok=True)
    files, docs = make_corpus(os.path.join(work, "corpus"), args.tokens, args.text)
    mb = sum(os.path.getsize(f) for f in files) / 1e6
    print(f"corpus: {docs:,} documents, {len(files)} parquet files, {mb:.0f} MB, {cores} cores")
    shard_size = int(args.shard_size)
    contenders = {
        f"llm.c approach, as written ({max(1, cores - 2)} process)":
            lambda out: llmc_style(files, out, shard_size, max(1, cores - 2)),
        f"llm.c approach, pool of {cores} processes":
            lambda out: llmc_style(files, out, shard_size, cores),
        f"ours: data_prep/fineweb.py ({cores} threads)":
            lambda out: ours(files, out, shard_size, cores),
    }
    times = {name: [] for name in contenders}
    cpu = {name: [] for name in contenders}
    reference = tokens = None
    for r in range(args.rounds):
        for name, run in contenders.items():
            out = os.path.join(work, "shards")
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)
            c0, t0 = cpu_seconds(), time.perf_counter()
            run(out)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(cpu_seconds() - c0)
            written = shard_bytes(out)
            if reference is None:
                reference = written
                tokens = sum((len(b) - 1024) // 2 for b in written)
            assert written == reference, f"{name} wrote different shards"
            print(f"  round {r + 1}: {name}: {tokens / times[name][-1] / 1e6:.2f} M tok/s, "
                  f"{cpu[name][-1] / tokens * 1e6:.3f} CPU s per M tokens", flush=True)
    print(f"\n{tokens:,} tokens into {len(reference)} shards; all approaches byte-identical")
    print(f"{'approach':<48} {'median':>12} {'best':>12} {'CPU s/Mtok':>11}")
    rates = {}
    for name, ts in times.items():
        rates[name] = tokens / statistics.median(ts) / 1e6
        print(f"{name:<48} {rates[name]:>7.2f} M/s {tokens / min(ts) / 1e6:>7.2f} M/s "
              f"{statistics.median(cpu[name]) / tokens * 1e6:>11.3f}")
    names = list(rates)
    best_llmc = max(rates[n] for n in names[:2])
    print(f"ours vs llm.c's faster variant (median tokens/s): {rates[names[2]] / best_llmc:.2f}x")
    load = os.getloadavg()
    print(f"load average during the run: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min); other "
          "programs running on these cores slow every approach")
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

"""
FineWeb / FineWeb-Edu (or local parquet, jsonl and text files) to GPT-2 token
shards in llm.c's format.

    python data_prep/fineweb.py                      # FineWeb-Edu sample-10BT
    python data_prep/fineweb.py -t classic -v 100B   # FineWeb sample-100BT
    python data_prep/fineweb.py --input my_corpus/   # local files, same path

Documents are streamed through Hugging Face `datasets` (memory stays flat),
tokenized on every core, and written in input order, each prefixed by
<|endoftext|>, into shards of --shard-size tokens: the tokens llm.c's
dev/data/fineweb.py writes. Shard 0 is the validation shard
(edu_fineweb_val_000000.bin), the rest are training shards
(edu_fineweb_train_000001.bin, ...); a document that does not fit a shard
continues in the next one. Progress is recorded after each shard, so running
the same command again after an interruption picks up after the last
finished shard.

The split: validation is the first min(shard size, 10% of the tokens). A
corpus of 10 shards or more gets llm.c's layout (a whole first shard, cut
mid-document as llm.c cuts it). A smaller one is split again once all of it
is tokenized: validation is its first ~10% of tokens, ending at the document
start nearest to that (inside the document if there is only one), and the
rest are training shards, so a small corpus always gets both.
"""
import argparse
import json
import os
import sys

import numpy as np
from tqdm import tqdm

from ._lib import REPO_ROOT
from .cli import HelpFormatter
from .files import open_regular, os_error_message, write_atomic
from .shards import VAL_FRACTION, ShardError, read_shard, read_shard_header, write_shard
from .tokenizer import ParallelTokenizer, TokenizerError, load_tokenizer

# (--type, --version) -> (hub repository, hub config, output folder, shard name prefix)
HUB_DATASETS = {
    ("edu", "10B"): ("HuggingFaceFW/fineweb-edu", "sample-10BT", "edu_fineweb10B", "edu_fineweb"),
    ("edu", "100B"): ("HuggingFaceFW/fineweb-edu", "sample-100BT", "edu_fineweb100B", "edu_fineweb"),
    ("classic", "10B"): ("HuggingFaceFW/fineweb", "sample-10BT", "fineweb10B", "fineweb"),
    ("classic", "100B"): ("HuggingFaceFW/fineweb", "sample-100BT", "fineweb100B", "fineweb"),
}
# file name ending -> `datasets` builder that reads it
LOCAL_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json",
                 ".jsonl.gz": "json", ".json.gz": "json", ".txt": "text", ".md": "text"}
READ_BATCH_DOCS = 1024


class PrepError(Exception):
    """A problem with the inputs or the output folder, told in one line."""


def local_format(path):
    for ending, builder in LOCAL_FORMATS.items():
        if path.endswith(ending):
            return builder
    return None


def named(paths, most=5):
    """'a, b, c and 4 more' for an error message."""
    shown = ", ".join(paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")


def list_local_files(inputs):
    """Files named by inputs (files or folders, folders walked in sorted
    order, hidden files skipped) and the one `datasets` builder that reads
    them all. Files of other types are refused by name (leaving them out
    silently would train on less than asked), and so are inputs with no text
    at all; an empty file among others is an empty document."""
    files = []
    for item in map(os.fspath, inputs):
        if os.path.isdir(item):
            found = sorted(os.path.join(root, name) for root, _, names in os.walk(item)
                           for name in names if not name.startswith("."))
            if not found:
                raise PrepError(f"{item}: the folder holds no files")
            files += found
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise PrepError(f"{item}: no such file or folder")
    unknown = [f for f in files if not local_format(f)]
    if unknown:
        raise PrepError(f"cannot read {named(unknown)}: expected files ending in "
                        f"{', '.join(LOCAL_FORMATS)}")
    if all(os.path.getsize(f) == 0 for f in files):
        raise PrepError(f"no text to prepare: {named(files)} empty")
    builders = sorted({local_format(f) for f in files})
    if len(builders) > 1:
        raise PrepError(f"inputs mix formats ({', '.join(builders)}); prepare each format separately")
    return builders[0], [os.path.abspath(f) for f in files]


def open_stream(source):
    """A streaming `datasets.IterableDataset` over the source's documents."""
    import datasets
    if source["kind"] == "hub":
        try:
            return datasets.load_dataset(source["repo"], name=source["config"], split="train",
                                         streaming=True)
        except Exception as e:  # the hub client raises many kinds; say what failed and how to go on
            raise PrepError(f"could not open {source['repo']} ({source['config']}) on the Hugging "
                            f"Face hub: {type(e).__name__}: {e}. Check the network, or prepare "
                            "local files with --input") from None
    # a text file is one document; bytes that are not UTF-8 become U+FFFD
    # (counted by undecodable_report) rather than fail the whole file
    extra = ({"sample_by": "document", "encoding_errors": "replace"}
             if source["builder"] == "text" else {})
    return datasets.load_dataset(source["builder"], data_files=source["files"], split="train",
                                 streaming=True, **extra)


def undecodable_report(files):
    """A line saying how many byte sequences of the text files are not UTF-8
    (each is read as one U+FFFD), or None when all decode."""
    bad = {}
    for path in files:
        with open_regular(path) as f:
            data = f.read()
        replaced = data.decode("utf-8", "replace").count("\ufffd") - data.count("\ufffd".encode())
        if replaced:
            bad[path] = replaced
    if not bad:
        return None
    first = next(iter(bad))
    return (f"warning: {sum(bad.values())} undecodable byte sequence(s) in {len(bad)} file(s) "
            f"(first: {first}, {bad[first]}) replaced with U+FFFD")


def describe(source):
    """The input, in a few words for a message."""
    files = source.get("files", [])
    return source.get("repo") or (files[0] if len(files) == 1 else
                                  f"{len(files)} {source['builder']} files under "
                                  f"{os.path.commonpath(files)}")


def read_errors_named(tables, source):
    """The tables of a stream, a failure to read one turned into a PrepError
    naming the input."""
    where = describe(source)
    while True:
        try:
            table = next(tables)
        except StopIteration:
            return
        except Exception as e:  # datasets/pyarrow raise many kinds for a bad file
            raise PrepError(f"reading {where} failed: {type(e).__name__}: {e}") from None
        yield table


def text_batches(source, text_column, skip_docs):
    """Lists of document texts in input order, the first skip_docs documents
    dropped before any tokenizing."""
    if source["kind"] == "local" and source["builder"] == "text" and not skip_docs:
        report = undecodable_report(source["files"])
        if report:
            print(report, file=sys.stderr)
    stream = open_stream(source)
    if stream.column_names == []:  # `datasets` found no rows to take columns from
        raise PrepError(f"{describe(source)} holds no documents")
    if text_column not in (stream.column_names or [text_column]):
        raise PrepError(f"the input has no column {text_column!r} (it has: "
                        f"{', '.join(stream.column_names)}); pick one with --text-column")
    stream = stream.select_columns([text_column]).with_format("arrow")
    for table in read_errors_named(stream.iter(batch_size=READ_BATCH_DOCS), source):
        if skip_docs >= table.num_rows:
            skip_docs -= table.num_rows
            continue
        texts = table.column(text_column).slice(skip_docs).to_pylist()
        skip_docs = 0
        if None in texts:
            raise PrepError(f"the input has an empty (null) {text_column!r} value")
        yield texts


class ShardWriter:
    """Fills shards of shard_size tokens from (tokens, document lengths) chunks
    and records, after each shard, where in the input the next one begins."""

    def __init__(self, out_dir, name, shard_size, source, max_shards=None, tokenizer=None):
        self.out_dir, self.name, self.shard_size = out_dir, name, shard_size
        self.max_shards = max_shards
        self.tokenizer = tokenizer or load_tokenizer()
        self.progress_path = os.path.join(out_dir, f"{name}_progress.json")
        self.progress = {"source": source, "shard_size": shard_size, "shards": [], "complete": False}
        if self.tokenizer.name != "gpt2":  # GPT-2 runs' progress files stay as they were
            self.progress["tokenizer"] = self.tokenizer.name
        self.buffer = np.empty(shard_size, dtype=self.tokenizer.dtype)
        self.count = 0

    def shard_path(self, index):
        split = "val" if index == 0 else "train"
        return os.path.join(self.out_dir, f"{self.name}_{split}_{index:06d}.bin")

    def load_progress(self):
        """Take up a previous run of the same job: keep its shards that are on
        disk and whole, and return (documents to skip, tokens of the next
        document already written)."""
        if not os.path.exists(self.progress_path):
            return 0, 0
        with open(self.progress_path) as f:
            old = json.load(f)
        for key in ("source", "shard_size", "tokenizer"):
            if old.get(key) != self.progress.get(key):
                raise PrepError(f"{self.out_dir} holds shards of another job ({key} was "
                                f"{old.get(key)!r}, now {self.progress.get(key)!r}); use another --out-dir "
                                f"or delete {self.progress_path}")
        for entry in old["shards"]:
            try:
                whole = read_shard_header(self.shard_path(len(self.progress["shards"]))) == entry["tokens"]
            except ShardError:
                whole = False
            if not whole:
                break
            self.progress["shards"].append(entry)
        if self.progress["shards"] == old["shards"]:
            self.progress["complete"] = old["complete"]
        if not self.progress["shards"]:
            return 0, 0
        last = self.progress["shards"][-1]
        return last["next_doc"], last["next_doc_offset"]

    @property
    def num_shards(self):
        return len(self.progress["shards"])

    @property
    def finished(self):
        return self.progress["complete"] or (self.max_shards is not None
                                             and self.num_shards >= self.max_shards)

    def add(self, tokens, lengths, first_doc, start=0):
        """Append tokens[start:] of a chunk whose documents are numbered from
        first_doc (start > 0: the first document was partly written before)."""
        ends_at = np.cumsum(lengths)  # one past each document's last token
        pos = start
        while pos < len(tokens) and not self.finished:
            take = min(len(tokens) - pos, self.shard_size - self.count)
            self.buffer[self.count:self.count + take] = tokens[pos:pos + take]
            self.count += take
            pos += take
            if self.count == self.shard_size:
                # the next shard starts in document first_doc + k, so many tokens in
                k = int(np.searchsorted(ends_at, pos, side="right"))
                self.flush(first_doc + k, pos - (int(ends_at[k - 1]) if k else 0))

    def flush(self, next_doc, next_doc_offset):
        path = self.shard_path(self.num_shards)
        write_shard(path, self.buffer[:self.count], wide=self.tokenizer.wide)
        self.progress["shards"].append({"file": os.path.basename(path), "tokens": self.count,
                                        "next_doc": next_doc, "next_doc_offset": next_doc_offset})
        self.save_progress()
        self.count = 0

    def close(self, next_doc):
        """Write the last, partial shard and mark the job complete; a corpus
        smaller than 10 shards is then split again (see the module's doc)."""
        if self.count and not self.finished:
            self.flush(next_doc, 0)
        if self.max_shards is None or self.num_shards < self.max_shards:
            total = sum(s["tokens"] for s in self.progress["shards"])
            if total == 0:
                raise PrepError("the input holds no documents")
            if total < self.shard_size / VAL_FRACTION:
                self.resplit()
            self.progress["complete"] = True
        self.save_progress()

    def resplit(self):
        """Rewrite a small corpus' shards: validation is its first ~10% of
        tokens up to a document start, training the rest in shards of
        shard_size. Every document starts with the tokenizer's document token
        (<|endoftext|>), so the stream itself tells where documents start."""
        paths = [self.shard_path(i) for i in range(self.num_shards)]
        tokens = np.concatenate([read_shard(p) for p in paths])
        starts = np.flatnonzero(tokens == self.tokenizer.eot)
        inner = starts[starts > 0]
        target = len(tokens) * VAL_FRACTION
        if len(inner):
            cut = int(inner[np.argmin(np.abs(inner - target))])
        else:  # one document: cut inside it
            cut = min(max(1, round(target)), len(tokens) - 1)
        if cut < 1 or cut >= len(tokens):
            raise PrepError(f"the input holds {len(tokens)} token(s): too little to split into "
                            "validation and training")
        # an interruption from here on starts the job over instead of mixing layouts
        self.progress["shards"] = []
        self.save_progress()
        for path in paths:
            os.remove(path)
        ends = [cut, *range(cut + self.shard_size, len(tokens), self.shard_size), len(tokens)]
        begin = 0
        for end in ends:
            self.buffer[:end - begin] = tokens[begin:end]
            self.count = end - begin
            if end == len(tokens):
                self.flush(len(starts), 0)
            else:  # the next shard begins in this document, so many tokens in
                doc = int(np.searchsorted(starts, end, side="right")) - 1
                self.flush(doc, end - int(starts[doc]))
            begin = end

    def split_summary(self):
        """One line on how the tokens were split."""
        sizes = [s["tokens"] for s in self.progress["shards"]]
        return (f"split: val {sizes[0]:,} tokens (1 shard), train {sum(sizes[1:]):,} tokens "
                f"({len(sizes) - 1} shard(s))")

    def save_progress(self):
        write_atomic(self.progress_path, [json.dumps(self.progress, indent=1).encode()])


def prepare(source, out_dir, name, shard_size=10**8, text_column="text", num_threads=None,
            max_shards=None, progress=True, tokenizer=None):
    """Tokenize source into shards in out_dir (with tokenizer, a Tokenizer;
    GPT-2's when None); returns the shard paths."""
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise PrepError(f"cannot create output folder {out_dir}: {e.strerror}") from None
    if not os.access(out_dir, os.W_OK):
        raise PrepError(f"output folder {out_dir} is not writable")
    tokenizer = tokenizer or load_tokenizer()
    writer = ShardWriter(out_dir, name, shard_size, source, max_shards, tokenizer)
    next_doc, skip_tokens = writer.load_progress()
    done = [os.path.join(out_dir, s["file"]) for s in writer.progress["shards"]]
    if writer.finished:
        print(f"{out_dir}: all {len(done)} shards already written")
        return done
    if done:
        print(f"{out_dir}: {len(done)} finished shards kept; going on from document {next_doc:,}")
    total = max_shards * shard_size if max_shards else None
    bar = tqdm(total=total, initial=len(done) * shard_size if total else 0, unit="tok",
               unit_scale=True, disable=not progress, desc=f"shard {writer.num_shards}")
    batches = text_batches(source, text_column, next_doc)
    for tokens, lengths in ParallelTokenizer(num_threads, tokenizer=tokenizer).map(batches):
        before = writer.num_shards * shard_size + writer.count
        writer.add(tokens, lengths, next_doc, start=skip_tokens)
        skip_tokens = 0
        next_doc += len(lengths)
        bar.update(writer.num_shards * shard_size + writer.count - before)
        bar.set_description(f"shard {writer.num_shards}")
        if writer.finished:
            break
    writer.close(next_doc)
    bar.close()
    print(writer.split_summary())
    return [os.path.join(out_dir, s["file"]) for s in writer.progress["shards"]]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python data_prep/fineweb.py",
                                description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=HelpFormatter)
    p.add_argument("-t", "--type", choices=["edu", "classic"], default="edu",
                   help="FineWeb-Edu or classic FineWeb (hub inputs)")
    p.add_argument("-v", "--version", choices=["10B", "100B"], default="10B",
                   help="which sample: sample-10BT or sample-100BT (hub inputs)")
    p.add_argument("-i", "--input", nargs="+", metavar="PATH",
                   help="local parquet / jsonl / text files or folders instead of the hub "
                        "(a text file is one document)")
    p.add_argument("--text-column", default="text", help="column or field holding the text")
    p.add_argument("-o", "--out-dir", help="where shards go (default: data/<dataset> in the repo)")
    p.add_argument("--name", help="shard file name prefix (default: edu_fineweb / fineweb, "
                                  "or the first input's name)")
    p.add_argument("-s", "--shard-size", type=float, default=100_000_000,
                   help="tokens per shard. Validation is the first min(shard size, 10%% of the "
                        "tokens); under 10 shards of text it ends at a document start and the "
                        "rest is training, so a small corpus gets both")
    p.add_argument("--max-shards", type=int, help="stop after this many shards")
    p.add_argument("--num-threads", type=int, default=0, help="tokenizer threads (0: all cores)")
    p.add_argument("--tokenizer", metavar="FILE",
                   help="a local tokenizer.json or tiktoken rank file (e.g. a Llama 3 model "
                        "folder's tokenizer.json or original/tokenizer.model) instead of GPT-2's; "
                        "vocabularies beyond 65,536 tokens get llm.c's uint32 shards")
    args = p.parse_args(argv)

    shard_size = int(args.shard_size)
    if shard_size < 1 or shard_size >= 2**31:
        p.error(f"--shard-size must be in 1..2^31-1 tokens, got {args.shard_size}")
    try:
        if args.input:
            builder, files = list_local_files(args.input)
            source = {"kind": "local", "builder": builder, "files": files}
            default_name = os.path.basename(os.path.normpath(args.input[0])).split(".")[0]
            folder = default_name
        else:
            repo, config, folder, default_name = HUB_DATASETS[(args.type, args.version)]
            source = {"kind": "hub", "repo": repo, "config": config}
        name = args.name or default_name
        out_dir = args.out_dir or os.path.join(REPO_ROOT, "data", folder)
        paths = prepare(source, out_dir, name, shard_size, args.text_column,
                        args.num_threads or None, args.max_shards,
                        tokenizer=load_tokenizer(args.tokenizer))
    except OSError as e:
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        sys.exit(1)
    except (PrepError, ShardError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to go on after the last finished shard",
              file=sys.stderr)
        sys.exit(130)
    print(f"{len(paths)} shards in {out_dir}")


if __name__ == "__main__":
    main()

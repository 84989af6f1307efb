"""
The corpus `python -m pyllmc.train` uses when given no data: the Python
Language Reference text that every CPython ships in pydoc_data.topics
(~465 kB of English prose with code examples, ~139k GPT-2 tokens; PSF
licence, part of Python itself). It needs no download and no file in this
repository. Tokenized on first use into two shards in the cache folder:
the first 10% of the token stream is validation, the rest training.
"""
import hashlib
import os

from .files import cache_dir
from .shards import VAL_FRACTION, read_shard_header, ShardError, write_shard
from .tokenizer import encode_documents


def documents():
    """The reference's topics in a fixed order, one document each."""
    import pydoc_data.topics
    topics = pydoc_data.topics.topics
    return [topics[key] for key in sorted(topics)]


def default_shards(folder=None):
    """(train pattern, val pattern) of the default corpus, tokenized into
    folder (default: the cache) unless already there. The folder's name
    holds a hash of the text, so another Python's reference gets its own."""
    docs = documents()
    digest = hashlib.sha256("\0".join(docs).encode("utf-8", "surrogatepass")).hexdigest()[:12]
    folder = os.path.join(folder or cache_dir(), f"pydoc_topics_{digest}")
    val = os.path.join(folder, "pydoc_val_000000.bin")
    train = os.path.join(folder, "pydoc_train_000001.bin")
    try:
        read_shard_header(val), read_shard_header(train)
    except ShardError:
        tokens, _ = encode_documents(docs)
        cut = int(len(tokens) * VAL_FRACTION)
        try:
            os.makedirs(folder, exist_ok=True)
            write_shard(val, tokens[:cut])
            write_shard(train, tokens[cut:])
        except OSError as e:
            raise OSError(f"cannot write the default corpus into {folder}: {e.strerror}; "
                          "set LLMC_CACHE_DIR to a writable folder") from None
    return train, val

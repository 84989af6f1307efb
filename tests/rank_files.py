"""Tiktoken rank files for the tests, made from GPT-2's carried table (no real
Llama 3 tokenizer is committed), and the same vocabulary as a tokenizer.json
converted by transformers (an independent reader of rank files)."""
import base64
import itertools

from pyllmc import tokenizer


def llama3_shaped_ranks():
    """A table of Llama 3's size (128,000 ranks): GPT-2's ranks, then merges
    of two bytes, then of three, that GPT-2's table lacks. Every added token
    is reachable by merges, so the table encodes as a real BPE table does."""
    ranks = dict(tokenizer.load_ranks())
    pairs = (bytes(p) for p in itertools.product(range(256), repeat=2))
    triples = (bytes(t) for t in itertools.product(range(256), repeat=3))
    for token in itertools.chain(pairs, triples):
        if len(ranks) == tokenizer.LLAMA3_RANKS:
            break
        ranks.setdefault(token, len(ranks))
    return ranks


def rank_file_bytes(ranks):
    """ranks in tiktoken's file format, in rank order."""
    lines = (base64.b64encode(t) + b" %d\n" % r for t, r in sorted(ranks.items(), key=lambda i: i[1]))
    return b"".join(lines)


def write_llama3_files(folder, monkeypatch):
    """(tokenizer.model, tokenizer.json) in folder: a Llama-3-shaped rank
    file, and transformers' conversion of it with Llama 3's split pattern
    (its converter's default) and special tokens."""
    from transformers.convert_slow_tokenizer import TikTokenConverter
    rank_path, json_path = folder / "tokenizer.model", folder / "tokenizer.json"
    rank_path.write_bytes(rank_file_bytes(llama3_shaped_ranks()))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken's loader would cache the file by path
    special = list(tokenizer.llama3_special_tokens())
    TikTokenConverter(vocab_file=str(rank_path), extra_special_tokens=special).converted() \
        .save(str(json_path))
    return rank_path, json_path

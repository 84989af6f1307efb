"""pyllmc.tokenizer gives exactly tiktoken's GPT-2 tokens, offline."""
import base64
import hashlib
import os
import re
import shutil

import numpy as np
import pytest
import tiktoken

from pyllmc import tokenizer
from pyllmc.tokenizer import EOT, ParallelTokenizer, encode_documents, gpt2_encoding

R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
# OpenAI's original GPT-2 split regex (encoder.py), for the equivalence check
ORIGINAL_GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def sample_texts():
    import pydoc_data.topics
    prose = "".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))[:200_000]
    texts = [prose[i:i + 5000] for i in range(0, len(prose), 5000)]
    texts += [
        "", " ", "  \n\n  ", "a  b   c\t\td\r\n", "trailing spaces   ", "\n\n\nx\n\n",
        "it's I'LL we'Re don't 'tis ''", "12345678901234567890 3.14159 1,000,000",
        "naïve café résumé Ünïcödé", "東京は日本の首都です。", "emoji 🙂🚀👩‍👩‍👧 done",
        "\u00a0non-breaking\u2003spaces\u200b", "<|endoftext|> is just text here",
        "x" * 3000, "ab" * 1500 + " " * 500, "def f(x):\n    return x ** 2  # comment\n",
        "lone surrogate \ud800 inside",
    ]
    return texts


@pytest.fixture(scope="module")
def tiktoken_r50k(tmp_path_factory):
    """tiktoken's own r50k_base, built by tiktoken's registry from a cache
    folder holding our copy of the file (tiktoken checks its hash)."""
    cache = tmp_path_factory.mktemp("tiktoken_cache")
    shutil.copy(tokenizer.RANKS_PATH, cache / hashlib.sha1(R50K_URL.encode()).hexdigest())
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        from tiktoken import registry
        registry.ENCODINGS.pop("r50k_base", None)
        enc = tiktoken.get_encoding("r50k_base")
        registry.ENCODINGS.pop("r50k_base", None)
    finally:
        if old is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR")
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old
    return enc


def test_same_tokens_as_tiktoken(tiktoken_r50k):
    ours = gpt2_encoding()
    assert ours.n_vocab == tiktoken_r50k.n_vocab == 50257
    assert ours.eot_token == tiktoken_r50k.eot_token == EOT
    for text in sample_texts():
        assert ours.encode_ordinary(text) == tiktoken_r50k.encode_ordinary(text), text[:40]
        assert ours.encode(text, allowed_special="all") == \
            tiktoken_r50k.encode(text, allowed_special="all")
    for t in range(0, 50257, 97):
        assert ours.decode_single_token_bytes(t) == tiktoken_r50k.decode_single_token_bytes(t)


def test_same_splits_as_original_gpt2_regex():
    original = tiktoken.Encoding("gpt2-original-regex", pat_str=ORIGINAL_GPT2_PATTERN,
                                 mergeable_ranks=tokenizer.load_ranks(),
                                 special_tokens={"<|endoftext|>": EOT})
    for text in sample_texts():
        assert gpt2_encoding().encode_ordinary(text) == original.encode_ordinary(text)


def test_known_tokens():
    assert tokenizer.encode("Hello, I'm a language model,") == [15496, 11, 314, 1101, 257, 3303,
                                                                 2746, 11]
    assert tokenizer.encode("hello world") == [31373, 995]
    assert tokenizer.encode(" the") == [262]
    assert tokenizer.encode("<|endoftext|>") == [27, 91, 437, 1659, 5239, 91, 29]
    assert gpt2_encoding().encode("<|endoftext|>", allowed_special="all") == [EOT]
    assert tokenizer.decode([15496, 11, 314, 1101, 257, 3303, 2746, 11]) == \
        "Hello, I'm a language model,"
    assert tokenizer.decode(np.array([50256], dtype=np.uint16)) == "<|endoftext|>"


def test_encode_documents_and_parallel_map():
    texts = sample_texts()
    enc = gpt2_encoding()
    expected = []
    for text in texts:
        expected += [EOT] + enc.encode_ordinary(text)
    tokens, lengths = encode_documents(texts)
    assert tokens.dtype == np.uint16
    np.testing.assert_array_equal(tokens, expected)
    assert lengths.sum() == len(tokens) and lengths[0] == 1 + len(enc.encode_ordinary(texts[0]))
    # batches of odd sizes over 3 threads in chunks of 5 documents: same stream, same order
    batches = [texts[i:i + 7] for i in range(0, len(texts), 7)]
    chunks = list(ParallelTokenizer(num_threads=3, docs_per_chunk=5).map(iter(batches)))
    np.testing.assert_array_equal(np.concatenate([t for t, _ in chunks]), expected)
    np.testing.assert_array_equal(np.concatenate([n for _, n in chunks]), lengths)
    empty_tokens, empty_lengths = encode_documents([])
    assert len(empty_tokens) == 0 and len(empty_lengths) == 0


def test_damaged_rank_table_is_refused(tmp_path):
    bad = tmp_path / "gpt2.tiktoken"
    data = bytearray(open(tokenizer.RANKS_PATH, "rb").read())
    data[100] ^= 1
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="gpt2.tiktoken: sha256 .* damaged"):
        tokenizer.load_ranks(str(bad))


# ---- tiktoken rank files of other vocabularies (Llama 3's tokenizer.model) ----

def test_llama3_rank_file_tokenizes_as_transformers_converts_it(llama3_tokenizer_files):
    """Our reading of a Llama-3-shaped rank file against transformers'
    conversion of the same file (its Llama 3 split pattern, Hugging Face's
    BPE): the same tokens, the same text back, the special tokens at Llama
    3's ids."""
    import tokenizers
    rank_path, json_path = llama3_tokenizer_files
    ours = tokenizer.load_tokenizer(rank_path)
    hf = tokenizers.Tokenizer.from_file(str(json_path))
    assert ours.vocab_size == 128_256 and ours.wide and ours.eot == 128_000
    assert ours.name == str(rank_path)
    texts = [t for t in sample_texts() if "\ud800" not in t]  # HF takes no lone surrogates
    for text in texts:
        ids = ours.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False).ids, text[:40]
        assert ours.decode(ids) == text
    special = {128_000: "<|begin_of_text|>", 128_001: "<|end_of_text|>",
               128_002: "<|reserved_special_token_0|>", 128_006: "<|start_header_id|>",
               128_007: "<|end_header_id|>", 128_008: "<|reserved_special_token_4|>",
               128_009: "<|eot_id|>", 128_255: "<|reserved_special_token_250|>"}
    for i, text in special.items():
        assert ours.decode([i]) == text == hf.id_to_token(i)
    assert [ours.decode([i]) for i in range(128_000, 128_256)] == \
        [hf.id_to_token(i) for i in range(128_000, 128_256)]
    # Llama 3's pattern, not GPT-2's: digits in groups of three
    assert [ours.decode([t]) for t in ours.encode("1234567")] == ["123", "456", "7"]
    assert ours.encode("<|eot_id|>") != [128_009]  # special tokens in text are plain text
    tokens, lengths = ours.encode_documents(["a b", "", "東京"])
    assert tokens.dtype == np.uint32 and list(lengths) == [3, 1, 1 + len(ours.encode("東京"))]
    assert list(tokens[:4]) == [128_000, *ours.encode("a b"), 128_000]
    # the same vocabulary from its tokenizer.json: the same Tokenizer
    from_json = tokenizer.load_tokenizer(json_path)
    assert (from_json.vocab_size, from_json.eot) == (ours.vocab_size, ours.eot)
    assert from_json.encode(texts[0]) == ours.encode(texts[0])


def test_gpt2_rank_file_is_the_gpt2_tokenizer(tmp_path):
    copy = tmp_path / "r50k_base.tiktoken"
    shutil.copy(tokenizer.RANKS_PATH, copy)
    tok = tokenizer.load_tokenizer(copy)
    assert tok is tokenizer.load_tokenizer()  # named "gpt2": fineweb's progress files match
    assert tok.vocab_size == 50257 and tok.eot == EOT and not tok.wide


def small_table():
    """A valid table of 256 bytes and 3 merges: (token, rank) pairs."""
    pairs = [(bytes([b]), b) for b in range(256)]
    return pairs + [(b"ab", 256), (b"abc", 257), (b" a", 258)]


def table_text(pairs):
    return b"".join(base64.b64encode(t) + b" %d\n" % r for t, r in pairs)


BAD_TABLES = {
    "truncated mid-line": (table_text(small_table())[:-6], r"line 259 is b'IGE', expected"),
    "not base64": (table_text(small_table()).replace(b"YWI=", b"Y*I="), r"line 257 is b'Y\*I= 256'"),
    "three fields": (table_text(small_table()) + b"YWJj 259 x\n", "line 260 is"),
    "negative rank": (table_text(small_table()[:-1] + [(b" a", -1)]), "line 259 is"),
    "duplicate rank": (table_text(small_table()[:-1] + [(b" a", 7)]), r"line 259 repeats rank 7 \(line 8\)"),
    "duplicate token": (table_text(small_table() + [(b"ab", 259)]),
                        "line 260 repeats the token of rank 256"),
    "gap": (table_text(small_table()[:-1] + [(b" a", 300)]),
            r"259 tokens but none of rank 258; ranks must be 0..258, each once"),
    "a byte missing": (table_text([(t, r - (r > 65)) for t, r in small_table() if t != b"A"]),
                       "no token for the single byte 0x41"),
    "huge line": (table_text(small_table()) + b"QQ" * 600 + b" 259\n",
                  "line 260 is 1,204 bytes long; a rank line is at most 1,024"),
    "unknown size": (table_text(small_table()),
                     "a tiktoken rank file of 259 ranks; llmc knows the split pattern and special "
                     "tokens of GPT-2's \\(50,256 ranks\\) and Llama 3's \\(128,000\\)"),
    "empty": (b"\n\n", "no ranks in it"),
    "binary": (bytes(range(256)) * 8, "line 1 is .*not a tiktoken rank file"),
    "bad json": (b'  {"model": ', "not a tokenizer.json"),
    "not utf-8 json": (b'{"model": "\xff"}', "not a tokenizer.json"),
}


@pytest.mark.parametrize("case", BAD_TABLES)
def test_bad_tokenizer_files_give_one_line_errors(case, tmp_path):
    data, message = BAD_TABLES[case]
    path = tmp_path / "tokenizer.model"
    path.write_bytes(data)
    with pytest.raises(tokenizer.TokenizerError, match=f"^{re.escape(str(path))}: {message}") as e:
        tokenizer.load_tokenizer(path)
    assert "\n" not in str(e.value)


def test_tokenizer_paths_that_are_not_files(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # opening it for reading would wait for a writer
    for name, message in [("fifo", "is a FIFO"), (".", "is a directory"),
                          ("missing", "No such file")]:
        with pytest.raises(tokenizer.TokenizerError, match=message):
            tokenizer.load_tokenizer(tmp_path / name)


def test_a_gpt2_sized_table_of_other_tokens_is_refused(tmp_path):
    ranks = tokenizer.load_ranks()
    first, second = b"!", b"\""  # swap two single bytes' ranks: GPT-2's size, other table
    ranks[first], ranks[second] = ranks[second], ranks[first]
    (tmp_path / "t.tiktoken").write_bytes(table_text(ranks.items()))
    with pytest.raises(tokenizer.TokenizerError, match="50,256 ranks, as GPT-2's r50k_base, but other"):
        tokenizer.load_tokenizer(tmp_path / "t.tiktoken")


def test_a_file_too_large_to_be_a_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setattr(tokenizer, "MAX_TOKENIZER_BYTES", 1000)
    (tmp_path / "model.bin").write_bytes(b"\0" * 1001)
    with pytest.raises(tokenizer.TokenizerError, match="model.bin: larger than"):
        tokenizer.load_tokenizer(tmp_path / "model.bin")

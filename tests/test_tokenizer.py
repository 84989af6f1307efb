"""pyllmc.tokenizer gives exactly tiktoken's GPT-2 tokens, offline."""
import hashlib
import os
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

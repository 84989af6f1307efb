"""
GPT-2's BPE tokenizer, built offline from the rank table this package carries.

gpt2.tiktoken is OpenAI's r50k_base rank table (MIT, see
gpt2.tiktoken.LICENSE), byte-identical to the file tiktoken downloads, so the
encoding built here gives exactly the tokens of tiktoken.get_encoding("gpt2")
without touching the network.

For bulk work (data preparation) ParallelTokenizer encodes many documents on
all cores at once: tiktoken's Rust core releases the GIL, so plain threads
run in parallel with no pickling and no worker processes.

Another vocabulary (a Llama 3 model's, say) comes from a local tokenizer.json
(Hugging Face's format, read by the `tokenizers` package that transformers
installs; the machines have no network): load_tokenizer(path) gives a
Tokenizer with the same methods, GPT-2's when path is None.
"""
import base64
import collections
import functools
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tiktoken

RANKS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpt2.tiktoken")
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# GPT-2's split pattern in the possessive form tiktoken uses for r50k_base/gpt2:
# the same splits as OpenAI's original regex, found faster.
GPT2_PATTERN = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++"""
                r"""|\s++$|\s+(?!\S)|\s""")
EOT = 50256  # <|endoftext|>
VOCAB_SIZE = 50257


def load_ranks(path=RANKS_PATH):
    """The BPE merge ranks {token bytes: rank} from a .tiktoken file, checked
    against the known hash so a damaged copy fails loudly."""
    with open(path, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != RANKS_SHA256:
        raise ValueError(f"{path}: sha256 {digest} is not GPT-2's rank table ({RANKS_SHA256}); "
                         "the file is damaged")
    ranks = {}
    for line in data.splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.lru_cache(maxsize=1)
def gpt2_encoding():
    """The GPT-2 tiktoken.Encoding (50,257 tokens, <|endoftext|> = 50256)."""
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=load_ranks(),
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=VOCAB_SIZE)


def encode(text):
    """Token ids of text as a list; special tokens are treated as plain text."""
    return gpt2_encoding().encode_ordinary(text)


def decode(tokens):
    """Text of token ids; bytes that are not valid UTF-8 become U+FFFD."""
    return gpt2_encoding().decode([int(t) for t in tokens])


def decode_bytes(tokens):
    """The bytes of token ids, for text that arrives a token at a time; ids
    the tokenizer lacks (a model's vocabulary may be larger) give none."""
    enc = gpt2_encoding()
    return b"".join(enc.decode_single_token_bytes(int(t)) for t in tokens if 0 <= t < enc.n_vocab)


def encode_documents(texts):
    """Tokens of documents as they go into a shard: each document prefixed by
    <|endoftext|>, then its ordinary encoding. Returns (tokens as uint16,
    number of tokens of each document, its <|endoftext|> included)."""
    enc = gpt2_encoding()
    eot = np.array([EOT], dtype=np.uint32)
    pieces, lengths = [], np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        try:
            # a buffer straight from Rust: no Python list of ints in between
            ids = enc.encode_to_numpy(text, disallowed_special=())
        except UnicodeEncodeError:
            # lone surrogates: tiktoken's encode_ordinary replaces them first
            ids = np.array(enc.encode_ordinary(text), dtype=np.uint32)
        pieces += (eot, ids)
        lengths[i] = 1 + len(ids)
    tokens = np.concatenate(pieces).astype(np.uint16) if pieces else np.zeros(0, np.uint16)
    return tokens, lengths


def usable_cores():
    """Cores this process may run on (fewer than the machine's under a CPU mask)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# Tokens that start a document in a tokenizer.json's vocabulary, in the order
# they are looked for: Llama 3's begin-of-text (what llm.c's llama3 data
# scripts put before each document), GPT-2's end-of-text, then others' usual ones.
DOCUMENT_TOKENS = ("<|begin_of_text|>", "<|endoftext|>", "<|end_of_text|>", "<s>", "</s>")


class TokenizerError(ValueError):
    """A tokenizer file that cannot be used, told in one line."""


class Tokenizer:
    """A vocabulary: encode/decode, the token that starts each document in a
    shard (eot), vocab_size, and whether shards need uint32 (wide)."""

    def __init__(self, name, vocab_size, eot, encode, decode, encode_batch):
        self.name, self.vocab_size, self.eot = name, vocab_size, eot
        self.encode, self.decode, self._encode_batch = encode, decode, encode_batch
        self.wide = vocab_size > 65536
        self.dtype = np.uint32 if self.wide else np.uint16

    def encode_documents(self, texts):
        """As the module's encode_documents, in this vocabulary."""
        if self._encode_batch is None:  # GPT-2
            return encode_documents(texts)
        ids = self._encode_batch(texts)
        lengths = np.array([1 + len(t) for t in ids], dtype=np.int64)
        pieces = [p for t in ids for p in ([self.eot], t)]
        tokens = np.fromiter((x for p in pieces for x in p), dtype=self.dtype,
                             count=int(lengths.sum()))
        return tokens, lengths


def load_tokenizer(path=None):
    """GPT-2's Tokenizer (path None), or a local tokenizer.json's."""
    if path is None:
        return Tokenizer("gpt2", VOCAB_SIZE, EOT, encode, decode, None)
    try:
        import tokenizers
    except ImportError:
        raise TokenizerError(f"{path}: reading a tokenizer.json needs the tokenizers package "
                         "(pip install tokenizers; transformers installs it)") from None
    try:
        tok = tokenizers.Tokenizer.from_file(os.fspath(path))
    except Exception as e:  # the package raises its own exception types
        raise TokenizerError(f"{path}: not a tokenizer.json that the tokenizers package reads ({e})") from None
    vocab = tok.get_vocab(with_added_tokens=True)
    eot = next((vocab[t] for t in DOCUMENT_TOKENS if t in vocab), None)
    if eot is None:
        raise TokenizerError(f"{path}: none of {', '.join(DOCUMENT_TOKENS)} in the vocabulary: no "
                         "token to start documents with")
    vocab_size = max(vocab.values()) + 1
    return Tokenizer(os.fspath(path), vocab_size, eot,
                     lambda text: tok.encode(text, add_special_tokens=False).ids,
                     lambda ids: tok.decode([int(t) for t in ids], skip_special_tokens=False),
                     lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)])


class ParallelTokenizer:
    """encode_documents over a stream of text batches, on num_threads threads,
    results in input order. At most `lookahead` chunks are in flight, so memory
    stays flat however long the stream is. tokenizer: a Tokenizer (GPT-2's
    when None)."""

    def __init__(self, num_threads=None, docs_per_chunk=64, tokenizer=None):
        self.num_threads = num_threads or usable_cores()
        self.docs_per_chunk = docs_per_chunk
        self.lookahead = 4 * self.num_threads
        self.tokenizer = tokenizer or load_tokenizer()

    def map(self, text_batches):
        """Yield (tokens, document lengths) for consecutive chunks of the
        documents in text_batches (an iterable of lists of str)."""
        gpt2_encoding()  # build it once, before the threads start
        encode_chunk = self.tokenizer.encode_documents
        pending = collections.deque()
        with ThreadPoolExecutor(self.num_threads) as pool:
            for texts in text_batches:
                for i in range(0, len(texts), self.docs_per_chunk):
                    pending.append(pool.submit(encode_chunk, texts[i:i + self.docs_per_chunk]))
                    while len(pending) > self.lookahead:
                        yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()


def byte_to_unicode():
    """GPT-2's printable stand-in for each byte, as its vocab.json and
    merges.txt spell tokens: printable Latin-1 bytes are themselves, the
    others map to U+0100 upwards in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _split_by_merges(token, ranks, below):
    """The two parts that the last BPE merge joined into token: BPE run on
    its bytes with only the merges ranked below `below`."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best = min(range(len(parts) - 1),
                   key=lambda i: ranks.get(parts[i] + parts[i + 1], below))
        if ranks.get(parts[best] + parts[best + 1], below) >= below:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    return parts


def hf_tokenizer_files(max_length):
    """{file name: bytes} of GPT-2's tokenizer as Hugging Face reads it
    (vocab.json, merges.txt and the configs AutoTokenizer needs), built from
    the carried rank table: a model folder with them tokenizes offline."""
    ranks = load_ranks()
    spell = byte_to_unicode()
    word = lambda token: "".join(spell[b] for b in token)  # noqa: E731
    vocab = {word(token): rank for token, rank in ranks.items()}
    vocab["<|endoftext|>"] = EOT
    merges = ["#version: 0.2"]
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:  # ranks of merged tokens are the order of merges
            first, second = _split_by_merges(token, ranks, rank)
            merges.append(f"{word(first)} {word(second)}")
    special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": max_length,
              "add_prefix_space": False, **special}
    return {"vocab.json": json.dumps(vocab, ensure_ascii=False).encode(),
            "merges.txt": ("\n".join(merges) + "\n").encode(),
            "tokenizer_config.json": json.dumps(config, indent=2).encode(),
            "special_tokens_map.json": json.dumps(special, indent=2).encode()}

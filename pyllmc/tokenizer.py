"""
GPT-2's BPE tokenizer, built offline from the rank table this package carries.

gpt2.tiktoken is OpenAI's r50k_base rank table (MIT, see
gpt2.tiktoken.LICENSE), byte-identical to the file tiktoken downloads, so the
encoding built here gives exactly the tokens of tiktoken.get_encoding("gpt2")
without touching the network.

For bulk work (data preparation) ParallelTokenizer encodes many documents on
all cores at once: tiktoken's Rust core releases the GIL, so plain threads
run in parallel with no pickling and no worker processes.

Another vocabulary (a Llama 3 model's, say) comes from a local file (the
machines have no network): load_tokenizer(path) gives a Tokenizer with the
same methods, GPT-2's when path is None. The file is either a tokenizer.json
(Hugging Face's format, read by the `tokenizers` package that transformers
installs) or a tiktoken rank file (Llama 3's original/tokenizer.model), told
apart by their content.
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

from .files import open_regular, os_error_message

RANKS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpt2.tiktoken")
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# GPT-2's split pattern in the possessive form tiktoken uses for r50k_base/gpt2:
# the same splits as OpenAI's original regex, found faster.
GPT2_PATTERN = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++"""
                r"""|\s++$|\s+(?!\S)|\s""")
EOT = 50256  # <|endoftext|>
VOCAB_SIZE = 50257


# Llama 3's tiktoken rank file (original/tokenizer.model of Meta's
# checkpoints): 128,000 ranks, then 256 special tokens that the file does not
# hold, numbered on from 128,000. Its split pattern is cl100k_base's in the
# form Meta's tokenizer states it (tokenizer.json files of Llama 3 split alike).
LLAMA3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
                  r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
LLAMA3_RANKS = 128_000
LLAMA3_NUM_SPECIAL = 256
# the special tokens with a name, by offset from LLAMA3_RANKS; the others are
# <|reserved_special_token_N|>, N counting up in id order
LLAMA3_NAMED_SPECIAL = {0: "begin_of_text", 1: "end_of_text", 6: "start_header_id",
                        7: "end_header_id", 9: "eot_id"}
# A tokenizer file is read whole: anything larger is not one (Llama 3's
# tokenizer.json is 9 MB, its rank file 2 MB), e.g. a model file given by mistake.
MAX_TOKENIZER_BYTES = 256 << 20
# "<base64 token> <rank>": real tokens are at most a few hundred bytes
MAX_RANK_LINE_BYTES = 1024


def parse_ranks(data, where):
    """The BPE merge ranks {token bytes: rank} of a tiktoken rank file's
    bytes, checked: every line "<base64 token bytes> <rank>" (blank lines
    skipped), no token twice, ranks exactly 0..n-1, and every single byte a
    token (tiktoken cannot encode text with a byte it lacks)."""
    ranks, line_of_rank = {}, {}
    for number, line in enumerate(data.split(b"\n"), 1):
        if len(line) > MAX_RANK_LINE_BYTES:
            raise TokenizerError(f"{where}: line {number} is {len(line):,} bytes long; a rank "
                                 f"line is at most {MAX_RANK_LINE_BYTES:,} (not a tiktoken rank file?)")
        fields = line.split()
        if not fields:
            continue
        try:
            token, rank = fields  # ValueError unless two fields
            token = base64.b64decode(token, validate=True)  # binascii.Error is a ValueError
            if not rank.isdigit():
                raise ValueError
        except ValueError:
            raise TokenizerError(f"{where}: line {number} is {line[:60]!r}, expected "
                                 "'<base64 token bytes> <rank>' (not a tiktoken rank file?)") from None
        rank = int(rank)
        if token in ranks:
            raise TokenizerError(f"{where}: line {number} repeats the token of rank {ranks[token]}")
        if rank in line_of_rank:
            raise TokenizerError(f"{where}: line {number} repeats rank {rank} "
                                 f"(line {line_of_rank[rank]})")
        ranks[token], line_of_rank[rank] = rank, number
    if not ranks:
        raise TokenizerError(f"{where}: no ranks in it (empty?), not a tiktoken rank file")
    missing = next((r for r in range(len(ranks)) if r not in line_of_rank), None)
    if missing is not None:
        raise TokenizerError(f"{where}: {len(ranks):,} tokens but none of rank {missing}; "
                             f"ranks must be 0..{len(ranks) - 1:,}, each once")
    lacking = next((b for b in range(256) if bytes([b]) not in ranks), None)
    if lacking is not None:
        raise TokenizerError(f"{where}: no token for the single byte {lacking:#04x}; a BPE rank "
                             "table needs all 256")
    return ranks


def load_ranks(path=RANKS_PATH, sha256=RANKS_SHA256):
    """The checked ranks (parse_ranks) of a .tiktoken file; with sha256 (by
    default GPT-2's, for the carried table) the file's hash must match, so a
    damaged copy fails loudly."""
    data = read_tokenizer_file(path)
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise TokenizerError(f"{path}: sha256 {digest} is not GPT-2's rank table ({sha256}); "
                             "the file is damaged")
    return parse_ranks(data, path)


def read_tokenizer_file(path):
    """The bytes of a tokenizer file; TokenizerError if it is not a regular
    file, cannot be read, or is too large to be one."""
    try:
        with open_regular(path) as f:
            data = f.read(MAX_TOKENIZER_BYTES + 1)
    except OSError as e:
        raise TokenizerError(os_error_message(e) if e.filename else str(e)) from None
    if len(data) > MAX_TOKENIZER_BYTES:
        raise TokenizerError(f"{path}: larger than {MAX_TOKENIZER_BYTES >> 20} MiB, so not a "
                             "tokenizer.json or tiktoken rank file")
    return data


def llama3_special_tokens():
    """{text: id} of Llama 3's 256 special tokens."""
    special, reserved = {}, 0
    for offset in range(LLAMA3_NUM_SPECIAL):
        name = LLAMA3_NAMED_SPECIAL.get(offset)
        if name is None:
            name, reserved = f"reserved_special_token_{reserved}", reserved + 1
        special[f"<|{name}|>"] = LLAMA3_RANKS + offset
    return special


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
    return load_tokenizer().encode_documents(texts)


def tiktoken_ids(enc, text):
    """The ordinary encoding of text (special tokens are plain text) as a
    uint32 array: a buffer straight from Rust, no Python list of ints."""
    try:
        return enc.encode_to_numpy(text, disallowed_special=())
    except UnicodeEncodeError:
        # lone surrogates: tiktoken's encode_ordinary replaces them first
        return np.array(enc.encode_ordinary(text), dtype=np.uint32)


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
    shard (eot), vocab_size, and whether shards need uint32 (wide).
    encode_batch(texts) gives each text's ordinary token ids (arrays or lists)."""

    def __init__(self, name, vocab_size, eot, encode, decode, encode_batch):
        self.name, self.vocab_size, self.eot = name, vocab_size, eot
        self.encode, self.decode, self._encode_batch = encode, decode, encode_batch
        self.wide = vocab_size > 65536
        self.dtype = np.uint32 if self.wide else np.uint16

    def encode_documents(self, texts):
        """Tokens of documents as they go into a shard, each prefixed by eot:
        (tokens as self.dtype, number of tokens of each document, its eot
        included)."""
        eot = np.array([self.eot], dtype=self.dtype)
        pieces, lengths = [], np.empty(len(texts), dtype=np.int64)
        for i, ids in enumerate(self._encode_batch(texts)):
            pieces += (eot, np.asarray(ids, dtype=self.dtype))
            lengths[i] = 1 + len(ids)
        tokens = np.concatenate(pieces) if pieces else np.zeros(0, self.dtype)
        return tokens, lengths


def tiktoken_tokenizer(name, enc, eot):
    """A Tokenizer over a tiktoken.Encoding."""
    return Tokenizer(name, enc.n_vocab, eot, enc.encode_ordinary,
                     lambda ids: enc.decode([int(t) for t in ids]),
                     lambda texts: [tiktoken_ids(enc, text) for text in texts])


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer():
    return tiktoken_tokenizer("gpt2", gpt2_encoding(), EOT)


def load_tokenizer(path=None):
    """GPT-2's Tokenizer (path None), or a local file's: a tokenizer.json, or
    a tiktoken rank file (GPT-2's or Llama 3's). TokenizerError, naming the
    file, for anything else."""
    if path is None:
        return gpt2_tokenizer()
    data = read_tokenizer_file(path)
    if data.lstrip()[:1] == b"{":  # JSON; a rank line starts with base64
        return json_tokenizer(os.fspath(path), data)
    return rank_file_tokenizer(os.fspath(path), data)


def rank_file_tokenizer(path, data):
    """The Tokenizer of a tiktoken rank file's bytes. The file holds only the
    ranks, so the split pattern and special tokens come from knowing the
    table by its size: GPT-2's (checked to be it) or Llama 3's."""
    ranks = parse_ranks(data, path)
    if len(ranks) == EOT:
        if ranks != load_ranks():
            raise TokenizerError(f"{path}: {EOT:,} ranks, as GPT-2's r50k_base, but other tokens")
        return gpt2_tokenizer()
    if len(ranks) == LLAMA3_RANKS:
        special = llama3_special_tokens()
        enc = tiktoken.Encoding(path, pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                                special_tokens=special)
        return tiktoken_tokenizer(path, enc, special["<|begin_of_text|>"])
    raise TokenizerError(f"{path}: a tiktoken rank file of {len(ranks):,} ranks; llmc knows the split "
                         f"pattern and special tokens of GPT-2's ({EOT:,} ranks) and Llama 3's "
                         f"({LLAMA3_RANKS:,}); for another vocabulary give its tokenizer.json")


def json_tokenizer(path, data):
    """The Tokenizer of a tokenizer.json's bytes."""
    try:
        import tokenizers
    except ImportError:
        raise TokenizerError(f"{path}: reading a tokenizer.json needs the tokenizers package "
                             "(pip install tokenizers; transformers installs it)") from None
    try:
        tok = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # the package raises its own exception types
        raise TokenizerError(f"{path}: not a tokenizer.json that the tokenizers package reads "
                             f"({e})") from None
    vocab = tok.get_vocab(with_added_tokens=True)
    eot = next((vocab[t] for t in DOCUMENT_TOKENS if t in vocab), None)
    if eot is None:
        raise TokenizerError(f"{path}: none of {', '.join(DOCUMENT_TOKENS)} in the vocabulary: no "
                             "token to start documents with")
    vocab_size = max(vocab.values()) + 1
    return Tokenizer(path, vocab_size, eot,
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

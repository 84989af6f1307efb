"""
Token shards in llm.c's format, and the data loaders that train from them.

A shard is a 256-int32 header (magic 20240520, version 1, token count)
followed by the tokens as uint16; for vocabularies beyond uint16 (Llama 3's
128,256 tokens), llm.c's llama3 branch's shard (magic 20240801, version 7)
holds them as uint32. Documents are separated by (start with) the
tokenizer's document token, <|endoftext|> for GPT-2.
Files written by llm.c's data scripts, and the pre-tokenized FineWeb shards
people download, read here unchanged; files written here read in llm.c.
"""
import glob
import os

import numpy as np

from .files import NotRegularFileError, open_regular, write_atomic

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
WIDE_SHARD_MAGIC = 20240801  # llm.c's llama3 branch: uint32 tokens
WIDE_SHARD_VERSION = 7
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
WIDE_TOKEN_DTYPE = np.dtype("<u4")
# (magic, version) -> token dtype
FORMATS = {(SHARD_MAGIC, SHARD_VERSION): TOKEN_DTYPE,
           (WIDE_SHARD_MAGIC, WIDE_SHARD_VERSION): WIDE_TOKEN_DTYPE}
MAX_TOKENS = 2**31 - 1  # llm.c keeps the count in an int32
VAL_FRACTION = 0.1  # of a small corpus held out for validation, from its start


class ShardError(ValueError):
    """A shard file that is missing, malformed, or too small for the job."""


def write_shard(path, tokens, wide=False):
    """Write tokens (any integer array-like with values in 0..65535, or with
    wide in 0..2^32-1: llm.c's uint32 shard) as one shard, atomically."""
    tokens = np.asarray(tokens)
    dtype = WIDE_TOKEN_DTYPE if wide else TOKEN_DTYPE
    if tokens.ndim != 1:
        raise ValueError(f"{path}: tokens must be 1-D, got shape {tokens.shape}")
    if len(tokens) > MAX_TOKENS:
        raise ValueError(f"{path}: {len(tokens)} tokens is more than a shard holds ({MAX_TOKENS})")
    if tokens.dtype != dtype:
        high = np.iinfo(dtype).max
        if len(tokens) and (tokens.min() < 0 or tokens.max() > high):
            raise ValueError(f"{path}: token ids must be in 0..{high} to fit {dtype.name}, "
                             f"got {tokens.min()}..{tokens.max()}" +
                             ("" if wide else " (a vocabulary beyond uint16 needs wide shards)"))
        tokens = tokens.astype(dtype)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:2] = (WIDE_SHARD_MAGIC, WIDE_SHARD_VERSION) if wide else (SHARD_MAGIC, SHARD_VERSION)
    header[2] = len(tokens)
    write_atomic(path, [header.tobytes(), memoryview(np.ascontiguousarray(tokens)).cast("B")])


def read_shard_header(path):
    """Return the token count of the shard at path after checking its header
    against the file's size; raise ShardError naming the file otherwise."""
    return read_shard_format(path)[0]


def read_shard_format(path):
    """(token count, token dtype) of the shard at path, checked as
    read_shard_header checks it."""
    path = os.fspath(path)
    try:
        with open_regular(path) as f:
            raw = f.read(HEADER_BYTES)
            size = os.fstat(f.fileno()).st_size
    except NotRegularFileError as e:
        raise ShardError(str(e)) from None
    except OSError as e:
        raise ShardError(f"{path}: cannot read shard: {e.strerror}") from None
    if len(raw) < HEADER_BYTES:
        raise ShardError(f"{path}: {size} bytes is too short for a shard "
                         f"(header alone is {HEADER_BYTES} bytes)")
    magic, version, count = np.frombuffer(raw, dtype="<i4", count=3).tolist()
    if magic not in (SHARD_MAGIC, WIDE_SHARD_MAGIC):
        raise ShardError(f"{path}: not a token shard (magic {magic}, expected {SHARD_MAGIC} or "
                         f"{WIDE_SHARD_MAGIC})")
    dtype = FORMATS.get((magic, version))
    if dtype is None:
        raise ShardError(f"{path}: shard version {version} is not supported (expected "
                         f"{SHARD_VERSION}: uint16 tokens, or {WIDE_SHARD_VERSION} for magic "
                         f"{WIDE_SHARD_MAGIC}: uint32 tokens)")
    expected = HEADER_BYTES + dtype.itemsize * count
    if count < 0 or size != expected:
        raise ShardError(f"{path}: header says {count} tokens ({expected} bytes) "
                         f"but the file has {size} bytes")
    return count, dtype


def read_shard(path):
    """The tokens of a shard as a read-only memory-mapped uint16 (or uint32) array."""
    count, dtype = read_shard_format(path)
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


def find_shards(pattern, split="train"):
    """Sorted paths matching a glob pattern, or a single file, or a folder's
    shards of one split: its *_val_*.bin files for "val", its other *.bin
    files for "train" (so that training never sees the validation shard of
    a folder prepared by data_prep/fineweb.py); ShardError when nothing matches."""
    pattern = os.path.expanduser(os.fspath(pattern))
    if os.path.isdir(pattern):
        shards = sorted(p for p in glob.glob(os.path.join(pattern, "*.bin")) if os.path.isfile(p))
        paths = [p for p in shards if ("_val_" in os.path.basename(p)) == (split == "val")]
        if not paths:
            raise ShardError(f"no {split} shards in the folder {pattern}"
                             + (" (validation shards have _val_ in their names)"
                                if split == "val" else ""))
        return paths
    paths = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
    if not paths:
        raise ShardError(f"no shard files match {pattern!r}")
    return paths


class DataLoader:
    """(inputs, targets) batches of shape (B, T) from shards, as llm.c reads them.

    Each shard is cut into windows of B*T tokens taken at offsets 0, B*T,
    2*B*T, ...; a window's inputs are its B*T tokens and its targets the same
    run shifted by one, so a window needs B*T+1 tokens and the last B*T
    tokens' worth of a shard's tail may go unused. Shards are visited in
    sorted order and the loader wraps around at the end (a new epoch).

    With shuffle=True the order of the shards and of the windows inside each
    shard is a permutation drawn from (seed, epoch), so it is the same on every
    run and after every resume.

    The position is (epoch, shard, window) and round-trips through state()
    and load_state() for an exact resume. split says which shards a folder
    given as pattern stands for (see find_shards).
    """

    def __init__(self, pattern, B, T, shuffle=False, seed=0, split="train"):
        if B < 1 or T < 1:
            raise ValueError(f"batch size and sequence length must be >= 1, got B={B} T={T}")
        self.paths = find_shards(pattern, split)
        self.B, self.T = B, T
        self.shuffle, self.seed = shuffle, seed
        self.num_tokens = [read_shard_header(p) for p in self.paths]
        self.windows = [max(0, (n - 1) // (B * T)) for n in self.num_tokens]
        if sum(self.windows) == 0:
            most = max(self.num_tokens)
            raise ShardError(
                f"{pattern!r}: too little data for one batch of B={B} x T={T}: needs "
                f"{B * T + 1} tokens in one shard, the largest of {len(self.paths)} "
                f"shard(s) holds {most}")
        self._tokens = None
        self._loaded = None
        self.load_state({"epoch": 0, "shard": 0, "window": 0})

    @property
    def windows_per_epoch(self):
        return sum(self.windows)

    def _shard_order(self):
        order = np.arange(len(self.paths))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        return order

    def _window_order(self, shard_id):
        order = np.arange(self.windows[shard_id])
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, 1 + int(shard_id)])
            order = rng.permutation(order)
        return order

    def _enter_shard(self):
        """Skip shards with no whole window, wrapping into the next epoch."""
        while True:
            if self.shard == len(self.paths):
                self.epoch, self.shard, self.window = self.epoch + 1, 0, 0
                self._order = self._shard_order()
            shard_id = self._order[self.shard]
            if self.window < self.windows[shard_id]:
                break
            self.shard, self.window = self.shard + 1, 0
        if self._loaded != (self.epoch, self.shard):
            self._tokens = read_shard(self.paths[shard_id])
            self._windows = self._window_order(shard_id)
            self._loaded = (self.epoch, self.shard)

    def next_batch(self):
        """The next (inputs, targets), each an int32 array of shape (B, T)."""
        self._enter_shard()
        n = self.B * self.T
        start = int(self._windows[self.window]) * n
        buf = np.asarray(self._tokens[start:start + n + 1], dtype=np.int32)
        self.window += 1
        return buf[:-1].reshape(self.B, self.T), buf[1:].reshape(self.B, self.T)

    def skip(self, n):
        """Moves past the next n batches without reading them."""
        for _ in range(n):
            self._enter_shard()
            self.window += 1

    def state(self):
        """The position, as plain ints (JSON-ready)."""
        return {"epoch": int(self.epoch), "shard": int(self.shard), "window": int(self.window)}

    def load_state(self, state):
        epoch, shard, window = (int(state[k]) for k in ("epoch", "shard", "window"))
        if not (0 <= epoch < 2**53 and 0 <= shard <= len(self.paths) and window >= 0):
            raise ShardError(f"data position {state} does not fit {len(self.paths)} shard(s)")
        self.epoch, self.shard, self.window = epoch, shard, window
        self._order = self._shard_order()
        if shard < len(self.paths) and window > self.windows[self._order[shard]]:
            raise ShardError(f"data position {state}: shard {shard} of this epoch has "
                             f"{self.windows[self._order[shard]]} batches")
        self._loaded = None

    def position(self):
        """Batches read since the start of epoch 0 (the same for every way
        of reaching it): where a resumed run must be after its steps."""
        before = sum(self.windows[i] for i in self._order[:self.shard])
        return self.epoch * self.windows_per_epoch + before + self.window


def val_batches(pattern, B, T, max_batches):
    """The validation batches: the first max_batches windows in shard order
    (fewer if the data holds fewer), the same on every call, as llm.c's val
    loader after a reset. Returns a list of (inputs, targets)."""
    loader = DataLoader(pattern, B, T, split="val")
    count = min(max_batches, loader.windows_per_epoch)
    return [loader.next_batch() for _ in range(count)]

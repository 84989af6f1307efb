"""
Reading a safetensors file as a user may hand it over: damaged, truncated or
crafted.

The format is an 8-byte little-endian header length, a JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": ...}
and the data the offsets point into. Everything in the header is checked
against the file before any tensor is read: a regular file (no FIFO or
device, which could block or never end), a header that fits, offsets inside
the data that do not overlap, sizes that match shape and dtype, one entry per
name. Tensors are then read one at a time through the same descriptor, so a
file is never read twice and never whole.
"""
import json
import math
import os

import numpy as np

from .files import open_regular

# safetensors dtypes that hold real numbers; None: bf16, which numpy lacks
FLOAT_DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
                "BF16": None}
OTHER_DTYPES = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
HEADER_LIMIT = 100 << 20  # the reference implementation's limit


class SafetensorsError(ValueError):
    """A safetensors file that is damaged or not what it claims, in one line."""


def unique_keys(pairs):
    """json object_pairs_hook: a name given twice is ambiguous, not a choice."""
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"the name {key!r} appears twice")
        obj[key] = value
    return obj


def _is_count(x):
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


class SafetensorsFile:
    """An open safetensors file: `entries` maps each tensor's name to
    (dtype, shape, begin, end) as checked; read(name) gives it as float32."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.file = open_regular(path)
        try:
            self.entries, self.data_start = self._read_header()
        except BaseException:
            self.file.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def _fail(self, problem):
        raise SafetensorsError(f"{self.path}: {problem}")

    def _read_header(self):
        size = os.fstat(self.file.fileno()).st_size
        prefix = self.file.read(8)
        if len(prefix) < 8:
            self._fail(f"{size} bytes, too short for the 8-byte header length")
        length = int.from_bytes(prefix, "little")
        if length > min(size - 8, HEADER_LIMIT):
            self._fail(f"the header claims {length} bytes, but the file has {size - 8} after the "
                       f"length (and headers are limited to {HEADER_LIMIT} bytes)")
        try:
            header = json.loads(self.file.read(length).decode("utf-8"), object_pairs_hook=unique_keys)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            self._fail(f"the header is not JSON ({type(e).__name__}: {e})")
        if not isinstance(header, dict):
            self._fail(f"the header is a JSON {type(header).__name__}, expected an object")
        data_size = size - 8 - length
        entries = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            entries[name] = self._check_entry(name, entry, data_size)
        spans = sorted((begin, end, name) for name, (_, _, begin, end) in entries.items())
        for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
            if begin < end:
                self._fail(f"tensors {first!r} and {second!r} overlap in the data")
        return entries, 8 + length

    def _check_entry(self, name, entry, data_size):
        if not isinstance(entry, dict):
            self._fail(f"tensor {name!r}: header entry is {entry!r}, expected an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in FLOAT_DTYPES and dtype not in OTHER_DTYPES:
            self._fail(f"tensor {name!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(map(_is_count, shape)):
            self._fail(f"tensor {name!r}: shape {shape!r}, expected a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))
                and offsets[0] <= offsets[1] <= data_size):
            self._fail(f"tensor {name!r}: data_offsets {offsets!r}, expected [begin, end] within "
                       f"the {data_size} data bytes")
        itemsize = (OTHER_DTYPES[dtype] if dtype in OTHER_DTYPES else
                    2 if dtype == "BF16" else FLOAT_DTYPES[dtype].itemsize)
        nbytes = math.prod(shape) * itemsize
        if offsets[1] - offsets[0] != nbytes:
            self._fail(f"tensor {name!r}: {dtype} of shape {shape} is {nbytes} bytes, but its "
                       f"offsets span {offsets[1] - offsets[0]}")
        return dtype, tuple(shape), offsets[0], offsets[1]

    def read(self, name):
        """Tensor `name` as a float32 array; non-float dtypes and values that
        are not finite in float32 are errors naming the tensor."""
        dtype, shape, begin, end = self.entries[name]
        if dtype not in FLOAT_DTYPES:
            self._fail(f"tensor {name!r} is {dtype}: expected floating-point weights "
                       f"({', '.join(FLOAT_DTYPES)})")
        raw = os.pread(self.file.fileno(), end - begin, self.data_start + begin)
        if len(raw) != end - begin:
            self._fail(f"tensor {name!r}: the file ended while reading it")
        if dtype == "BF16":  # bf16 is the top half of a float32
            values = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            with np.errstate(over="ignore"):  # a float64 beyond float32's range shows as inf below
                values = np.frombuffer(raw, FLOAT_DTYPES[dtype]).astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            self._fail(f"tensor {name!r} holds {values[bad[0]]} at element {bad[0]} (in float32; "
                       "expected finite weights)")
        return values.reshape(shape)

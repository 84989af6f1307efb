"""ctypes declarations of libllmc's C API (libllmc/include/llmc.h).

Every function's signature is declared here once; `call` turns a failed
status into the matching Python exception carrying the library's message.
"""
import ctypes
import math
import numbers
import operator
import os
import struct
import threading
from pathlib import Path

ABI_VERSION = 5  # must equal LLMC_ABI_VERSION in llmc.h

REPO_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------
# exceptions

class LibraryError(ImportError):
    """libllmc is not built, stale, or cannot be loaded; the message says to run `make`."""


class LlmcError(RuntimeError):
    """A call into libllmc failed; .status is the llmc_status code."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class InvalidArgumentError(LlmcError, ValueError):
    pass


class LlmcIOError(LlmcError, OSError):
    pass


class FileFormatError(LlmcError, ValueError):
    pass


class OutOfMemoryError(LlmcError, MemoryError):
    pass


class UnsupportedError(LlmcError):
    pass


class DeviceError(LlmcError):
    pass


class NumericError(LlmcError, FloatingPointError):
    pass


_ERRORS = {
    1: InvalidArgumentError,
    2: LlmcIOError,
    3: FileFormatError,
    4: OutOfMemoryError,
    5: UnsupportedError,
    6: DeviceError,
    7: NumericError,
}


# ---------------------------------------------------------------------------
# structs (field for field as in llmc.h)

class ConfigStruct(ctypes.Structure):
    _fields_ = [
        ("max_seq_len", ctypes.c_int32),
        ("vocab_size", ctypes.c_int32),
        ("padded_vocab_size", ctypes.c_int32),
        ("num_layers", ctypes.c_int32),
        ("num_heads", ctypes.c_int32),
        ("channels", ctypes.c_int32),
        ("family", ctypes.c_int32),
        ("num_kv_heads", ctypes.c_int32),
        ("ffn_hidden", ctypes.c_int32),
        ("untied_head", ctypes.c_int32),
        ("rope_theta", ctypes.c_float),
        ("norm_eps", ctypes.c_float),
        ("rope_scaling_factor", ctypes.c_float),
        ("rope_low_freq_factor", ctypes.c_float),
        ("rope_high_freq_factor", ctypes.c_float),
        ("rope_original_max_seq_len", ctypes.c_int32),
    ]


class OptionsStruct(ctypes.Structure):
    _fields_ = [
        ("device", ctypes.c_int),
        ("device_index", ctypes.c_int32),
        ("max_batch_size", ctypes.c_int32),
        ("max_seq_len", ctypes.c_int32),
        ("seed", ctypes.c_uint64),
        ("num_threads", ctypes.c_int32),
        ("recompute", ctypes.c_int32),
        ("rank", ctypes.c_int32),
        ("world_size", ctypes.c_int32),
        ("zero_stage", ctypes.c_int32),
        ("comm_timeout_s", ctypes.c_int32),
        ("nccl_id", ctypes.c_uint8 * 128),
        ("precision", ctypes.c_int32),
        ("reserved", ctypes.c_int32 * 7),
    ]


class AdamWStruct(ctypes.Structure):
    _fields_ = [
        ("lr", ctypes.c_float),
        ("beta1", ctypes.c_float),
        ("beta2", ctypes.c_float),
        ("eps", ctypes.c_float),
        ("weight_decay", ctypes.c_float),
        ("grad_clip", ctypes.c_float),
    ]


class SamplingStruct(ctypes.Structure):
    _fields_ = [
        ("temperature", ctypes.c_float),
        ("top_k", ctypes.c_int32),
        ("top_p", ctypes.c_float),
        ("seed", ctypes.c_uint64),
        ("max_new_tokens", ctypes.c_int32),
        ("stop_token", ctypes.c_int32),
    ]


class TokenEventStruct(ctypes.Structure):
    _fields_ = [
        ("sequence", ctypes.c_int32),
        ("token", ctypes.c_int32),
        ("logprob", ctypes.c_float),
        ("finish", ctypes.c_int32),
    ]


DEVICES = {"cpu": 0, "cuda": 1}
FAMILIES = {"gpt2": 0, "llama": 1}
# llmc_precision: "default" is fp32 on the CPU and bf16 on CUDA
PRECISIONS = {"default": 0, "fp8": 1}
DTYPES = {"fp32": 0, "bf16": 1}
REDUCE_OPS = {"sum": 0, "max": 1, "min": 2}

# ---------------------------------------------------------------------------
# the library

_p = ctypes.POINTER
_i32p = _p(ctypes.c_int32)
_f32p = _p(ctypes.c_float)
_model = ctypes.c_void_p
_status = ctypes.c_int

_SIGNATURES = {
    "llmc_abi_version": (ctypes.c_int, []),
    "llmc_last_error": (ctypes.c_char_p, []),
    "llmc_status_string": (ctypes.c_char_p, [ctypes.c_int]),
    "llmc_cuda_available": (ctypes.c_int, []),
    "llmc_default_options": (OptionsStruct, []),
    "llmc_default_adamw": (AdamWStruct, []),
    "llmc_config_preset": (_status, [ctypes.c_char_p, _p(ConfigStruct)]),
    "llmc_read_config": (_status, [ctypes.c_char_p, _p(ConfigStruct)]),
    "llmc_init": (_status, [_p(ConfigStruct), _p(OptionsStruct), _p(_model)]),
    "llmc_init_from_file": (_status, [ctypes.c_char_p, _p(OptionsStruct), _p(_model)]),
    "llmc_free": (None, [_model]),
    "llmc_get_config": (_status, [_model, _p(ConfigStruct)]),
    "llmc_get_options": (_status, [_model, _p(OptionsStruct)]),
    "llmc_num_parameters": (ctypes.c_size_t, [_model]),
    "llmc_step_count": (ctypes.c_int64, [_model]),
    "llmc_step": (_status, [_model, _i32p, _i32p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                            _p(AdamWStruct), _f32p, _f32p]),
    "llmc_backward": (_status, [_model, _i32p, _i32p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                _f32p]),
    "llmc_update": (_status, [_model, _p(AdamWStruct), _f32p]),
    "llmc_eval": (_status, [_model, _i32p, _i32p, ctypes.c_int, ctypes.c_int, _f32p, _f32p]),
    "llmc_logits": (_status, [_model, _i32p, ctypes.c_int, ctypes.c_int, ctypes.c_int, _f32p]),
    "llmc_get_parameters": (_status, [_model, _f32p]),
    "llmc_set_parameters": (_status, [_model, _f32p]),
    "llmc_get_gradients": (_status, [_model, _f32p]),
    "llmc_save": (_status, [_model, ctypes.c_char_p, ctypes.c_int]),
    "llmc_save_optimizer": (_status, [_model, ctypes.c_char_p]),
    "llmc_load_optimizer": (_status, [_model, ctypes.c_char_p]),
    "llmc_memory_bytes": (ctypes.c_size_t, [_model]),
    "llmc_allreduce": (_status, [_model, _p(ctypes.c_double), ctypes.c_size_t, ctypes.c_int]),
    "llmc_nccl_unique_id": (_status, [_p(ctypes.c_uint8)]),
    "llmc_plan_memory": (_status, [_p(ConfigStruct), _p(OptionsStruct), _p(ctypes.c_size_t)]),
    "llmc_default_sampling": (SamplingStruct, []),
    "llmc_generator_plan_memory": (_status, [_model, ctypes.c_int, ctypes.c_int,
                                             _p(ctypes.c_size_t)]),
    "llmc_generator_create": (_status, [_model, ctypes.c_int, ctypes.c_int, _p(ctypes.c_void_p)]),
    "llmc_generator_free": (None, [ctypes.c_void_p]),
    "llmc_generator_start": (_status, [ctypes.c_void_p, ctypes.c_int, _i32p, _i32p,
                                       _p(SamplingStruct), _i32p]),
    "llmc_generator_run": (_status, [ctypes.c_void_p, ctypes.c_int, _p(TokenEventStruct),
                                     ctypes.c_int, _p(ctypes.c_int)]),
    "llmc_generator_cancel": (_status, [ctypes.c_void_p, ctypes.c_int32]),
    "llmc_generator_live": (ctypes.c_int, [ctypes.c_void_p]),
    "llmc_generator_memory_bytes": (ctypes.c_size_t, [ctypes.c_void_p]),
}


def _library_path():
    if os.environ.get("LLMC_LIB"):
        return Path(os.environ["LLMC_LIB"])
    return REPO_ROOT / "build" / "libllmc.so"


def _load():
    path = _library_path()
    if not path.exists():
        raise LibraryError(f"libllmc not found at {path}: run `make` in {REPO_ROOT} first "
                          "(or point LLMC_LIB at a built libllmc.so)")
    # Idle OpenMP threads sleep instead of spinning: spinning costs little on
    # an idle machine but starves the tokenizer and anything else on a busy one.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise LibraryError(f"cannot load {path} ({e}): re-run `make` in {REPO_ROOT} (a moved or "
                          "changed Python environment moves the OpenBLAS it links to)") from e
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    found = lib.llmc_abi_version()
    if found != ABI_VERSION:
        raise LibraryError(f"{path} has ABI version {found}, but pyllmc expects {ABI_VERSION}: "
                          "rebuild with `make` (or update pyllmc)")
    return lib


class _Library:
    """libllmc, loaded (and its ABI version checked) on first use, so that the
    pure-Python parts of pyllmc (tokenizer, shards) work before `make`; once,
    whichever threads get there first."""
    _cdll = None
    _loading = threading.Lock()

    def __getattr__(self, name):
        if _Library._cdll is None:
            with _Library._loading:
                if _Library._cdll is None:
                    _Library._cdll = _load()
        return getattr(_Library._cdll, name)


lib = _Library()


# ---------------------------------------------------------------------------
# values crossing into C: ctypes silently wraps integers and rounds floats to
# inf, so each is checked against its C type first

_INT_RANGES = {ctypes.c_int32: (-2**31, 2**31 - 1), ctypes.c_int: (-2**31, 2**31 - 1),
               ctypes.c_uint64: (0, 2**64 - 1), ctypes.c_size_t: (0, 2**64 - 1),
               ctypes.c_uint8: (0, 255)}


def c_integer(value, name, ctype=ctypes.c_int32):
    """value as a Python int, if it is an integer that ctype holds exactly."""
    try:
        number = operator.index(value)
    except TypeError:
        raise InvalidArgumentError(f"{name} = {value!r}: expected an integer") from None
    low, high = _INT_RANGES[ctype]
    if not low <= number <= high:
        raise InvalidArgumentError(f"{name} = {number}: out of range for the C library "
                                   f"(expected {low}..{high})")
    return number


def c_float(value, name):
    """value as a Python float, if it is a finite real number that stays
    finite as a C float (1e40 would become inf)."""
    if not isinstance(value, numbers.Real):  # float("0.1") would take a string
        raise InvalidArgumentError(f"{name} = {value!r}: expected a real number")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidArgumentError(f"{name} = {number}: expected a finite number")
    try:
        struct.pack("f", number)
    except OverflowError:
        raise InvalidArgumentError(f"{name} = {number}: too large for a C float "
                                   "(beyond 3.4e38)") from None
    return number


def c_set(s, **values):
    """Sets fields of the ctypes struct s, each checked against its C type; returns s."""
    ctypes_of = dict(type(s)._fields_)
    for field, value in values.items():
        ctype = ctypes_of[field]
        setattr(s, field, c_float(value, field) if ctype is ctypes.c_float
                else c_integer(value, field, ctype))
    return s


def c_path(path):
    """A path as bytes for C; a NUL inside would silently cut it there."""
    encoded = os.fsencode(os.fspath(path))
    if b"\0" in encoded:
        raise InvalidArgumentError(f"path {path!r} contains a NUL byte")
    return encoded


def call(name, *args):
    """Calls lib.<name>(*args) and raises the matching LlmcError on failure."""
    status = getattr(lib, name)(*args)
    if status != 0:
        message = lib.llmc_last_error().decode("utf-8", "replace")
        raise _ERRORS.get(status, LlmcError)(message, status)

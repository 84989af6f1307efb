"""pyllmc.Model: a GPT-2 or Llama held by libllmc, trained and evaluated from numpy."""
import contextlib
import ctypes
import dataclasses
import threading
import weakref

import numpy as np

from . import _lib
from ._lib import call, lib

lib.llmc_abi_version()  # load libllmc now: a missing or stale build fails at import


@dataclasses.dataclass(frozen=True)
class Config:
    """Model shape: llmc_config (llmc.h). The first fields are GPT-2's (llm.c's
    checkpoint header); the rest are Llama's (family 1) and stay 0 for GPT-2.
    For Llama a 0 takes its default when the model is created (the model's
    config has the values)."""
    max_seq_len: int = 1024
    vocab_size: int = 50257
    num_layers: int = 12
    num_heads: int = 12
    channels: int = 768
    padded_vocab_size: int = 0  # 0: vocab_size rounded up to a multiple of 128
    family: int = 0             # 0 GPT-2, 1 Llama (_lib.FAMILIES)
    num_kv_heads: int = 0       # Llama: 0 = num_heads
    ffn_hidden: int = 0         # Llama: SwiGLU width; 0 = 8C/3 rounded up to 256
    untied_head: int = 0        # Llama: 1 = own output layer, 0 = tied to wte
    rope_theta: float = 0.0     # Llama: 0 = 10000
    norm_eps: float = 0.0       # Llama: 0 = 1e-5
    rope_scaling_factor: float = 0.0  # Llama 3.1 RoPE scaling; 0 = none
    rope_low_freq_factor: float = 0.0
    rope_high_freq_factor: float = 0.0
    rope_original_max_seq_len: int = 0

    @property
    def is_llama(self):
        return self.family == _lib.FAMILIES["llama"]

    @classmethod
    def preset(cls, name):
        """d12, d24, d36, d48: GPT-2 124M, 350M, 774M, 1558M; llama-124m (GPT-2
        124M's size as a Llama on GPT-2's vocabulary), llama3.2-1b, llama3.2-3b,
        llama3.1-8b (those models' shapes)."""
        if "\0" in name:  # C would read only up to it: "d12\0x" is not d12
            raise _lib.InvalidArgumentError(f"preset {name!r} contains a NUL byte")
        c = _lib.ConfigStruct()
        call("llmc_config_preset", name.encode(), ctypes.byref(c))
        return cls._from_struct(c)

    @classmethod
    def from_file(cls, path):
        """The shape of an llm.c model file, checked as Model.load checks it."""
        c = _lib.ConfigStruct()
        call("llmc_read_config", _lib.c_path(path), ctypes.byref(c))
        return cls._from_struct(c)

    @classmethod
    def _from_struct(cls, c):
        return cls(**{f.name: getattr(c, f.name) for f in dataclasses.fields(cls)})

    def _to_struct(self):
        return _lib.c_set(_lib.ConfigStruct(), **dataclasses.asdict(self))


def _as_tokens(array, name):
    """An int32 C-contiguous copy (or view) of an integer array."""
    a = np.asarray(array)
    if a.dtype.kind not in "iu":
        raise _lib.InvalidArgumentError(f"{name} must be an integer array, got dtype {a.dtype}")
    if a.size and (a.max() > np.iinfo(np.int32).max or a.min() < np.iinfo(np.int32).min):
        raise _lib.InvalidArgumentError(f"{name} holds values outside int32: {a.min()}..{a.max()}")
    return np.ascontiguousarray(a, dtype=np.int32)


def _i32(a):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))


def _f32(a):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


class Model:
    """A GPT-2 or Llama model in libllmc. Create with Model.from_config or Model.load.

    Thread-safe: calls from several threads run one at a time, and close()
    waits for a call in flight before it frees the model."""

    def __init__(self, handle):
        # every use of the handle holds this lock, so close() can never free
        # the model under a call in another thread
        self._lock = threading.RLock()
        self._generators = weakref.WeakSet()  # freed before the model (pyllmc.generate)
        self._handle = ctypes.c_void_p(handle)
        c = _lib.ConfigStruct()
        call("llmc_get_config", self._handle, ctypes.byref(c))
        self.config = Config._from_struct(c)
        o = _lib.OptionsStruct()
        call("llmc_get_options", self._handle, ctypes.byref(o))
        self.device = {v: k for k, v in _lib.DEVICES.items()}[o.device]
        self.max_batch_size = o.max_batch_size
        self.max_seq_len = o.max_seq_len
        self.rank, self.world_size, self.zero_stage = o.rank, o.world_size, o.zero_stage
        self.precision = {v: k for k, v in _lib.PRECISIONS.items()}[o.precision]
        self.num_parameters = lib.llmc_num_parameters(self._handle)

    # ---- creation --------------------------------------------------------

    @staticmethod
    def _options(device, max_batch_size, max_seq_len, seed, num_threads, recompute, rank=0,
                 world_size=0, zero_stage=0, nccl_id=None, comm_timeout_s=0, device_index=0,
                 precision="default"):
        if device not in _lib.DEVICES:
            raise _lib.InvalidArgumentError(f"device {device!r}, expected one of {sorted(_lib.DEVICES)}")
        if precision not in _lib.PRECISIONS:
            raise _lib.InvalidArgumentError(f"precision {precision!r}, expected one of "
                                            f"{sorted(_lib.PRECISIONS)}")
        o = _lib.c_set(lib.llmc_default_options(), device=_lib.DEVICES[device],
                       device_index=device_index, max_batch_size=max_batch_size,
                       max_seq_len=max_seq_len or 0, seed=seed, num_threads=num_threads,
                       recompute=recompute, rank=rank, world_size=world_size,
                       zero_stage=zero_stage, comm_timeout_s=comm_timeout_s,
                       precision=_lib.PRECISIONS[precision])
        if nccl_id is not None:
            if len(nccl_id) != len(o.nccl_id):
                raise _lib.InvalidArgumentError(f"nccl_id has {len(nccl_id)} bytes, expected "
                                                f"{len(o.nccl_id)}")
            o.nccl_id[:] = [_lib.c_integer(b, "nccl_id byte", ctypes.c_uint8) for b in nccl_id]
        return o

    @classmethod
    def from_config(cls, config, device="cpu", max_batch_size=4, max_seq_len=None, seed=42,
                    num_threads=0, recompute=0, **distributed):
        """A freshly initialised model; config is a Config or a preset name.

        distributed: rank, world_size, zero_stage, nccl_id, comm_timeout_s and
        device_index (the rank's GPU) for data-parallel training (llmc.h's
        "Distributed mode"); every rank makes the same call. precision="fp8":
        FP8 block products on a Hopper GPU (llmc.h's llmc_precision)."""
        if isinstance(config, str):
            config = Config.preset(config)
        options = cls._options(device, max_batch_size, max_seq_len, seed, num_threads, recompute,
                               **distributed)
        handle = ctypes.c_void_p()
        call("llmc_init", ctypes.byref(config._to_struct()), ctypes.byref(options),
             ctypes.byref(handle))
        return cls(handle.value)

    @classmethod
    def load(cls, path, device="cpu", max_batch_size=4, max_seq_len=None, seed=42, num_threads=0,
             recompute=0, **distributed):
        """A model from an llm.c-format file (fp32 version 3 or bf16 version 5)."""
        options = cls._options(device, max_batch_size, max_seq_len, seed, num_threads, recompute,
                               **distributed)
        handle = ctypes.c_void_p()
        call("llmc_init_from_file", _lib.c_path(path), ctypes.byref(options), ctypes.byref(handle))
        return cls(handle.value)

    @staticmethod
    def plan_memory(config, device="cpu", max_batch_size=4, max_seq_len=None, recompute=0,
                    world_size=0, zero_stage=0, precision="default"):
        """Bytes per rank a model would hold for training, from the library's
        plan, without allocating it."""
        if isinstance(config, str):
            config = Config.preset(config)
        options = Model._options(device, max_batch_size, max_seq_len, 0, 0, recompute,
                                 world_size=world_size, zero_stage=zero_stage,
                                 precision=precision)
        out = ctypes.c_size_t()
        call("llmc_plan_memory", ctypes.byref(config._to_struct()), ctypes.byref(options),
             ctypes.byref(out))
        return out.value

    def close(self):
        """Frees the model, after any call in flight in another thread."""
        lock = getattr(self, "_lock", None)
        if lock is None:  # __init__ failed before the handle existed
            return
        with lock:
            for generator in list(self._generators):
                generator.close()
            if self._handle:
                lib.llmc_free(self._handle)
                self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except (AttributeError, TypeError):  # interpreter shutdown: modules already torn down
            pass

    @contextlib.contextmanager
    def _using(self):
        """The handle, held for the duration of a call into the library."""
        with self._lock:
            if not self._handle:
                raise _lib.InvalidArgumentError("this Model has been closed")
            yield self._handle

    def _call(self, name, *args):
        """call(name, handle, *args) with the handle held."""
        with self._using() as handle:
            call(name, handle, *args)

    # ---- training --------------------------------------------------------

    def _batch(self, inputs, targets):
        """(micro_steps, B, T) int32 arrays from (B, T) or (micro_steps, B, T) ones."""
        x, y = _as_tokens(inputs, "inputs"), _as_tokens(targets, "targets")
        if x.shape != y.shape:
            raise _lib.InvalidArgumentError(f"inputs have shape {x.shape} but targets {y.shape}: "
                                            "expected equal shapes")
        if x.ndim == 2:
            x, y = x[None], y[None]
        if x.ndim != 3:
            raise _lib.InvalidArgumentError(f"inputs have shape {x.shape}: expected (B, T) or "
                                            "(micro_steps, B, T)")
        for name, size in zip(("micro_steps", "B", "T"), x.shape):
            _lib.c_integer(size, name, ctypes.c_int)
        return x, y

    @property
    def step_count(self):
        """Optimizer steps taken so far."""
        with self._using() as handle:
            return lib.llmc_step_count(handle)

    def step(self, inputs, targets, lr, weight_decay=0.0, beta1=0.9, beta2=0.95, eps=1e-8,
             grad_clip=1.0):
        """One AdamW step over (B, T) or (micro_steps, B, T) tokens (targets -1 are ignored).

        Returns (loss before the update, gradient norm before clipping)."""
        hp = self._adamw(lr, weight_decay, beta1, beta2, eps, grad_clip)  # checked before the work
        with self._lock:  # no other thread's backward between these two
            loss = self.backward(inputs, targets)
            return loss, self._update(hp)

    def backward(self, inputs, targets):
        """Gradients of the mean loss, without an update; returns the loss."""
        x, y = self._batch(inputs, targets)
        loss = ctypes.c_float()
        self._call("llmc_backward", _i32(x), _i32(y), x.shape[0], x.shape[1], x.shape[2],
                   ctypes.byref(loss))
        return loss.value

    def update(self, lr, weight_decay=0.0, beta1=0.9, beta2=0.95, eps=1e-8, grad_clip=1.0):
        """AdamW update from the last backward; returns the gradient norm.

        Raises NumericError, changing nothing, if the norm is not finite."""
        return self._update(self._adamw(lr, weight_decay, beta1, beta2, eps, grad_clip))

    @staticmethod
    def _adamw(lr, weight_decay, beta1, beta2, eps, grad_clip):
        return _lib.c_set(_lib.AdamWStruct(), lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                          weight_decay=weight_decay, grad_clip=grad_clip)

    def _update(self, hp):
        norm = ctypes.c_float()
        self._call("llmc_update", ctypes.byref(hp), ctypes.byref(norm))
        return norm.value

    # ---- inference -------------------------------------------------------

    def eval(self, inputs, targets, per_token=False):
        """Mean loss over targets != -1; with per_token, also the (B, T) losses."""
        x, y = self._batch(inputs, targets)
        if x.shape[0] != 1:
            raise _lib.InvalidArgumentError(f"eval takes (B, T) arrays, got shape {x.shape[1:]} "
                                            f"x {x.shape[0]} micro-steps")
        B, T = x.shape[1:]
        losses = np.empty((B, T), dtype=np.float32) if per_token else None
        mean = ctypes.c_float()
        self._call("llmc_eval", _i32(x), _i32(y), B, T, ctypes.byref(mean),
             _f32(losses) if per_token else None)
        return (mean.value, losses) if per_token else mean.value

    def logits(self, inputs, last_only=False):
        """float32 logits (B, T, vocab_size), or (B, vocab_size) of the last position."""
        x = _as_tokens(inputs, "inputs")
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2:
            raise _lib.InvalidArgumentError(f"inputs have shape {x.shape}: expected (B, T)")
        B, T = (_lib.c_integer(size, name, ctypes.c_int) for name, size in zip("BT", x.shape))
        V = self.config.vocab_size
        out = np.empty((B, V) if last_only else (B, T, V), dtype=np.float32)
        self._call("llmc_logits", _i32(x), B, T, int(last_only), _f32(out))
        return out

    def generate(self, prompts, max_new_tokens=64, temperature=1.0, top_k=0, top_p=1.0, seed=0,
                 stop_token="eot", logprobs=False, stream=None, max_batch=None):
        """Sampled continuations of prompts (strings or token lists) through a
        key/value cache, sampling in C: see pyllmc.generate.generate."""
        from .generate import generate
        return generate(self, prompts, max_new_tokens, temperature, top_k, top_p, seed,
                        stop_token, logprobs, stream, max_batch)

    # ---- parameters and files --------------------------------------------

    def parameters(self):
        """All parameters as one float32 vector in llm.c's order (fp32 masters on CUDA)."""
        out = np.empty(self.num_parameters, dtype=np.float32)
        self._call("llmc_get_parameters", _f32(out))
        return out

    def set_parameters(self, params):
        p = np.ascontiguousarray(params, dtype=np.float32)
        if p.shape != (self.num_parameters,):
            raise _lib.InvalidArgumentError(f"parameters have shape {p.shape}, expected "
                                            f"({self.num_parameters},)")
        self._call("llmc_set_parameters", _f32(p))

    def gradients(self):
        """Gradients of the last backward, one float32 vector in llm.c's order."""
        out = np.empty(self.num_parameters, dtype=np.float32)
        self._call("llmc_get_gradients", _f32(out))
        return out

    def save(self, path, dtype="fp32"):
        """Writes an llm.c-format model file atomically (dtype "fp32" or "bf16")."""
        if dtype not in _lib.DTYPES:
            raise _lib.InvalidArgumentError(f"dtype {dtype!r}, expected 'fp32' or 'bf16'")
        self._call("llmc_save", _lib.c_path(path), _lib.DTYPES[dtype])

    def save_optimizer(self, path):
        """Writes the AdamW moments and step count atomically."""
        self._call("llmc_save_optimizer", _lib.c_path(path))

    def load_optimizer(self, path):
        self._call("llmc_load_optimizer", _lib.c_path(path))

    def allreduce(self, values, op="sum"):
        """values combined across the ranks (a float64 array; unchanged
        outside distributed mode). Every rank must call it."""
        v = np.array(values, dtype=np.float64).ravel()
        if op not in _lib.REDUCE_OPS:
            raise _lib.InvalidArgumentError(f"op {op!r}, expected one of {sorted(_lib.REDUCE_OPS)}")
        self._call("llmc_allreduce", v.ctypes.data_as(ctypes.POINTER(ctypes.c_double)), v.size,
             _lib.REDUCE_OPS[op])
        return v

    @property
    def memory_bytes(self):
        with self._using() as handle:
            return lib.llmc_memory_bytes(handle)

    def __repr__(self):
        c = self.config
        return (f"Model(L={c.num_layers}, H={c.num_heads}, C={c.channels}, V={c.vocab_size}, "
                f"maxT={c.max_seq_len}, params={self.num_parameters:,}, device={self.device!r})")

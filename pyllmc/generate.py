"""Generation through libllmc's key/value cache (llmc.h, "Generation").

`Generator` wraps one llmc_generator: sequences start (their prompts
prefilled) and run a chunk of steps at a time, each step one token for every
live sequence, sampled in C. `generate` is the whole loop for a list of
prompts; `pyllmc.Model.generate` calls it.
"""
import ctypes

import numpy as np

from . import _lib
from ._lib import call, lib

FINISH_REASONS = {1: "stop", 2: "length", 3: "length", 4: "cancelled"}  # OpenAI's names


class Generator:
    """A key/value cache for up to max_sequences sequences of up to max_len
    tokens (0: the model's max_seq_len) of `model`. Calls share the model's
    lock; closing the model closes its generators first."""

    def __init__(self, model, max_sequences, max_len=0):
        self.model = model
        self.max_sequences = _lib.c_integer(max_sequences, "max_sequences", ctypes.c_int)
        max_len = _lib.c_integer(max_len, "max_len", ctypes.c_int)
        self.max_len = max_len or model.config.max_seq_len
        self._handle = None
        handle = ctypes.c_void_p()
        with model._using() as model_handle:
            call("llmc_generator_create", model_handle, self.max_sequences, max_len,
                 ctypes.byref(handle))
            self._handle = handle
            model._generators.add(self)
        self._events = (_lib.TokenEventStruct * self.max_sequences)()

    @staticmethod
    def plan_memory(model, max_sequences, max_len=0):
        """Bytes a generator of this shape would allocate."""
        out = ctypes.c_size_t()
        model._call("llmc_generator_plan_memory", max_sequences, max_len, ctypes.byref(out))
        return out.value

    def _generator(self):
        if not self._handle:
            raise _lib.InvalidArgumentError("this Generator has been closed")
        return self._handle

    def sampling(self, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, seed=0,
                 stop_token="eot"):
        """llmc_sampling for start(); stop_token "eot" is <|endoftext|> when the
        vocabulary has it (else none), None is none."""
        if stop_token == "eot":
            stop_token = lib.llmc_default_sampling().stop_token
            if stop_token >= self.model.config.vocab_size:
                stop_token = None
        return _lib.c_set(_lib.SamplingStruct(), temperature=temperature, top_k=top_k,
                          top_p=top_p, seed=seed, max_new_tokens=max_new_tokens,
                          stop_token=-1 if stop_token is None else stop_token)

    def start(self, prompts, samplings):
        """Starts a sequence per prompt (lists of token ids), each with its
        sampling (from sampling()); returns their ids."""
        if len(prompts) != len(samplings):
            raise _lib.InvalidArgumentError(f"{len(prompts)} prompts but {len(samplings)} "
                                            "sampling settings")
        n = _lib.c_integer(len(prompts), "number of prompts", ctypes.c_int)
        flat = [np.asarray(p).ravel() for p in prompts]
        lengths = np.array([len(p) for p in flat], dtype=np.int64)
        tokens = np.concatenate(flat) if flat else np.zeros(0, np.int32)
        tokens = np.ascontiguousarray(tokens if tokens.size else np.zeros(1, np.int32))
        if tokens.dtype.kind not in "iu":
            raise _lib.InvalidArgumentError(f"prompts must hold integer token ids, got {tokens.dtype}")
        if tokens.size and (tokens.max() > np.iinfo(np.int32).max or tokens.min() < 0):
            raise _lib.InvalidArgumentError(f"prompt tokens outside 0..2^31-1: {tokens.min()}..{tokens.max()}")
        tokens = tokens.astype(np.int32)
        lengths = np.minimum(lengths, np.iinfo(np.int32).max).astype(np.int32)
        settings = (_lib.SamplingStruct * max(n, 1))(*samplings)
        ids = np.empty(max(n, 1), dtype=np.int32)
        with self.model._lock:
            call("llmc_generator_start", self._generator(), n, _i32(tokens), _i32(lengths),
                 settings, _i32(ids))
        return ids[:n].tolist()

    def run(self, max_steps=1):
        """Up to max_steps steps; a list of (sequence id, token, logprob,
        finish) for each token, in step order then id order (finish 0 while
        the sequence goes on). Empty when no sequence is live."""
        capacity = self.max_sequences * _lib.c_integer(max_steps, "max_steps", ctypes.c_int)
        if len(self._events) < capacity:
            self._events = (_lib.TokenEventStruct * capacity)()
        n = ctypes.c_int()
        with self.model._lock:
            call("llmc_generator_run", self._generator(), max_steps, self._events, capacity,
                 ctypes.byref(n))
        return [(e.sequence, e.token, e.logprob, e.finish) for e in self._events[:n.value]]

    def cancel(self, sequence):
        with self.model._lock:
            call("llmc_generator_cancel", self._generator(), sequence)

    @property
    def live(self):
        with self.model._lock:
            return lib.llmc_generator_live(self._generator())

    @property
    def memory_bytes(self):
        with self.model._lock:
            return lib.llmc_generator_memory_bytes(self._generator())

    def close(self):
        with self.model._lock:
            if self._handle:
                lib.llmc_generator_free(self._handle)
                self._handle = None
                self.model._generators.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _i32(a):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))


def prompt_tokens(prompts, vocab_size):
    """Token lists from prompts: a string, a list of ints, or a list of strings
    and token lists. Strings are encoded with GPT-2's tokenizer; an empty
    prompt is <|endoftext|> (the start of a document)."""
    from .tokenizer import EOT, encode
    if isinstance(prompts, str) or (len(prompts) and all(isinstance(t, (int, np.integer))
                                                          for t in prompts)):
        prompts = [prompts]
    out = []
    for p in prompts:
        tokens = encode(p) if isinstance(p, str) else [int(t) for t in np.asarray(p).ravel()]
        if not tokens:
            if EOT >= vocab_size:
                raise _lib.InvalidArgumentError("an empty prompt starts from <|endoftext|>, which "
                                                f"this model's vocabulary ({vocab_size}) lacks")
            tokens = [EOT]
        out.append(tokens)
    return out


def generate(model, prompts, max_new_tokens=64, temperature=1.0, top_k=0, top_p=1.0, seed=0,
             stop_token="eot", logprobs=False, stream=None, max_batch=None):
    """New tokens for each prompt (see prompt_tokens), all sampled together
    (at most max_batch at once). Sequence i uses seed + i. stream(i, token,
    logprob) is called for every token as it comes. Returns the list of token
    lists, and with logprobs also the list of their log-probabilities."""
    prompts = prompt_tokens(prompts, model.config.vocab_size)
    if not prompts:
        return ([], []) if logprobs else []
    longest = max(len(p) for p in prompts)
    if longest >= model.config.max_seq_len:
        raise _lib.InvalidArgumentError(f"a prompt of {longest} tokens leaves no room in the "
                                        f"model's context ({model.config.max_seq_len} tokens)")
    max_len = min(model.config.max_seq_len, longest + max(int(max_new_tokens), 1))
    batch = min(len(prompts), max_batch or len(prompts))
    tokens, probs = [[] for _ in prompts], [[] for _ in prompts]
    with Generator(model, batch, max_len) as gen:
        samplings = [gen.sampling(max_new_tokens, temperature, top_k, top_p, seed + i, stop_token)
                     for i in range(len(prompts))]
        waiting = list(range(len(prompts)))
        owner = {}  # live sequence id -> prompt index
        while waiting or owner:
            free = batch - len(owner)
            if waiting and free:
                take, waiting = waiting[:free], waiting[free:]
                ids = gen.start([prompts[i] for i in take], [samplings[i] for i in take])
                owner.update(zip(ids, take))
            # streaming: a step at a time; else until a slot frees for a waiting prompt
            for seq, token, logprob, finish in gen.run(1 if stream or waiting else max_new_tokens):
                i = owner[seq]
                tokens[i].append(token)
                probs[i].append(logprob)
                if stream:
                    stream(i, token, logprob)
                if finish:
                    del owner[seq]
    return (tokens, probs) if logprobs else tokens

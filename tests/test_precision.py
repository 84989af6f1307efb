"""The precision option and the optimizer file's FP8 scaling state, on the
CPU (the FP8 arithmetic itself is tested on a GPU in tests/test_cuda.py):
FP8 is refused where it cannot run, with one clear message; version 2
optimizer files carry a scaling-state count, version 1 files still load,
and a count that does not match the model or the file's size is an error."""
import ctypes
import struct
import subprocess
import sys

import numpy as np
import pytest

import pyllmc
from pyllmc import Config, Model, _lib

TINY = Config(max_seq_len=16, vocab_size=97, num_layers=2, num_heads=2, channels=16)
LLAMA = Config(family=_lib.FAMILIES["llama"], max_seq_len=16, vocab_size=97, num_layers=2,
               num_heads=4, channels=32, num_kv_heads=2)
HEADER_BYTES = 256 * 4


@pytest.mark.parametrize("config", [TINY, LLAMA], ids=["gpt2", "llama"])
def test_fp8_refused_on_the_cpu(config):
    with pytest.raises(pyllmc.UnsupportedError, match="fp8 needs the CUDA backend"):
        Model.from_config(config, precision="fp8")
    with pytest.raises(pyllmc.UnsupportedError, match="fp8"):
        Model.plan_memory(config, precision="fp8")
    with pytest.raises(pyllmc.InvalidArgumentError, match="precision 'fp16'"):
        Model.from_config(TINY, precision="fp16")
    with Model.from_config(TINY) as m:
        assert m.precision == "default"


def test_precision_out_of_range_in_c():
    o = _lib.lib.llmc_default_options()
    o.precision = 7
    handle = ctypes.c_void_p()
    with pytest.raises(pyllmc.InvalidArgumentError, match="precision = 7"):
        _lib.call("llmc_init", ctypes.byref(TINY._to_struct()), ctypes.byref(o), ctypes.byref(handle))


def test_trainer_refuses_fp8_on_the_cpu(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pyllmc.train", "--precision", "fp8", "--steps", "1",
                          "--out-dir", str(tmp_path / "run")], capture_output=True, text=True)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "fp8 needs the CUDA backend" in lines[0], out.stderr


def trained(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 97, size=(2, 9))
    m = Model.from_config(TINY, max_batch_size=2)
    m.step(tokens[:, :-1], tokens[:, 1:], lr=1e-2)
    m.save_optimizer(tmp_path / "opt.bin")
    return m, (tmp_path / "opt.bin").read_bytes()


def with_header(data, **fields):
    h = list(struct.unpack("<256i", data[:HEADER_BYTES]))
    for index, value in fields.items():
        h[int(index[1:])] = value
    return struct.pack("<256i", *h) + data[HEADER_BYTES:]


def test_optimizer_file_versions(tmp_path):
    m, data = trained(tmp_path)
    h = struct.unpack("<256i", data[:HEADER_BYTES])
    assert h[1] == 2 and h[10] == 0  # version 2, no scaling state from a model without one
    assert len(data) == HEADER_BYTES + 2 * 4 * m.num_parameters
    # version 1 (written before the scaling state existed) still loads
    (tmp_path / "v1.bin").write_bytes(with_header(data, h1=1))
    m.load_optimizer(tmp_path / "v1.bin")
    assert m.step_count == 1
    # an FP8 run's state is skipped by a model without one
    state = np.arange(5, dtype=np.float32).tobytes()
    (tmp_path / "fp8.bin").write_bytes(with_header(data, h10=5) + state)
    m.load_optimizer(tmp_path / "fp8.bin")
    assert m.step_count == 1
    # a count the size does not back, or a version from the future
    (tmp_path / "short.bin").write_bytes(with_header(data, h10=5))
    with pytest.raises(pyllmc.FileFormatError, match="short.bin.*expected exactly"):
        m.load_optimizer(tmp_path / "short.bin")
    (tmp_path / "v3.bin").write_bytes(with_header(data, h1=3))
    with pytest.raises(pyllmc.FileFormatError, match="version 3"):
        m.load_optimizer(tmp_path / "v3.bin")
    # a version 1 file's word 10 was unused: it does not count
    (tmp_path / "v1_word10.bin").write_bytes(with_header(data, h1=1, h10=5))
    m.load_optimizer(tmp_path / "v1_word10.bin")
    m.close()


def cuda_plan(config, **kw):
    """The CUDA backend's plan (the plugin, no GPU needed)."""
    return Model.plan_memory(config, device="cuda", max_batch_size=2,
                             max_seq_len=config.max_seq_len, **kw)


needs_cuda_plugin = pytest.mark.skipif(
    not (_lib.REPO_ROOT / "build" / "libllmc_cuda.so").exists(),
    reason="libllmc built without the CUDA backend")


@needs_cuda_plugin
def test_fp8_llama_plan_counts_the_fp8_buffers():
    """With recompute 2 the bf16 activations of both precisions are the same,
    so the difference is exactly the FP8 buffers less the bf16 block weights
    (FP8 without ZeRO-1 keeps those in E4M3 only): E4M3 block weights, one
    matrix's transpose and bf16 rounding scratch, three scratch operands as wide as the widest product operand
    (here fc's 2F), one layer of each product input's transpose, 3 x 4 x L
    scaling slots of 22 floats each, and the LM head's: its weight both ways,
    per chunk of rows (all N here) the final norm's output transposed, and 3 x 4
    slots (the logits' gradients take no memory of their own: d4C and the
    logits chunk hold them, both free inside the classifier)."""
    c = Config(family=_lib.FAMILIES["llama"], max_seq_len=32, vocab_size=97, num_layers=2,
               num_heads=4, channels=64, num_kv_heads=2, ffn_hidden=176)
    L, C, F, N = 2, 64, 176, 2 * 32
    QKV = (4 + 2 * 2) * (C // 4)
    bf16 = cuda_plan(c, recompute=2)
    fp8 = cuda_plan(c, recompute=2, precision="fp8")
    weights = L * (QKV * C + C * C + 2 * F * C + C * F)
    largest = 2 * F * C  # of the four matrices of a layer (a multiple of 64: no padding)
    inputs_T = N * (C + C + C + F)
    slots = 3 * 4 * L + 3 * 4
    Vp = 128  # the vocabulary, 97, padded to a multiple of 128
    head = 2 * Vp * C + N * C  # the weight both ways; chunks of N rows: lnfT8
    assert fp8 - bf16 == (weights + 3 * largest - 2 * weights + 3 * N * 2 * F + inputs_T + head
                          + slots * (1 + 4 + 1 + 16) * 4)
    # a vocabulary too wide for d4C (N x 2F bf16): the logits' gradients get their own N x Vp
    wide = Config(family=_lib.FAMILIES["llama"], max_seq_len=32, vocab_size=1000, num_layers=2,
                  num_heads=4, channels=64, num_kv_heads=2, ffn_hidden=176)
    Vp_wide = 1024
    assert (cuda_plan(wide, recompute=2, precision="fp8") - cuda_plan(wide, recompute=2)
            == fp8 - bf16 + 2 * (Vp_wide - Vp) * C + N * Vp_wide)
    # with less recomputed, FP8 keeps transposes of inputs where bf16 keeps bf16 norms and SwiGLU
    assert cuda_plan(c, precision="fp8") > cuda_plan(c, recompute=1, precision="fp8") > fp8


@needs_cuda_plugin
def test_fp8_plans_less_memory_than_bf16_at_d48():
    """issue 17's memory goal in the plan: d48 at the benchmark's batch, recompute 2
    (measured on the H200 in BENCHMARKS.md); ZeRO-1 keeps the bf16 block weights
    (it gathers them), so there FP8 costs the E4M3 copies on top."""
    plan = dict(device="cuda", max_batch_size=16, max_seq_len=1024, recompute=2)
    bf16 = Model.plan_memory("d48", **plan)
    assert Model.plan_memory("d48", precision="fp8", **plan) < bf16
    zero = dict(plan, world_size=2, zero_stage=1)
    assert Model.plan_memory("d48", precision="fp8", **zero) > Model.plan_memory("d48", **zero)


@needs_cuda_plugin
def test_fp8_llama_widths_must_be_multiples_of_16():
    """cuBLASLt's FP8 layouts: C, the qkv width, 2F and F; the message names them."""
    bad = Config(family=_lib.FAMILIES["llama"], max_seq_len=32, vocab_size=97, num_layers=2,
                 num_heads=4, channels=64, num_kv_heads=2, ffn_hidden=168)
    cuda_plan(bad)  # bf16 takes F = 168
    with pytest.raises(pyllmc.UnsupportedError,
                       match="multiples of 16 .*MLP width 168.*fc projection product is 168 -> 64"):
        cuda_plan(bad, precision="fp8")
    assert cuda_plan(LLAMA, precision="fp8") > 0
    odd_vocab = Config(max_seq_len=32, vocab_size=97, padded_vocab_size=104, num_layers=1,
                       num_heads=2, channels=64)
    cuda_plan(odd_vocab)
    with pytest.raises(pyllmc.UnsupportedError, match="padded_vocab_size a multiple of 16 .got 104"):
        cuda_plan(odd_vocab, precision="fp8")


def test_llama_optimizer_file_keeps_scaling_count_and_family_apart(tmp_path):
    """Word 10 is the scaling-state count; the family fields follow it."""
    with Model.from_config(LLAMA, max_batch_size=1, max_seq_len=8) as m:
        x = np.arange(8, dtype=np.int32)[None] % 97
        m.step(x, x, lr=1e-3)
        m.save_optimizer(tmp_path / "opt.bin")
        h = struct.unpack("<256i", (tmp_path / "opt.bin").read_bytes()[:HEADER_BYTES])
        assert h[1] == 2 and h[10] == 0 and h[11] == _lib.FAMILIES["llama"] and h[12] == 2
        m.load_optimizer(tmp_path / "opt.bin")
        assert m.step_count == 1

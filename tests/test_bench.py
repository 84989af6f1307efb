"""The benchmark drivers' parsing of llm.c's output: a regex that stops
matching would waste a device call, so it is checked here on llm.c's own
line format (train_gpt2.cu's printf, train_llama3.cu's too), with the model
file llmc writes for llm.c's llama3 branch."""
import dataclasses

import numpy as np
import pytest

import pyllmc
from bench import llama3_peer
from bench.peer_bench import llm_c_step_times, llmc_config

LLM_C_LINE = ("step %4d/%d | loss %7.6f (%+.2fz)| norm %6.4f (%+.2fz)| lr %.2e | %.2f ms | "
              "%.1f%% bf16 MFU | %.0f tok/s\n")


def test_llm_c_step_times():
    text = "device memory usage: 23700 MiB / 143771 MiB\n" + "".join(
        LLM_C_LINE % (step, 10, 11.0, 0.0, 1.5, 0.0, 6e-4, ms, -100.0, 460000.0)
        for step, ms in [(1, 5000.0), (2, 1104.77), (3, 1098.5), (10, 1101.25)])
    assert llm_c_step_times(text, 2) == [1104.77, 1098.5, 1101.25]
    assert llm_c_step_times(text, 3) == [1098.5, 1101.25]
    assert llm_c_step_times("val loss 11.0\n", 1) == []


# ---- llm.c's llama3 branch (bench/llama3_peer.py) ------------------------------

def branch_file_bytes(ints, floats):
    """The bytes train_llama3.cu reads from a bf16 model file with this header:
    its fill_in_parameter_sizes, written again here from its source (float
    arithmetic of the SwiGLU width included), so a layout llmc writes and the
    branch would misread fails here rather than on the GPU."""
    V, L, NH, NKV, C, multiple_of = (int(v) for v in ints[3:9])
    hidden = int(np.float32(floats[0]) * np.float32(2 * (4 * C) // 3))
    hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
    qkv = (NH + 2 * NKV) * (C // NH)
    per_layer = (2 * C + qkv * C + qkv + C * C + C + 2 * C + 2 * hidden * C + 2 * hidden
                 + C * hidden + C)
    return 2 * 256 * 4 + 2 * (2 * V * C + L * per_layer + 2 * C)


@pytest.mark.parametrize("untied", [1, 0])
def test_llama3_peer_model_file(tmp_path, untied):
    """llmc's file of a small odd Llama in the branch's format: the header fields it
    reads and exactly the bytes it reads (tied too: the branch still reads a head)."""
    config = pyllmc.Config(max_seq_len=64, vocab_size=301, num_layers=2, num_heads=4,
                           channels=64, family=1, num_kv_heads=2, ffn_hidden=200,
                           untied_head=untied)
    path = tmp_path / "model.bin"
    llama3_peer.write_model(path, config)
    ints = np.fromfile(path, dtype=np.int32, count=256)
    floats = np.fromfile(path, dtype=np.float32, count=256, offset=1024)
    assert list(ints[:8]) == [20240803, 5, 64, 301, 2, 4, 2, 64]  # magic, bf16, shape
    assert floats[1] == np.float32(1e-5) and floats[2] == 10000.0  # norm eps, rope theta
    assert path.stat().st_size == branch_file_bytes(ints, floats)
    assert pyllmc.Config.from_file(path).untied_head == untied


def test_llama3_peer_untied_size():
    base, untied = pyllmc.Config.preset("llama3.2-1b"), llmc_config("llama3.2-1b-untied")
    assert (base.untied_head, untied.untied_head) == (0, 1)
    assert dataclasses.replace(untied, untied_head=0) == base
    assert llmc_config("llama3.2-1b") == base


def test_llama3_peer_command_and_output():
    cmd = llama3_peer.command("/b/train_llama3cu", "/m.bin", "/d/train.bin", "/d/val.bin", B=16,
                              T=1024, micro_steps=4, steps=10, lr=6e-4, weight_decay=0.1,
                              recompute=0)
    flags = dict(zip(cmd[1::2], cmd[2::2]))
    assert cmd[0] == "/b/train_llama3cu" and len(cmd) % 2 == 1
    assert flags == {"-e": "/m.bin", "-i": "/d/train.bin", "-j": "/d/val.bin", "-a": "0",
                     "-b": "16", "-t": "1024", "-d": "65536", "-x": "10", "-k": "constant",
                     "-l": "0.0006", "-u": "0", "-c": "0.1", "-r": "0"}
    # train_llama3.cu:1867 prints llm.c's step line; its loop ends with the average
    text = "".join(LLM_C_LINE % (step, 3, 11.9, 0.0, 2.5, 0.0, 6e-4, ms, -100.0, 60000.0)
                   for step, ms in [(1, 9000.0), (2, 1012.5), (3, 1010.25)])
    assert llm_c_step_times(text, 2) == [1012.5, 1010.25]
    assert not llama3_peer.finished(text)
    assert llama3_peer.finished(text + "total average iteration time: 1011.375000 ms\n")

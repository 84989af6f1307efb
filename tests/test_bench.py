"""The benchmark drivers' parsing of llm.c's output: a regex that stops
matching would waste a device call, so it is checked here on llm.c's own
line format (train_gpt2.cu's printf)."""
from bench.peer_bench import llm_c_step_times

LLM_C_LINE = ("step %4d/%d | loss %7.6f (%+.2fz)| norm %6.4f (%+.2fz)| lr %.2e | %.2f ms | "
              "%.1f%% bf16 MFU | %.0f tok/s\n")


def test_llm_c_step_times():
    text = "device memory usage: 23700 MiB / 143771 MiB\n" + "".join(
        LLM_C_LINE % (step, 10, 11.0, 0.0, 1.5, 0.0, 6e-4, ms, -100.0, 460000.0)
        for step, ms in [(1, 5000.0), (2, 1104.77), (3, 1098.5), (10, 1101.25)])
    assert llm_c_step_times(text, 2) == [1104.77, 1098.5, 1101.25]
    assert llm_c_step_times(text, 3) == [1098.5, 1101.25]
    assert llm_c_step_times("val loss 11.0\n", 1) == []

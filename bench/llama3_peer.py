"""
llm.c's llama3 branch (train_llama3.cu, d36f0e6, carried in .carry/peers/llm.c-llama3)
as a peer of llmc at a Llama shape: its build, the model file it fine-tunes from, its
command line and its step times. bench/peer_bench.py runs it beside llmc.

    python3 -m bench.llama3_peer [--peers .carry/peers] [--work /tmp/llmc-llama3-peer]

builds train_llama3cu with llm.c.sh's flags but without cuDNN (bf16, sm_90, no NCCL/MPI):
the branch's Llama blocks have no cuDNN attention yet, a cuDNN build prints "cuDNN path
TODO" and exits 0 at the first layer (train_llama3.cu:708, 913; found on the H200), so it
runs its own attention kernels, which keep each layer's attention matrix.
in a copy of the branch under --work, so the carried source stays as it came.

What the branch needs, from its source:
- A model file to start from (-e): it cannot initialise one (train_llama3.cu:1592).
  Magic 20240803, version 5 (bf16; the default build, PRECISION=BF16, refuses version 3,
  train_llama3.cu:558), llm.c's 256 ints + 256 floats: llmc writes that format
  (Model.save(path, "bf16")). The SwiGLU width comes from multiple_of and
  ffn_dim_multiplier (train_llama3.cu:151); llmc writes multiple_of = the width.
- It always has an output layer of its own (wlmhead, train_llama3.cu:156), the logits'
  weight (743) with its own gradient (839), apart from wte: a tied model (Llama 3.2 1B)
  trains untied there (1.50B parameters, not 1.24B), so llmc's row beside it is the
  untied shape (peer_bench's `llama3.2-1b-untied`).
- Shards: llm.c's uint16 GPT-2 files (magic 20240520) or uint32 (20240801 v7), both read
  (llmc/dataloader.h:78-90): the FineWeb sample's GPT-2 shard as it is, the same tokens
  llmc reads (GPT-2 ids are valid in Llama 3's 128,256 vocabulary).
- No tokenizer: its loading is commented out (train_llama3.cu:1672), and validation,
  HellaSwag, sampling and checkpoints sit in an `if(0)` block (train_llama3.cu:1709), so
  no flag is needed to skip them.
- -a 0: the default -a 1 trains on the first batch of the *val* shard again and again
  (train_llama3.cu:1451, 1529). With -a 0 it shuffles the batches (a permuted loader,
  train_llama3.cu:1611; no flag for file order).
- Optimizer: -l rate, -u 0 warm-up, -k constant, -c weight decay; AdamW betas 0.9/0.95,
  clip 1.0 fixed (train_llama3.cu:1845); fp32 master weights by default (-w 1).
- -r 0|1|2: recompute nothing | SwiGLU (default) | SwiGLU and the RMSNorms.
- It prints llm.c's `step n/N | ... | X ms | ...` lines (CUDA events around a whole
  optimizer step, train_llama3.cu:1867), parsed as llm.c's are.
- RoPE: use_scaled_rope applies Llama 3.1's fixed scaling (factor 8) where 3.2's is 32:
  a host-side table computed once, so the step time does not depend on it.
"""
import argparse
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

BRANCH = "llm.c-llama3"
CUDA = Path("/usr/local/cuda")
# NVML to link against: the toolkit's stub (llm.c.sh's), else the driver's library
NVML = [CUDA / "targets/x86_64-linux/lib/stubs/libnvidia-ml.so",
        Path("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1")]


def wheel_paths():
    """(lib folders, include folders) of the nvidia pip wheels (cuBLAS) of this Python."""
    nvidia = Path(sysconfig.get_paths()["purelib"]) / "nvidia"
    return [nvidia / "cu13/lib"], [nvidia / "cu13/include"]


def run_env():
    """The environment train_llama3cu runs in: the wheels' libraries first, as llm.c.sh's."""
    libs, _ = wheel_paths()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join([*map(str, libs), str(CUDA / "lib64"),
                                       env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    return env


def build(peers, work):
    """Builds work/train_llama3cu from peers/llm.c-llama3 with llm.c.sh's make line;
    returns its path; train_llama3cu is a phony target of its Makefile, compiled each time."""
    peers, work = Path(peers).resolve(), Path(work)
    shutil.copytree(peers / BRANCH, work, symlinks=True, dirs_exist_ok=True)
    for path in [work, *work.rglob("*")]:  # the carried source may be read-only
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    # the wheels ship only versioned names: give the linker unversioned ones
    (cu13_lib,), (cu13_include,) = wheel_paths()
    links = work / "link"
    links.mkdir(exist_ok=True)
    for name, target in [("libcublas.so", cu13_lib / "libcublas.so.13"),
                         ("libcublasLt.so", cu13_lib / "libcublasLt.so.13"),
                         ("libnvidia-ml.so", next((p for p in NVML if p.exists()), NVML[0]))]:
        (links / name).unlink(missing_ok=True)
        (links / name).symlink_to(target)
    # the toolkit's CUDA headers before the cu13 wheel's: that wheel may be newer than
    # nvcc, and its device intrinsics then call builtins this nvcc lacks (ptxas: unresolved
    # __nv_fshl_wrap_impl, from the branch's __funnelshift_l in llmc/adamw.cuh:28);
    # cuBLAS's headers come from the wheel
    includes = f"-I{CUDA / 'include'} -I{cu13_include}"
    cmd = ["make", "train_llama3cu", "USE_CUDNN=0", "NO_MULTI_GPU=1", "NO_USE_MPI=1",
           "GPU_COMPUTE_CAPABILITY=90", f"NVCC_INCLUDES={includes}",
           f"NVCC_LDLIBS=-L{links} -L{CUDA / 'lib64'}"]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building {BRANCH} failed (rc {proc.returncode}):\n"
                           f"{(proc.stdout + proc.stderr)[-4000:]}")
    return work / "train_llama3cu"


def write_model(path, config, seed=0):
    """Writes llmc's initialisation of config (a pyllmc.Config) as a bf16 file in the
    branch's format; made on the CPU backend with the smallest plan, so it holds
    only the fp32 weights (4 bytes a parameter) while it writes."""
    import pyllmc
    model = pyllmc.Model.from_config(config, device="cpu", max_batch_size=1, max_seq_len=1,
                                     seed=seed)
    try:
        model.save(path, dtype="bf16")
    finally:
        model.close()


def command(binary, model_file, train, val, B, T, micro_steps, steps, lr, weight_decay,
            recompute):
    """train_llama3cu's command line for steps optimizer steps of B x T x micro_steps
    tokens at a constant rate."""
    return [str(binary), "-e", str(model_file), "-i", str(train), "-j", str(val), "-a", "0",
            "-b", str(B), "-t", str(T), "-d", str(B * T * micro_steps), "-x", str(steps),
            "-k", "constant", "-l", str(lr), "-u", "0", "-c", str(weight_decay),
            "-r", str(recompute)]


def finished(text):
    """Whether the branch got through its training loop: it prints its average last.
    (It may still exit non-zero after it: main frees a Tokenizer it never initialised,
    train_llama3.cu:1671 and 1890.)"""
    return "total average iteration time" in text


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().parent.parent
    p.add_argument("--peers", default=str(here / ".carry" / "peers"),
                   help="folder holding llm.c-llama3")
    p.add_argument("--work", default="/tmp/llmc-llama3-peer", help="where the copy is built")
    a = p.parse_args()
    try:
        print(build(a.peers, a.work))
    except (RuntimeError, OSError) as e:
        sys.exit(str(e))


if __name__ == "__main__":
    main()

"""
llmc against its peers at the four GPT-2 sizes, in one call on one GPU, on
real text: llm.c (../shared/peers, carried as .carry/peers) at its default
and, at d12, its fastest setting; llmc through its trainer as users run it
(`python -m pyllmc.train`) and through the library's own loop
(bench/gpu_bench.py) at the recompute settings asked for, in bf16 and with
--fp8 also in FP8; optionally PyTorch (bench/gpu_torch_peer.py) under
torch.compile in bf16 (--torch) and with torchao's float8 training
(--torchao). One table last, with each peer's time divided by llmc's.

    python3 -m bench.peer_bench [--sizes d12,d24,d36,d48] [--llmc d48=1,2] [--fp8] [--torch]
                                [--torchao]
    python3 -m bench.peer_bench --sizes d12 --llmc d12=0 --precisions fp8 --llm-c-settings fastest
    python3 -m bench.peer_bench --sizes llama-124m,llama3.2-1b --torch [--fp8] [--seq-len 2048]
    python3 -m bench.peer_bench --sizes llama3.2-1b-untied [--fp8] [--torch]

Every system reads the same FineWeb token shard (--data; llm.c's step time
depends on the token distribution: its embedding gradient works per distinct
token, so random tokens made it up to 12% slower than real text does). Every
run is its own process, one after the other. Time: the median step time after
warm-up (the trainer's per-step `ms` in main.jsonl, gpu_bench.py's and
gpu_torch_peer.py's medians, llm.c's printed step times from step 2 on).
Memory, the same way for all: the peak of the GPU's used memory (nvidia-smi,
sampled every 0.2 s) while the run's process lives, less what was used before.

Every system trains with the same optimizer settings: AdamW at a constant
learning rate of 6e-4 from the first step, weight decay 0.1 (the library
loop's; the trainer's default warm-up would keep its early updates smaller
than the loop's, and the step time of a power-limited GPU depends on the
values it multiplies). --torch trains transformers' Llama at the Llama sizes.

llm.c's llama3 branch (bench/llama3_peer.py) only fine-tunes, and trains its
output layer apart from wte whatever the file says, so its row is at
`llama3.2-1b-untied`: Llama 3.2 1B's shape with an output layer of its own,
for every system in that row. llmc writes one initialisation of it (seed 0,
bf16) that the branch, the llmc loop and the trainer all start from.
"""
import argparse
import dataclasses
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import llama3_peer

HERE = Path(__file__).resolve().parent
# size: micro-batch B at T = 1024 (at other --seq-len, B * T stays), micro-steps per
# optimizer step, timed llmc steps
SIZES = {"d12": (64, 8, 8), "d24": (32, 16, 4), "d36": (32, 4, 6), "d48": (16, 4, 6),
         "llama-124m": (64, 8, 8), "llama3.2-1b": (16, 4, 6), "llama3.2-1b-untied": (16, 4, 6)}
LLMC_DEFAULT = {"d12": "0,1", "d24": "1,2", "d36": "1,2", "d48": "1,2", "llama-124m": "0",
                "llama3.2-1b": "0", "llama3.2-1b-untied": "0"}
UNTIED = "-untied"  # SIZE-untied: the Llama preset SIZE with an output layer of its own
LR, WEIGHT_DECAY = 6e-4, 0.1
T = 1024  # --seq-len


def shape(size):
    """(B, micro-steps, timed steps) of size at this T."""
    B, micro, steps = SIZES[size]
    return max(1, B * 1024 // T), micro, steps
# llm.c settings per size: (label, extra flags); the first is its default
LLM_C = {"d12": [("default (-r 1)", []), ("fastest (-r 0 -ge 2)", ["-r", "0", "-ge", "2"])]}
# llm.c's llama3 branch: (label, its recompute) per size it runs at
LLAMA3_PEER = {"llama3.2-1b-untied": [("default (-r 1)", 1), ("fastest (-r 0)", 0)]}
FOOTNOTES = {"llm.c-llama3": "llm.c-llama3: llm.c's llama3 branch fine-tuning llmc's file "
             "(the loop and the trainer start from it too); it shuffles its batches (no flag "
             "for file order) where the others read consecutive windows, and applies Llama "
             "3.1's RoPE scaling (factor 8, not 3.2's 32: a table made once, no step time)."}


def llmc_config(size):
    """llmc's Config of a size: its preset, or for PRESET-untied that Llama preset
    with its own output layer."""
    import pyllmc
    preset = size.removesuffix(UNTIED)
    config = pyllmc.Config.preset(preset)
    return dataclasses.replace(config, untied_head=1) if preset != size else config


def gpu_used_mib():
    """Used memory of each GPU (MiB), or [] without nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(v) for v in out.split()]


def run_watched(cmd, env=None, cwd=None):
    """Runs cmd; returns (stdout+stderr, rc, peak GB above the idle level on the busiest GPU)."""
    base = gpu_used_mib()
    peak = list(base)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)

    def watch():
        while proc.poll() is None:
            peak[:] = [max(a, b) for a, b in zip(peak, gpu_used_mib())]
            time.sleep(0.2)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    out, _ = proc.communicate()
    w.join()
    return out, proc.returncode, max((p - b for p, b in zip(peak, base)), default=0) * 1048576 / 1e9


def llm_c_step_times(text, first):
    """ms of each `step n/N | ... | X ms |` line llm.c printed, from step `first` on."""
    return [float(m.group(2)) for m in re.finditer(r"step\s+(\d+)/\d+ \|.*?\| ([\d.]+) ms \|", text)
            if int(m.group(1)) >= first]


def run_llm_c(peers, size, flags, data, steps):
    B, micro, _ = shape(size)
    train, val = data
    cmd = ["bash", str(peers / "llm.c.sh"), "run", "-i", str(train), "-j", str(val), "-v", "100000",
           "-m", "1", "-s", "0", "-h", "0", "-n", "0", "-e", size, "-b", str(B), "-t", str(T),
           "-d", str(B * T * micro), "-x", str(steps), "-l", str(LR), "-u", "0", "-q", "1.0",
           "-c", str(WEIGHT_DECAY), *flags]
    out, rc, gb = run_watched(cmd)
    ms = llm_c_step_times(out, 2)
    if rc != 0 or not ms:
        print(f"llm.c {size} {flags}: failed (rc {rc})\n{out[-3000:]}", flush=True)
        return None
    return {"ms_per_step": statistics.median(ms), "gb": gb, "steps": len(ms)}


def run_llama3_peer(binary, model_file, size, recompute, data, steps):
    """llm.c's llama3 branch fine-tuning model_file: ms/step (median from its step 2), GB."""
    B, micro, _ = shape(size)
    train, val = data
    cmd = llama3_peer.command(binary, model_file, train, val, B, T, micro, steps, LR,
                              WEIGHT_DECAY, recompute)
    out, rc, gb = run_watched(cmd, env=llama3_peer.run_env(), cwd=Path(binary).parent)
    ms = llm_c_step_times(out, 2)
    if not llama3_peer.finished(out) or not ms:
        print(f"llm.c-llama3 {size} -r {recompute}: failed (rc {rc})\n{out[-3000:]}", flush=True)
        return None
    return {"ms_per_step": statistics.median(ms), "gb": gb, "steps": len(ms), "rc": rc}


def build_llama3_peer(peers, work):
    """train_llama3cu's path, or None (saying why) when it does not build."""
    t0 = time.perf_counter()
    try:
        binary = llama3_peer.build(peers, work)
    except (RuntimeError, OSError) as e:
        print(f"llm.c-llama3: {e}", flush=True)
        return None
    print(f"llm.c-llama3 built in {time.perf_counter() - t0:.0f} s", flush=True)
    return binary


def run_llmc(size, recompute, steps, fp8, data, model=None):
    """The library's loop (gpu_bench.py) on the shard: ms/step, GB. model: a model
    file to start from instead of size's preset."""
    B, micro, _ = shape(size)
    spec = f"{model or size},{B},{T},{micro},{recompute}" + (",fp8" if fp8 else "")
    out, rc, gb = run_watched([sys.executable, str(HERE / "gpu_bench.py"), "--child", "--run", spec,
                               "--steps", str(steps), "--warmup", "2", "--data", str(data)])
    if rc != 0:
        print(f"llmc {spec}: failed (rc {rc})\n{out[-3000:]}", flush=True)
        return None
    r = json.loads(out.strip().splitlines()[-1])
    return {"ms_per_step": r["ms_per_step"], "gb": gb, "library_gb": r["library_gb"],
            "losses": r["losses"]}


def run_trainer(size, recompute, steps, fp8, data, model=None):
    """`python -m pyllmc.train` on the shard as a user runs it: median of its
    logged step times after 2 warm-up steps, GB. Its folder is in /dev/shm
    (the final checkpoint of d48 is 18 GB). model: as run_llmc's."""
    B, micro, _ = shape(size)
    out_dir = Path(tempfile.mkdtemp(prefix="llmc-trainer-", dir="/dev/shm"))
    cmd = [sys.executable, "-m", "pyllmc.train", "--device", "cuda", "--model", model or size, "-B", str(B),
           "-T", str(T), "--total-batch-size", str(B * T * micro), "--steps", str(steps + 2),
           "--train-data", str(data), "--sample-every", "0", "--no-progress", "--print-every", "0",
           "--recompute", str(recompute), "--out-dir", str(out_dir / "run"), "--lr", str(LR),
           "--warmup-steps", "0", "--lr-schedule", "constant", "--weight-decay", str(WEIGHT_DECAY),
           "--seed", "0",  # the loop's: the same weights, so the two differ only in the program
           *(["--precision", "fp8"] if fp8 else [])]
    try:
        out, rc, gb = run_watched(cmd, cwd=HERE.parent)
        if rc != 0:
            print(f"trainer {size} r{recompute}: failed (rc {rc})\n{out[-3000:]}", flush=True)
            return None
        logged = [json.loads(line) for line in open(out_dir / "run" / "main.jsonl")]
        ms = [r["ms"] for r in logged if "ms" in r and r["step"] >= 2]
        return {"ms_per_step": statistics.median(ms), "gb": gb,
                "losses": [r["train_loss"] for r in logged if "train_loss" in r]}
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def run_torch(size, fp8, data):
    B, micro, _ = shape(size)
    preset = size.removesuffix(UNTIED)
    out, rc, gb = run_watched([sys.executable, "-m", "bench.gpu_torch_peer", "--preset", preset,
                               "-B", str(B), "-T", str(T), "--micro-steps", str(micro), "--compile",
                               "--data", str(data), *(["--fp8"] if fp8 else []),
                               *(["--untied"] if preset != size else [])],
                              cwd=HERE.parent)
    if rc != 0:
        print(f"torch.compile {size}: failed (rc {rc})\n{out[-3000:]}", flush=True)
        return None
    r = json.loads(next(l for l in out.splitlines() if l.startswith("{")))
    return {"ms_per_step": r["ms_per_step"], "gb": gb}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="d12,d24,d36,d48", help=f"of {', '.join(SIZES)}")
    p.add_argument("--seq-len", type=int, default=1024, help="T (B shrinks to keep B x T)")
    p.add_argument("--llmc", action="append", default=[],
                   help="SIZE=R1,R2: llmc's recompute settings at SIZE (default %s)" % LLMC_DEFAULT)
    p.add_argument("--peers", default=str(HERE.parent / ".carry" / "peers"),
                   help="folder with llm.c.sh and a built llm.c, and llm.c-llama3's source")
    p.add_argument("--llama3-work", default="/tmp/llmc-llama3-peer",
                   help="where llm.c-llama3 is built (bench/llama3_peer.py)")
    p.add_argument("--llm-c-steps", type=int, default=10, help="llm.c steps per run")
    p.add_argument("--torch", action="store_true",
                   help="also PyTorch torch.compile in bf16 (slow to compile)")
    p.add_argument("--torchao", action="store_true",
                   help="also PyTorch torch.compile with torchao's float8 training")
    p.add_argument("--data", default=str(HERE.parent / ".carry" / "fineweb_sample"),
                   help="folder of FineWeb token shards (*train*.bin, *val*.bin)")
    p.add_argument("--fp8", action="store_true", help="also llmc with FP8 block products")
    p.add_argument("--precisions", help="llmc's precisions, comma-separated (default: bf16, "
                   "with --fp8 bf16,fp8; e.g. fp8 alone for a short call)")
    p.add_argument("--llm-c-settings", default="all", choices=["all", "default", "fastest"],
                   help="which of llm.c's settings run where it has several (d12, llm.c-llama3)")
    p.add_argument("--no-trainer", action="store_true", help="llmc's library loop only")
    p.add_argument("--json")
    a = p.parse_args()
    global T
    T = a.seq_len
    settings = dict(LLMC_DEFAULT, **dict(s.split("=", 1) for s in a.llmc))
    def wanted(label):  # one of llm.c's settings (--llm-c-settings)
        return a.llm_c_settings == "all" or label.startswith(a.llm_c_settings)
    precisions = (a.precisions or ("bf16,fp8" if a.fp8 else "bf16")).split(",")
    if not set(precisions) <= {"bf16", "fp8"}:
        p.error(f"--precisions {a.precisions}: expected bf16 and/or fp8")
    train = sorted(Path(a.data).glob("*train*.bin"))[0]
    val = sorted(Path(a.data).glob("*val*.bin"))[0]
    rows = []
    llama3_binary = None
    for size in a.sizes.split(","):
        B, micro, steps = shape(size)
        peers = {}
        model_dir = model = None
        try:
            if size.endswith(UNTIED):  # no preset: llmc's runs start from a file of it
                model_dir = Path(tempfile.mkdtemp(prefix="llmc-untied-", dir="/dev/shm"))
                model = model_dir / "model.bin"
                t0 = time.perf_counter()
                llama3_peer.write_model(model, llmc_config(size))
                print(f"wrote {model} in {time.perf_counter() - t0:.0f} s", flush=True)
            for label, flags in [] if size.startswith("llama") else LLM_C.get(size, [("default", [])]):
                if not wanted(label):
                    continue
                peers[f"llm.c {label}"] = run_llm_c(Path(a.peers), size, flags, (train, val),
                                                    a.llm_c_steps)
                print(f"llm.c {size} {label}: {peers[f'llm.c {label}']}", flush=True)
            if size in LLAMA3_PEER:
                llama3_binary = llama3_binary or build_llama3_peer(a.peers, a.llama3_work)
                for label, recompute in LLAMA3_PEER[size]:
                    if not wanted(label):
                        continue
                    name = f"llm.c-llama3 {label}"
                    peers[name] = llama3_binary and run_llama3_peer(
                        llama3_binary, model, size, recompute, (train, val), a.llm_c_steps)
                    print(f"{name} {size}: {peers[name]}", flush=True)
            for fp8 in [False] * a.torch + [True] * a.torchao:
                name = "torch.compile" + (" fp8" if fp8 else "")
                peers[name] = run_torch(size, fp8, train)
                print(f"{name} {size}: {peers[name]}", flush=True)
            for r in settings[size].split(","):
                for fp8 in [name == "fp8" for name in precisions]:
                    mine = {"loop": run_llmc(size, int(r), steps, fp8, train, model)}
                    if not a.no_trainer:
                        mine["trainer"] = run_trainer(size, int(r), steps, fp8, train, model)
                    print(f"llmc {size} recompute {r}{' fp8' if fp8 else ''}: {mine}", flush=True)
                    rows.append({"size": size, "B": B, "micro_steps": micro, "recompute": int(r),
                                 "precision": "fp8" if fp8 else "bf16", "llmc": mine,
                                 "peers": peers})
        finally:
            if model_dir:
                shutil.rmtree(model_dir, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    print(f"\n{'size':4} {'B x micro':>9} {'llmc':>9} {'trainer ms':>10} {'GB':>5} {'loop ms':>8} | "
          "peer: ms/step, GB, its time / the trainer's")
    for row in rows:
        head = (f"{row['size']:4} {row['B']:>4} x {row['micro_steps']:<2} "
                f"r{row['recompute']} {row['precision']:4}")
        mine = row["llmc"].get("trainer") or row["llmc"]["loop"]
        loop = row["llmc"]["loop"]
        if not mine:
            print(f"{head} failed")
            continue
        trainer = row["llmc"].get("trainer")
        cells = [f"{name} {v['ms_per_step']:.1f}, {v['gb']:.1f}, {v['ms_per_step'] / mine['ms_per_step']:.2f}x"
                 for name, v in row["peers"].items() if v]
        print(f"{head} {trainer['ms_per_step'] if trainer else float('nan'):10.1f} {mine['gb']:5.1f} "
              f"{loop['ms_per_step'] if loop else float('nan'):8.1f} | " + "; ".join(cells))
    shown = {name.split()[0] for row in rows for name, v in row["peers"].items() if v}
    for peer, note in FOOTNOTES.items():
        if peer in shown:
            print(note)


if __name__ == "__main__":
    main()

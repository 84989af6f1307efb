"""
Train a GPT-2 with libllmc.

    python -m pyllmc.train                    # small model, built-in corpus, CPU, a few minutes
    python -m pyllmc.train --model d12 --device cuda \\
        --train-data "data/edu_fineweb10B/edu_fineweb_train_*.bin" \\
        --val-data "data/edu_fineweb10B/edu_fineweb_val_*.bin" \\
        -B 64 -T 1024 --total-batch-size 524288 --lr 6e-4 --warmup-steps 700 \\
        --steps 18865 --final-lr-frac 0 --weight-decay 0.1 --hellaswag-every 250
    python -m pyllmc.train --out-dir out --resume   # go on after an interruption
    python -m pyllmc.train --nproc-per-node 8 --zero 1 ...   # 8 local ranks, data parallel
    mpirun -np 16 python -m pyllmc.train ...   # or srun, or torchrun's RANK/WORLD_SIZE/... variables

Writes OUT_DIR/main.log (llm.c's lines: `s:N trl:... lr:... norm:...`,
`s:N tel:...`, `s:N eval:...`), OUT_DIR/main.jsonl (the same as JSON) and
checkpoints (see pyllmc/checkpoint.py). A resumed run repeats the loss curve
of an uninterrupted one bit for bit.
"""
import argparse
import collections
import dataclasses
import io
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

import numpy as np
from tqdm import tqdm

from . import checkpoint, distributed
from .cli import HelpFormatter
from ._lib import FileFormatError, LlmcIOError
from .sample import sample_text
from .schedule import SCHEDULES, continued_rate
from .files import os_error_message, read_regular, write_atomic
from .shards import ShardError, val_batches, DataLoader
from .tokenizer import TokenizerError, load_tokenizer

# dense bf16 peak of GPUs whose name contains the key (first match wins)
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0)]
# A resumed run takes its settings from the saved run. These leave the trained
# weights alone, so --resume may give them anew; any other (model, data, batch,
# schedule, ...) must stay as it was, but --steps may grow (see restore_settings).
FREE_ON_RESUME = ("print_every", "no_progress", "keep_last", "checkpoint_every", "val_every",
                  "start_if_empty",
                  "val_steps", "sample_every", "sample_length", "tokenizer", "hellaswag_every",
                  "hellaswag_data", "hellaswag_limit", "num_threads", "peak_tflops", "recompute",
                  "precision",  # an FP8 run may go on in bf16 and the other way round
                  # how the ranks are laid out: a checkpoint resumes on any number of them
                  "zero", "nproc_per_node", "rendezvous", "rendezvous_path", "rendezvous_timeout",
                  "comm_timeout")
# settings of the launch itself, not of the run: left out of the check that
# every rank got the same arguments
LAUNCH_ARGS = ("nproc_per_node",)
MPI_EXIT_GRACE_S = 3.0


class TrainError(Exception):
    """A problem with the run's settings, data or folder, told in one line."""


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m pyllmc.train", usage="%(prog)s [options]",
        description=__doc__.split("\n\n")[0].strip(),
        epilog="With no arguments: a 4-layer, 128-channel GPT-2 trained for 300 steps on the "
               "Python Language Reference (shipped with every CPython), on the CPU.",
        formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--train-data", metavar="PATTERN",
                   help="training shards: a glob pattern, file or folder of llm.c .bin shards "
                        "(a folder: all but its _val_ shards; default: the built-in corpus, "
                        "tokenized on first use)")
    g.add_argument("--val-data", metavar="PATTERN",
                   help="validation shards (a folder: its _val_ shards; default: the built-in "
                        "corpus' when --train-data is not given, else no validation)")
    g.add_argument("--shuffle", action="store_true",
                   help="visit shards and the batches inside them in an order drawn from "
                        "--seed and the epoch (default: file order, as written)")
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="PRESET_OR_FILE",
                   help="d12, d24, d36, d48 (GPT-2 124M..1558M, fresh weights), llama-124m, "
                        "llama3.2-1b, llama3.2-3b, llama3.1-8b (Llama 3 shapes, fresh weights) or an "
                        "llm.c model file to start from (default: the shape given below)")
    g.add_argument("--family", choices=("gpt2", "llama"), default="gpt2",
                   help="architecture of the shape below, without --model")
    g.add_argument("--num-kv-heads", type=int, default=0,
                   help="Llama: key/value heads (0: --num-heads), without --model")
    g.add_argument("--ffn-hidden", type=int, default=0,
                   help="Llama: SwiGLU width (0: 8C/3 rounded up to 256), without --model")
    g.add_argument("--num-layers", type=int, default=4, help="layers, without --model")
    g.add_argument("--num-heads", type=int, default=4, help="attention heads, without --model")
    g.add_argument("--channels", type=int, default=128, help="embedding width, without --model")
    g.add_argument("--max-seq-len", type=int, default=1024,
                   help="positions the model has, without --model")
    g = p.add_argument_group("batch and optimizer")
    g.add_argument("-B", "--batch-size", type=int, default=8, help="sequences per micro-batch")
    g.add_argument("-T", "--seq-len", type=int, default=128, help="tokens per sequence")
    g.add_argument("--total-batch-size", type=int, default=0,
                   help="tokens per optimizer step; a multiple of B*T*ranks, the rest is made "
                        "up by gradient accumulation (0: one B x T batch, its B sequences split "
                        "between the ranks, so the same on any number of ranks)")
    g.add_argument("--steps", type=int, default=300,
                   help="optimizer steps to train for (0: one pass over the training data)")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    g.add_argument("--warmup-steps", type=int, default=20, help="linear warmup steps")
    g.add_argument("--lr-schedule", choices=SCHEDULES, default="cosine",
                   help="decay after warmup (wsd: warmup, stable, decay over the last "
                        "--wsd-decay-fraction of the steps)")
    g.add_argument("--final-lr-frac", type=float, default=0.1,
                   help="final learning rate as a fraction of --lr")
    g.add_argument("--wsd-decay-fraction", type=float, default=0.2,
                   help="share of the steps the wsd schedule decays over")
    g.add_argument("--weight-decay", type=float, default=0.1,
                   help="AdamW weight decay (2-D weights only)")
    g.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1")
    g.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2")
    g.add_argument("--grad-clip", type=float, default=1.0,
                   help="clip the global gradient norm to this (0: no clipping)")
    g.add_argument("--skip-bad-updates", action="store_true",
                   help="skip the update of a step whose loss is NaN/inf or a spike (see "
                        "--spike-threshold) instead of stopping or applying it")
    g.add_argument("--spike-threshold", type=float, default=6.0,
                   help="a loss this many standard deviations above the recent window's mean "
                        "is reported as a spike")
    g.add_argument("--spike-window", type=int, default=100,
                   help="steps in the recent-loss window (spike checks start once it is full)")
    g = p.add_argument_group("evaluation and sampling")
    g.add_argument("--val-every", type=int, default=50,
                   help="validation loss every N steps, and at the end (0: only at the end)")
    g.add_argument("--val-steps", type=int, default=20,
                   help="validation batches (B x T each) per evaluation")
    g.add_argument("--sample-every", type=int, default=100,
                   help="print a text sample every N steps, and at the end (0: never)")
    g.add_argument("--sample-length", type=int, default=64, help="tokens per sample")
    g.add_argument("--tokenizer", metavar="FILE",
                   help="the data's local tokenizer.json or tiktoken rank file, for the samples "
                        "and HellaSwag (default: GPT-2's; samples are skipped when the model's "
                        "vocabulary is larger)")
    g.add_argument("--hellaswag-every", type=int, default=0,
                   help="HellaSwag accuracy every N steps, and at the end (0: never)")
    g.add_argument("--hellaswag-data", metavar="PATH",
                   help="local HellaSwag file (jsonl or llm.c .bin; default: the validation set, "
                        "downloaded once)")
    g.add_argument("--hellaswag-limit", type=int, help="score only the first N examples")
    g = p.add_argument_group("checkpoints and output")
    g.add_argument("--out-dir", default="out", help="folder for logs and checkpoints")
    g.add_argument("--checkpoint-every", type=int, default=200,
                   help="checkpoint every N steps, and at the end (0: only at the end)")
    g.add_argument("--keep-last", type=int, default=2,
                   help="keep the newest N checkpoints (0: all)")
    g.add_argument("--resume", action="store_true",
                   help="go on from the newest complete checkpoint in --out-dir (an error when "
                        "there is none, unless --start-if-empty)")
    g.add_argument("--start-if-empty", action="store_true",
                   help="with --resume: start a new run when --out-dir holds no complete "
                        "checkpoint yet (for job scripts that are rerun until done)")
    g.add_argument("--print-every", type=int, default=10,
                   help="print a loss line every N steps (0: never)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("system")
    g.add_argument("--device", default="cpu", help="cpu or cuda")
    g.add_argument("--seed", type=int, default=42, help="weight init and data order")
    g.add_argument("--num-threads", type=int, default=0, help="CPU threads (0: all cores)")
    g.add_argument("--recompute", type=int, choices=[0, 1, 2],
                   help="CUDA activation recompute: 0 none, 1 GELU, 2 GELU and LayerNorm. "
                   "Default by width, the fastest setting within llm.c's memory at its batch "
                   "sizes (H200, bench/peer_bench.py): 0 up to 768 channels (d12), 1 up to 1280 "
                   "(d24, d36), 2 above (d48); each level costs 1-2.5%% in speed")
    g.add_argument("--precision", choices=["bf16", "fp8"], default="bf16",
                   help="CUDA arithmetic of the matrix products: bf16 (default), or fp8 "
                   "(E4M3/E5M2 with delayed per-tensor scaling; Hopper or newer): on an H200 "
                   "1.19x bf16's speed at d12, 1.29x at d48, 1.35x at Llama 3.2 1B, a 2,000-step d12 "
                   "run's validation loss within 0.1%% of bf16's, but more memory at d48 "
                   "(BENCHMARKS.md). The CPU trains in fp32")
    g.add_argument("--peak-tflops", type=float,
                   help="the device's peak TFLOP/s for MFU (default: known GPUs only)")
    g = p.add_argument_group(
        "data parallel", "Ranks started by mpirun, srun or torchrun's variables (RANK, WORLD_SIZE, "
        "LOCAL_RANK, MASTER_ADDR, MASTER_PORT) train one run together: each optimizer step's "
        "--total-batch-size tokens are the same for any number of ranks, split between them.")
    g.add_argument("--nproc-per-node", type=int, default=0,
                   help="start this many local ranks (through mpirun on CPU; on CUDA one per GPU)")
    g.add_argument("--zero", type=int, default=0, choices=[0, 1],
                   help="1: ZeRO-1, the fp32 master weights and AdamW moments split across ranks "
                        "(less memory per GPU; no effect in a one-process run)")
    g.add_argument("--rendezvous", choices=["auto", "tcp", "fs"], default="auto",
                   help="how CUDA ranks not started by mpirun share NCCL's id: tcp at "
                        "MASTER_ADDR:MASTER_PORT, or fs, a file in --rendezvous-path (auto: MPI "
                        "under mpirun, else tcp)")
    g.add_argument("--rendezvous-path", metavar="FOLDER",
                   help="for --rendezvous fs: a folder every rank sees, one per launch")
    g.add_argument("--rendezvous-timeout", type=float, default=120.0,
                   help="seconds a rank waits for the others to arrive")
    g.add_argument("--comm-timeout", type=int, default=300,
                   help="seconds a collective may make no progress before the run stops (a rank "
                        "died or hangs)")
    for action in p._actions:  # short placeholders: "--steps N" reads better than "--steps STEPS"
        if action.metavar is None and action.type in (int, float):
            action.metavar = "N" if action.type is int else "X"
    return p


def check_args(args):
    positive = ["batch_size", "seq_len", "val_steps", "sample_length", "spike_window"]
    for name in positive:
        if getattr(args, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} {getattr(args, name)}: expected 1 or more")
    never_negative = ["steps", "total_batch_size", "warmup_steps", "val_every", "sample_every",
                      "hellaswag_every", "checkpoint_every", "keep_last", "print_every",
                      "grad_clip", "weight_decay", "num_threads", "nproc_per_node"]
    for name in never_negative:
        if getattr(args, name) < 0:
            raise TrainError(f"--{name.replace('_', '-')} {getattr(args, name)}: expected 0 or more")
    if args.lr <= 0:
        raise TrainError(f"--lr {args.lr}: expected a positive learning rate")
    if args.rendezvous_timeout <= 0 or args.comm_timeout < 1:
        raise TrainError("--rendezvous-timeout and --comm-timeout must be positive")
    if args.rendezvous == "fs" and not args.rendezvous_path:
        raise TrainError("--rendezvous fs needs --rendezvous-path FOLDER (seen by every rank)")


def batch_layout(args, me):
    """(micro-batches each rank runs per optimizer step, rows of each). The
    step's tokens are --total-batch-size whatever the number of ranks; by
    default one B x T batch, whose B rows the ranks split between them, so
    the same command trains the same way on any number of ranks."""
    ranks = max(1, me.world_size)
    B, tokens = args.batch_size, args.batch_size * args.seq_len
    if not args.total_batch_size:
        if B % ranks:
            raise TrainError(f"the default --total-batch-size is one batch of -B {B} sequences, "
                             f"split between the {ranks} ranks: give a -B that is a multiple of "
                             f"{ranks}, or a --total-batch-size")
        return 1, B // ranks
    if args.total_batch_size % (tokens * ranks):
        what = (f"B*T = {B}*{args.seq_len}" if ranks == 1 else
                f"B*T*ranks = {B}*{args.seq_len}*{ranks}")
        raise TrainError(f"--total-batch-size {args.total_batch_size} is not a multiple of {what} "
                         f"= {tokens * ranks}")
    return args.total_batch_size // (tokens * ranks), B


# ---- output folder and logs -------------------------------------------------

def prepare_out_dir(out_dir):
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write_test.{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as e:
        raise TrainError(f"output folder {out_dir} is not writable: {e.strerror}") from None


class RunLog:
    """main.log in llm.c's line format and main.jsonl beside it. A resumed run
    first drops the lines of steps at or after the one it resumes from (they
    will be written again, identically)."""

    def __init__(self, out_dir, start_step):
        self.paths = {"text": os.path.join(out_dir, "main.log"),
                      "json": os.path.join(out_dir, "main.jsonl")}
        for kind, path in self.paths.items():
            kept = []
            if start_step > 0 and os.path.lexists(path):
                lines = io.BytesIO(read_regular(path)).readlines()  # bytes: kept byte for byte
                kept = [line for line in lines if self._step_of(line, kind) < start_step]
            write_atomic(path, kept)
        self.files = {kind: open(path, "a") for kind, path in self.paths.items()}

    @staticmethod
    def _step_of(line, kind):
        """The step of a whole line (bytes); a line cut short by a kill, or
        damaged, counts as none."""
        try:
            if not line.endswith(b"\n"):
                raise ValueError
            step = json.loads(line)["step"] if kind == "json" else int(line.split(b" ", 1)[0][2:])
            if not isinstance(step, int) or isinstance(step, bool):
                raise ValueError
            return step
        except (ValueError, KeyError, IndexError, TypeError, RecursionError):
            return math.inf

    def write(self, step, text, **record):
        self.files["text"].write(f"s:{step} {text}\n")
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                 for k, v in record.items()}
        self.files["json"].write(json.dumps({"step": step, **clean}) + "\n")
        for f in self.files.values():
            f.flush()

    def close(self):
        for f in self.files.values():
            f.close()


# ---- model ---------------------------------------------------------------------

def open_model(args, team, resume_file=None):
    """The model, fresh or from a file; in a data-parallel run every rank
    makes this call together (team.join first meets the other ranks)."""
    import pyllmc
    me = team.join(args)
    path = resume_file or (args.model if args.model and args.model not in PRESETS else None)
    if path and not os.path.exists(path):
        raise TrainError(f"--model {path}: neither a preset ({', '.join(PRESETS)}) nor a model file")
    if path:
        config = pyllmc.Config.from_file(path)
    elif args.model:
        config = pyllmc.Config.preset(args.model)
    else:
        llama = args.family == "llama"
        config = pyllmc.Config(max_seq_len=args.max_seq_len, num_layers=args.num_layers,
                               num_heads=args.num_heads, channels=args.channels,
                               family=pyllmc._lib.FAMILIES[args.family],
                               num_kv_heads=args.num_kv_heads if llama else 0,
                               ffn_hidden=args.ffn_hidden if llama else 0)
    if args.seq_len > config.max_seq_len:
        model = f"the model in {path}" if path else "the model (--max-seq-len)"
        raise TrainError(f"-T {args.seq_len} is longer than the {config.max_seq_len} positions of "
                         f"{model}")
    recompute = args.recompute if args.recompute is not None else default_recompute(config)
    plan = dict(device=args.device, max_batch_size=batch_layout(args, me)[1],
                max_seq_len=args.seq_len,
                seed=args.seed, num_threads=args.num_threads, recompute=recompute,
                precision="fp8" if args.precision == "fp8" else "default")
    if me.distributed:
        plan.update(rank=me.rank, world_size=me.world_size, zero_stage=args.zero,
                    nccl_id=team.nccl_id, comm_timeout_s=args.comm_timeout,
                    device_index=me.local_rank if args.device == "cuda" else 0)
    if path:
        return pyllmc.Model.load(path, **plan)
    return pyllmc.Model.from_config(config, **plan)


def default_recompute(config):
    """--recompute's default: the least recompute that kept llmc within llm.c's
    GPU memory at each GPT-2 size (d12 B=64, d24 and d36 B=32, d48 B=16;
    BENCHMARKS.md), chosen by width since that is what sets the sizes apart."""
    return 0 if config.channels <= 768 else 1 if config.channels <= 1280 else 2


PRESETS = ("d12", "d24", "d36", "d48", "llama-124m", "llama3.2-1b", "llama3.2-3b", "llama3.1-8b")


def peak_flops(args):
    """The device's peak FLOP/s for MFU, or None where unknown."""
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if args.device != "cuda":
        return None
    try:
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
                              capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((tf * 1e12 for key, tf in PEAK_TFLOPS if key in name), None)


# ---- evaluation ------------------------------------------------------------------

def val_loss(model, batches, me, rows):
    """Mean of the batches' losses, each the mean over its parts of `rows`
    sequences (a model planned for `rows`); each rank evaluates every
    world_size-th part."""
    import pyllmc
    parts = [(x[i:i + rows], y[i:i + rows]) for x, y in batches for i in range(0, len(x), rows)]
    mine = []
    for x, y in parts[me.rank::max(1, me.world_size)]:
        try:
            mine.append(model.eval(x, y))
        except pyllmc.NumericError:  # weights that overflow: logged as such, like a training loss
            mine.append(math.nan)
    total, count = model.allreduce([sum(mine), len(mine)])
    return float(total / count)


def hellaswag_accuracy(module, model, examples, me):
    """HellaSwag over the examples, split between the ranks."""
    part = examples[me.rank::max(1, me.world_size)]
    result = module.evaluate(model, part) if part else {"acc": 0.0, "acc_norm": 0.0,
                                                          "num_examples": 0}
    n = result["num_examples"]
    acc, acc_norm, n = model.allreduce([result["acc"] * n, result["acc_norm"] * n, n])
    return {"acc": acc / n, "acc_norm": acc_norm / n, "num_examples": int(n)}


def load_hellaswag(args, tokenizer):
    """pyllmc.hellaswag and its examples, in tokenizer's tokens."""
    from . import hellaswag
    try:
        examples = hellaswag.load_examples(args.hellaswag_data, tokenizer=tokenizer)
    except (hellaswag.DataError, hellaswag.DownloadError) as e:
        raise TrainError(f"--hellaswag-every needs the HellaSwag data: {e}") from None
    return hellaswag, examples[:args.hellaswag_limit]


# ---- training ----------------------------------------------------------------------

def resume_point(args, given, team):
    """(step to start from, its checkpoint state or None, the model loaded
    from it with its optimizer state or None). args become the saved run's
    settings (restore_settings). A checkpoint whose state, model or optimizer
    file is damaged is reported and the next older one tried (on every rank
    alike: rank 0's failure to read a file fails the collective load on all)."""
    say = print if team.me.is_root else (lambda *a, **k: None)
    done = checkpoint.complete_steps(args.out_dir)
    if done and not args.resume:
        raise TrainError(f"{args.out_dir} already holds a run (checkpoints up to step {done[-1]}): "
                         "pass --resume to go on with it, or choose another --out-dir")
    if not done:
        if args.resume and not args.start_if_empty:
            raise TrainError(f"--resume: {no_checkpoint(args.out_dir)}; check --out-dir, or add "
                             "--start-if-empty to start a new run there")
        if args.resume:
            say(f"no complete checkpoint in {args.out_dir}: starting from step 0", file=sys.stderr)
        return 0, None, None
    for step in reversed(done):
        files = checkpoint.paths(args.out_dir, step)
        try:
            state = checkpoint.load_state(args.out_dir, step)
            saved_args_problem = checkpoint_args_problem(state["args"])
            if saved_args_problem:
                raise checkpoint.CheckpointError(f"{files['state']}: {saved_args_problem}")
            restore_settings(args, state["args"], given)
            check_args(args)
            model = open_model(args, team, files["model"])
            try:
                model.load_optimizer(files["optimizer"])
            except BaseException:
                model.close()
                raise
            return step, state, model
        except (checkpoint.CheckpointError, FileFormatError, LlmcIOError) as e:
            say(f"warning: the checkpoint of step {step} is damaged ({e}); trying an older one",
                file=sys.stderr)
    raise TrainError(f"no intact checkpoint in {args.out_dir} (all {len(done)} are damaged, see "
                     "the warnings above): move them away to start over")


def no_checkpoint(out_dir):
    """Why out_dir has no checkpoint to resume from, in words."""
    if not os.path.isdir(out_dir):
        return f"{out_dir} is not a folder"
    partial = [n for n in os.listdir(out_dir) if n.startswith(("model_", "optim_", "state_"))]
    if partial:
        return (f"{out_dir} holds no complete checkpoint ({len(partial)} checkpoint file(s) "
                "without their DONE marker: the first save was cut short)")
    return f"{out_dir} holds no checkpoint"


def checkpoint_args_problem(saved):
    """What is wrong with a checkpoint's saved settings, or None: each must
    have the type (and for choices a value) the command line gives it."""
    for action in build_parser()._actions:
        if action.dest not in saved or action.dest == "help":
            continue
        value, name = saved[action.dest], "--" + action.dest.replace("_", "-")
        if isinstance(action, argparse._StoreTrueAction):
            ok = isinstance(value, bool)
        elif value is None:
            ok = action.default is None
        elif action.type is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif action.type is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value)
        else:
            ok = isinstance(value, str)
        if ok and action.choices is not None and value is not None:
            ok = value in action.choices
        if not ok:
            return f"setting {name} is {value!r}, not a value {name} takes"
    return None


def given_flags(parser, argv):
    """Names (dests) of the settings argv gives explicitly, whatever their
    values: argv parsed again with every default suppressed."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def restore_settings(args, saved, given):
    """Make args the saved run's settings (its state's "args"), but for those
    given explicitly that may change: FREE_ON_RESUME and a longer --steps.
    Any other setting given with another value is an error naming both."""
    conflicts = []
    for name, value in saved.items():
        if name in ("out_dir", "resume") or not hasattr(args, name):
            continue  # where the run is, not how it trains
        mine = getattr(args, name)
        if name in given and mine != value:
            # --steps 0 (one pass over the data) has no length to compare
            if name in FREE_ON_RESUME or (name == "steps" and value and mine > value):
                continue
            had = f"the run has {value}" if value is not None else "the run has none"
            conflicts.append(f"--{name.replace('_', '-')} {mine} ({had})")
        setattr(args, name, value)
    if conflicts:
        raise TrainError(f"--resume goes on with the run in {args.out_dir} as it was set up, but "
                         f"got {', '.join(conflicts)}; only a longer --steps and output or "
                         f"evaluation settings may change")


def open_data(args, state, me):
    """(training loader at the resumed position, validation batches or None, train pattern)."""
    train_pattern, val_pattern = args.train_data, args.val_data
    if train_pattern is None:
        from .default_data import default_shards
        train_pattern, default_val = default_shards()
        val_pattern = val_pattern or default_val
    loader = DataLoader(train_pattern, args.batch_size, args.seq_len, args.shuffle, args.seed)
    if state:
        loader.load_state(state["data"])
    if val_pattern is None:
        if me.is_root:
            print("no --val-data: no validation loss", file=sys.stderr)
        return loader, None, train_pattern
    return loader, val_batches(val_pattern, args.batch_size, args.seq_len, args.val_steps), train_pattern


def check_loss(loss, recent, args):
    """Why this loss should not be trusted, or None."""
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if len(recent) == recent.maxlen:
        mean, std = float(np.mean(recent)), float(np.std(recent))
        if std > 0 and (loss - mean) / std > args.spike_threshold:
            return (f"loss spike: {loss:.4f} is {(loss - mean) / std:.1f} standard deviations "
                    f"above the last {len(recent)} steps' mean {mean:.4f}")
    return None


def read_step_batches(loader, me, micro_steps, rows):
    """This rank's (inputs, targets) of one step, each (micro_steps, rows, T);
    the loader moves past the whole step on every rank alike. With rows < B,
    the step is one batch whose rows the ranks split between them; else every
    rank reads its share of the step's batches and skips the others'."""
    if rows < loader.B:
        x, y = loader.next_batch()
        mine = slice(me.rank * rows, (me.rank + 1) * rows)
        batches = [(x[mine], y[mine])]
    else:
        ranks = max(1, me.world_size)
        loader.skip(me.rank * micro_steps)
        batches = [loader.next_batch() for _ in range(micro_steps)]
        loader.skip((ranks - 1 - me.rank) * micro_steps)
    return np.stack([x for x, _ in batches]), np.stack([y for _, y in batches])


def train_step(model, inputs, targets, lr, recent, args):
    """backward, the checks, then the update unless it is to be skipped.
    Returns (loss, gradient norm or NaN, problem or None, skipped)."""
    import pyllmc
    loss = model.backward(inputs, targets)
    problem = check_loss(loss, recent, args)
    if problem and args.skip_bad_updates:
        return loss, math.nan, problem, True
    if not math.isfinite(loss):
        return loss, math.nan, problem, False
    try:  # a spike without --skip-bad-updates is reported and applied
        norm = model.update(lr=lr, weight_decay=args.weight_decay, beta1=args.beta1,
                            beta2=args.beta2, grad_clip=args.grad_clip)
        return loss, norm, problem, False
    except pyllmc.NumericError as e:  # nothing was updated
        return loss, math.nan, f"gradient norm is not finite ({e})", args.skip_bad_updates


class Team:
    """This process's place among the ranks of the run. The ranks meet (join)
    when the model is first opened, once --resume has restored the run's
    settings; `settings` is the digest of the command line every rank must
    share."""

    def __init__(self, me, settings):
        self.me = me
        self.settings = settings
        self.nccl_id = self.meeting = None
        self.joined = False

    def join(self, args):
        if not self.joined:
            self.nccl_id, self.meeting = join_run(args, self.me, self.settings)
            self.joined = True
        return self.me


def join_run(args, me, settings):
    """(NCCL id or None, rendezvous or None). Ranks of runs not started by
    MPI meet at a rendezvous, which also checks that they agree on the world
    size and the arguments; under MPI the library and check_agreement do."""
    if args.nproc_per_node and me.distributed and args.nproc_per_node != me.world_size:
        raise TrainError(f"--nproc-per-node {args.nproc_per_node} inside a launch of "
                         f"{me.world_size} ranks: leave it out when a launcher starts the ranks")
    if not me.distributed or me.launcher == "mpi" or (me.launcher == "slurm" and args.device == "cpu"):
        return None, None
    import pyllmc

    def make_id():
        if args.device != "cuda":
            return ""
        buf = (pyllmc._lib.ctypes.c_uint8 * 128)()
        pyllmc._lib.call("llmc_nccl_unique_id", buf)
        return bytes(buf).hex()

    if args.rendezvous == "fs":
        payload = distributed.file_rendezvous(me, args.rendezvous_path, settings, make_id,
                                              args.rendezvous_timeout)
        meeting = None
    else:
        if not me.master_addr or not me.master_port:
            raise TrainError(f"rank {me.rank} of {me.world_size} ({me.launcher} launch) needs "
                             "MASTER_ADDR and MASTER_PORT (rank 0's host and a free port) for the "
                             "rendezvous, or --rendezvous fs --rendezvous-path FOLDER")
        meeting = distributed.Rendezvous(me, me.master_addr, me.master_port, settings, make_id,
                                         args.rendezvous_timeout)
        payload = meeting.payload
    if args.device != "cuda":
        raise TrainError("the CPU backend's ranks talk over MPI: start them with "
                         "`mpirun -np N python -m pyllmc.train ...`, srun, or --nproc-per-node N")
    return bytes.fromhex(payload), meeting


def schedule_settings(args):
    return dict(warmup_steps=args.warmup_steps, schedule=args.lr_schedule,
                final_lr_frac=args.final_lr_frac, decay_fraction=args.wsd_decay_fraction)


def continue_schedule(args, state, start_step, total_steps):
    """The learning-rate rebase (schedule.continued_rate) of a resumed run:
    when --steps grew past the saved run's, the schedule goes on from the
    rate the old one had at the resumed step; else the saved rebase, if any."""
    if not state:
        return None
    rebase = state.get("lr_rebase")
    old_steps = state["args"].get("steps")
    if old_steps and total_steps > old_steps and start_step >= args.warmup_steps:
        return [start_step, continued_rate(start_step, old_steps, args.lr, rebase,
                                           **schedule_settings(args))]
    return rebase


# SIGUSR1: what mpirun passes on to the ranks (distributed.run_mpirun)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """SIGINT (Ctrl-C), SIGTERM and SIGUSR1 ask the run to stop once the step
    in progress is done, with a checkpoint; a second Ctrl-C stops at once.
    agreed() tells whether any rank was asked, so that all stop at the same
    step (the checkpoint is written by all of them together)."""

    def __init__(self):
        self.signal_name = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signal_name == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def agreed(self, model, me):
        asked = 1.0 if self.signal_name else 0.0
        if me.distributed:  # one small all-reduce per step
            asked = float(model.allreduce([asked], "max")[0])
        return asked > 0

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Interrupted(Exception):
    """The run stopped on a signal after writing a checkpoint; the message
    says how to go on."""

    def __init__(self, signal_name, step, args, several_ranks):
        self.code = 143 if signal_name == "SIGTERM" else 130
        asked = {None: "a signal to another rank", "SIGUSR1": "a stop request from the launcher"}
        why = f"interrupted ({asked.get(signal_name, signal_name)})"
        if step == 0:
            super().__init__(f"{why} before the first step: nothing to resume")
            return
        command = f"python -m pyllmc.train --out-dir {shlex.quote(args.out_dir)} --resume"
        super().__init__(f"{why} after step {step}; checkpoint "
                         f"{checkpoint.paths(args.out_dir, step)['model']}. Resume with: {command}"
                         + (" (under the launcher, on any number of ranks)"
                            if several_ranks else ""))


def check_agreement(model, args, team, start_step):
    """Every rank was given the same arguments and sees the same checkpoint."""
    if not team.me.distributed:
        return
    settings = int(team.settings, 16)
    mine = [settings >> 40, settings & (2**40 - 1), start_step]  # exact in float64
    low, high = model.allreduce(mine, "min"), model.allreduce(mine, "max")
    if (low[:2] != high[:2]).any():
        raise TrainError("the ranks were started with different arguments: every rank must get "
                         "the same command line")
    if low[2] != high[2]:
        raise TrainError(f"the ranks see different checkpoints in {args.out_dir} (newest complete "
                         f"steps {int(low[2])}..{int(high[2])}): it must be one folder on a "
                         "filesystem every rank shares")


def run(args, me, given=(), settings=""):
    """Train as args say, as rank me (distributed.from_environment); given: the
    settings given explicitly (given_flags), which a resumed run checks against
    the saved ones; settings: the digest of the command line, the same on every
    rank."""
    team = Team(me, settings)
    try:
        tokenizer = load_tokenizer(args.tokenizer)
    except TokenizerError as e:
        raise TrainError(str(e)) from None
    start_step, state, model = resume_point(args, given, team)
    check_args(args)
    micro_steps, rows = batch_layout(args, me)
    ranks = max(1, me.world_size)
    # training batches of B sequences the loader moves past per step (every rank alike)
    windows_per_step = micro_steps * ranks if rows == args.batch_size else 1
    loader, val, train_pattern = open_data(args, state, me)
    if state and loader.position() != start_step * windows_per_step:
        raise TrainError(f"{checkpoint.paths(args.out_dir, start_step)['state']}: data position "
                         f"{state['data']} is batch {loader.position()} of the data, but "
                         f"{start_step} steps read {start_step * windows_per_step}: the training "
                         "data changed since this checkpoint")
    tokens_per_step = windows_per_step * args.batch_size * args.seq_len
    total_steps = args.steps or max(1, loader.windows_per_epoch // windows_per_step)
    lr_rebase = continue_schedule(args, state, start_step, total_steps)
    if start_step >= total_steps:
        if me.is_root:
            print(f"{args.out_dir}: the run already reached step {start_step} of {total_steps}")
        return
    hellaswag = load_hellaswag(args, tokenizer) if args.hellaswag_every else None
    model = model or open_model(args, team)
    check_agreement(model, args, team, start_step)
    if team.nccl_id is not None and args.rendezvous == "fs":  # every rank has joined
        distributed.end_file_rendezvous(me, args.rendezvous_path)
    if team.meeting:
        team.meeting.watch(lost_rank)
    if me.is_root:  # only now: a run that cannot start leaves no empty folder
        prepare_out_dir(args.out_dir)
        checkpoint.remove_incomplete(args.out_dir)
    cfg = model.config
    flops_per_token = 6 * model.num_parameters + 6 * cfg.num_layers * cfg.channels * args.seq_len
    peak = peak_flops(args)
    quiet = not me.is_root  # only rank 0 prints, logs and writes to the out dir
    report = (lambda *a, **k: None) if quiet else print
    ranks_text = f" x {me.world_size} ranks (ZeRO-{args.zero})" if me.distributed else ""
    report(f"model: {cfg.num_layers} layers, {cfg.num_heads} heads, {cfg.channels} channels, "
           f"{model.num_parameters:,} parameters, on {model.device}{ranks_text}")
    report(f"data: {len(loader.paths)} training shard(s) from {train_pattern}, "
           f"{loader.windows_per_epoch:,} batches of {args.batch_size}x{args.seq_len} per epoch; "
           f"{micro_steps} micro-step(s) of {rows}x{args.seq_len} per rank, "
           f"{tokens_per_step:,} tokens per step, {total_steps} steps")
    if start_step:
        report(f"resuming from step {start_step} ({checkpoint.paths(args.out_dir, start_step)['model']})")
    samples = args.sample_every and not quiet and cfg.vocab_size <= tokenizer.vocab_size

    log = None if quiet else RunLog(args.out_dir, start_step)
    recent = collections.deque(state["recent_losses"] if state else [], maxlen=args.spike_window)
    bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
               disable=True if args.no_progress or quiet else None)
    say = (lambda text: None) if quiet else bar.write
    write_log = (lambda *a, **k: None) if quiet else log.write
    last_val = None
    t_start = time.perf_counter()

    def due(every, step):
        return step == total_steps or (every > 0 and step % every == 0)

    def rate(step):
        return continued_rate(step, total_steps, args.lr, lr_rebase, **schedule_settings(args))

    def save(step):
        state = {"step": step, "data": loader.state(), "recent_losses": list(recent),
                 "seed": args.seed, "args": vars(args), "config": dataclasses.asdict(cfg)}
        if lr_rebase:
            state["lr_rebase"] = list(lr_rebase)
        checkpoint.save(model, args.out_dir, step, state, write_state=me.is_root)
        if me.is_root:
            checkpoint.prune(args.out_dir, args.keep_last)

    stop = StopRequest()

    try:
        for step in range(start_step, total_steps + 1):
            if val and due(args.val_every, step):
                last_val = val_loss(model, val, me, rows)
                write_log(step, f"tel:{last_val:.4f}", val_loss=last_val)
                say(f"step {step:5d} | val loss {last_val:.4f}")
            if hellaswag and due(args.hellaswag_every, step):
                module, examples = hellaswag
                result = hellaswag_accuracy(module, model, examples, me)
                write_log(step, f"eval:{result['acc_norm']:.4f}",
                          hellaswag_acc_norm=result["acc_norm"], hellaswag_acc=result["acc"])
                say(f"step {step:5d} | HellaSwag acc_norm {result['acc_norm']:.4f} "
                    f"({result['num_examples']} examples)")
            if step > 0 and samples and due(args.sample_every, step):
                text = sample_text(model, "", args.sample_length, top_k=40, seed=args.seed + step,
                                   tokenizer=tokenizer)
                say(f"--- sample at step {step} ---\n{text.strip()}\n---")
            if step > start_step and due(args.checkpoint_every, step):
                save(step)
            if step == total_steps:
                break
            if stop.agreed(model, me):
                if step > start_step and not due(args.checkpoint_every, step):
                    save(step)
                raise Interrupted(stop.signal_name, step, args, me.distributed)

            t0 = time.perf_counter()
            inputs, targets = read_step_batches(loader, me, micro_steps, rows)
            lr = rate(step)
            loss, norm, problem, skipped = train_step(model, inputs, targets, lr, recent, args)
            if problem:
                say(f"warning: step {step}: {problem}" + ("; update skipped" if skipped else ""))
                if not skipped and not math.isfinite(norm):
                    raise TrainError(f"step {step}: {problem}; stopping with the model as it was "
                                     "before this step. Resume from the last checkpoint with "
                                     "--skip-bad-updates to step over such updates")
            if not skipped:
                recent.append(loss)
            dt = time.perf_counter() - t0
            tok_s = tokens_per_step / dt
            write_log(step, f"trl:{loss:.4f} lr:{lr:.6f} norm:{norm:.2f}", train_loss=loss, lr=lr,
                      grad_norm=norm, skipped=skipped, ms=round(dt * 1000, 2),
                      tokens_per_s=round(tok_s, 1))
            postfix = {"loss": f"{loss:.4f}", "tok/s": f"{tok_s:,.0f}"}
            if peak:
                postfix["MFU"] = f"{100 * flops_per_token * tok_s / (peak * ranks):.1f}%"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            if args.print_every and (step + 1) % args.print_every == 0:
                window = list(recent)[-args.print_every:] or [loss]
                say(f"step {step + 1:5d}/{total_steps} | loss {loss:.4f} (mean of last "
                    f"{len(window)}: {np.mean(window):.4f}) | lr {lr:.2e} | norm {norm:.3f} | "
                    f"{dt * 1000:.0f} ms | {tok_s:,.0f} tok/s")
    except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint of this step
        kept = checkpoint.complete_steps(args.out_dir)
        raise TrainError("interrupted" + (f"; --resume goes on from step {kept[-1]}" if kept else ""))
    finally:
        stop.restore()
        bar.close()
        if log:
            log.close()
    if team.meeting:
        team.meeting.finish()
    final = checkpoint.paths(args.out_dir, total_steps)["model"]
    minutes = (time.perf_counter() - t_start) / 60
    report(f"done: {total_steps} steps in {minutes:.1f} min"
           + (f", val loss {last_val:.4f}" if last_val is not None else "") + f"; model: {final}")
    report(f"next: python -m pyllmc.sample {final} --prompt \"The\"  |  "
           f"python -m pyllmc.hellaswag {final}  |  python -m pyllmc.plot {args.out_dir}")


def lost_rank(message):
    """Another rank died: stop this one now rather than wait in a collective."""
    print(f"error: {message}; stopping. --resume goes on from the last checkpoint",
          file=sys.stderr, flush=True)
    os._exit(1)


def launch_local(args, argv):
    """--nproc-per-node N: start N ranks of this command on this machine."""
    rest, skip = [], False
    for a in argv:  # the same command line without --nproc-per-node
        if skip:
            skip = False
        elif a == "--nproc-per-node":
            skip = True
        elif not a.startswith("--nproc-per-node="):
            rest.append(a)
    command = ["-m", "pyllmc.train", *rest]
    if args.device == "cpu":
        return distributed.run_mpirun(distributed.mpirun_command(args.nproc_per_node, command),
                                      distributed.mpi_environment())
    return distributed.spawn_local(args.nproc_per_node, command)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    import pyllmc
    me = distributed.Rank()
    try:
        me = distributed.from_environment()
        if args.nproc_per_node and not me.distributed:
            check_args(args)  # before mpirun, which would answer -np -1 at length
            sys.exit(launch_local(args, argv))
        settings = distributed.digest({k: v for k, v in vars(args).items() if k not in LAUNCH_ARGS})
        run(args, me, given_flags(build_parser(), argv), settings)
    except Interrupted as e:
        if me.is_root:
            print(e, file=sys.stderr, flush=True)
        # mpirun takes a rank's non-zero exit for a failure, and says so at length
        sys.exit(0 if me.launcher == "mpi" else e.code)
    except (TrainError, ShardError, distributed.DistributedError, pyllmc.LlmcError,
            pyllmc.LibraryError, OSError) as e:
        where = f" (rank {me.rank} of {me.world_size})" if me.distributed else ""
        message = os_error_message(e) if isinstance(e, OSError) else str(e)
        message = message.removeprefix(f"rank {me.rank} of {me.world_size}: ")  # said once
        print(f"error{where}: {message}", file=sys.stderr, flush=True)
        if me.launcher == "mpi" and me.world_size > 1:
            # mpirun stops every rank once one exits with an error: a moment's
            # grace lets the others report an error they hit too
            time.sleep(MPI_EXIT_GRACE_S)
        sys.exit(1)


if __name__ == "__main__":
    main()

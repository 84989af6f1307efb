"""
Training checkpoints in a run's output folder, named as llm.c names them:

    model_00000300.bin   the model, llm.c's format, fp32 (exact master weights)
    optim_00000300.bin   AdamW moments and step count (the library's format)
    state_00000300.json  step, data position, loss window, run settings
    DONE_00000300        written last: the three files above are complete

Every file is written atomically, and the marker only after the others are
durable, so a run killed at any moment leaves each checkpoint either
complete (with its marker) or ignored.
"""
import json
import math
import os
import re

from .files import read_regular, write_atomic


class CheckpointError(ValueError):
    """A checkpoint file that is damaged: unreadable, or not what save wrote."""

PARTS = {"model": "model_{:08d}.bin", "optimizer": "optim_{:08d}.bin",
         "state": "state_{:08d}.json", "done": "DONE_{:08d}"}
DONE_PATTERN = re.compile(r"DONE_(\d{8})$")


def paths(out_dir, step):
    return {part: os.path.join(out_dir, name.format(step)) for part, name in PARTS.items()}


def complete_steps(out_dir):
    """Steps with a complete checkpoint in out_dir, oldest first."""
    try:
        names = os.listdir(out_dir)
    except (FileNotFoundError, NotADirectoryError):  # no run there (yet)
        return []
    steps = sorted(int(m.group(1)) for m in map(DONE_PATTERN.match, names) if m)
    return [s for s in steps if all(os.path.exists(p) for p in paths(out_dir, s).values())]


def save(model, out_dir, step, state, write_state=True):
    """Write the checkpoint of step: model, optimizer, state, then the marker.

    In a data-parallel run every rank calls this (the model's files are
    gathered onto rank 0, which writes them); only rank 0 passes
    write_state=True."""
    p = paths(out_dir, step)
    model.save(p["model"], dtype="fp32")
    model.save_optimizer(p["optimizer"])
    if write_state:
        write_atomic(p["state"], [json.dumps(state, indent=1).encode()])
        write_atomic(p["done"], [b""])


def load_state(out_dir, step):
    """The state saved with step's checkpoint, its structure checked;
    CheckpointError naming the file when it is damaged."""
    path = paths(out_dir, step)["state"]
    try:
        state = json.loads(read_regular(path).decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    problem = state_problem(state, step)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    return state


def _count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def state_problem(state, step):
    """What is wrong with a loaded state of step's checkpoint, or None."""
    if not isinstance(state, dict):
        return f"expected a JSON object, found {type(state).__name__}"
    for key, kind in (("step", int), ("data", dict), ("recent_losses", list), ("args", dict)):
        if not isinstance(state.get(key), kind):
            return f"{key!r} is {state.get(key)!r}, expected a {kind.__name__}"
    if state["step"] != step:
        return f"'step' is {state['step']}, but the file belongs to step {step}"
    if not all(_count(state["data"].get(k)) for k in ("epoch", "shard", "window")):
        return f"data position {state['data']!r}: expected non-negative integers epoch, shard, window"
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
               for x in state["recent_losses"]):
        return "'recent_losses' holds something other than finite numbers"
    rebase = state.get("lr_rebase")
    if rebase is not None and not (
            isinstance(rebase, list) and len(rebase) == 2 and _count(rebase[0])
            and rebase[0] <= step and isinstance(rebase[1], (int, float))
            and not isinstance(rebase[1], bool) and math.isfinite(rebase[1]) and rebase[1] >= 0):
        return f"'lr_rebase' is {rebase!r}, expected [a step up to {step}, a learning rate]"
    return None


def remove(out_dir, step):
    """Delete a checkpoint, its marker first so that no half-deleted one ever
    looks complete."""
    p = paths(out_dir, step)
    for part in ("done", "state", "optimizer", "model"):
        try:
            os.remove(p[part])
        except FileNotFoundError:
            pass


def prune(out_dir, keep_last):
    """Keep the newest keep_last complete checkpoints (0: keep all)."""
    if keep_last > 0:
        for step in complete_steps(out_dir)[:-keep_last]:
            remove(out_dir, step)


def remove_incomplete(out_dir):
    """Delete checkpoint files without a marker (a save cut short), and
    temporary files of atomic writes that never finished (checkpoint parts,
    and main.log/main.jsonl when a kill came during their rewrite)."""
    done = set(complete_steps(out_dir))
    pattern = re.compile(r"(model|optim|state|DONE)_(\d{8})(\.bin|\.json)?$")
    # write_atomic's and the library's temporary names (older versions: a pid)
    temporary = re.compile(r".+\.tmp\.[0-9a-f]+$")
    for name in os.listdir(out_dir):
        m = pattern.match(name)
        if temporary.match(name) or (m and int(m.group(2)) not in done):
            os.remove(os.path.join(out_dir, name))

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
import os
import re

from .files import write_atomic

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


def save(model, out_dir, step, state):
    """Write the checkpoint of step: model, optimizer, state, then the marker."""
    p = paths(out_dir, step)
    model.save(p["model"], dtype="fp32")
    model.save_optimizer(p["optimizer"])
    write_atomic(p["state"], [json.dumps(state, indent=1).encode()])
    write_atomic(p["done"], [b""])


def load_state(out_dir, step):
    with open(paths(out_dir, step)["state"]) as f:
        return json.load(f)


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
    temporary files of atomic writes that never finished."""
    done = set(complete_steps(out_dir))
    pattern = re.compile(r"(model|optim|state|DONE)_(\d{8})(\.bin|\.json)?(\.tmp\.\d+)?$")
    for name in os.listdir(out_dir):
        m = pattern.match(name)
        if m and (m.group(4) or int(m.group(2)) not in done):
            os.remove(os.path.join(out_dir, name))

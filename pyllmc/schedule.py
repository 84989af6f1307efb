"""Learning-rate schedules: the rate for each step, from the step alone (so a
resumed run gets exactly the rates of an uninterrupted one)."""
import math

SCHEDULES = ("cosine", "linear", "constant", "wsd")


def learning_rate(step, total_steps, max_lr, warmup_steps=0, schedule="cosine",
                  final_lr_frac=0.0, decay_fraction=0.2):
    """Rate of 0-based step out of total_steps.

    All schedules warm up linearly over warmup_steps (max_lr*(step+1)/warmup,
    as llm.c), then:
      cosine:   from max_lr down to max_lr*final_lr_frac along half a cosine;
      linear:   the same, in a straight line;
      constant: max_lr;
      wsd:      warmup-stable-decay: max_lr until the last decay_fraction of
                the steps, then down to the final rate along 1 - sqrt(progress).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}, expected one of {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    min_lr = max_lr * final_lr_frac
    if schedule == "constant":
        return max_lr
    if schedule == "wsd":
        decay_start = max(warmup_steps, total_steps - int(decay_fraction * total_steps))
        if step < decay_start:
            return max_lr
        progress = (step - decay_start) / max(1, total_steps - decay_start)
        return min_lr + (1 - math.sqrt(progress)) * (max_lr - min_lr)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)
    return max_lr - progress * (max_lr - min_lr)


def continued_rate(step, total_steps, max_lr, rebase=None, **schedule):
    """learning_rate, for a run whose --steps grew on resume. rebase is
    (step s0 it grew at, the rate s0 had before), or None: from s0 on, the
    rate goes from that value down to the final rate at the new end along the
    schedule's own shape, so it never jumps (a finished run keeps its final
    rate; a run cut short decays from where it was)."""
    rate = learning_rate(step, total_steps, max_lr, **schedule)
    if rebase is None or step < rebase[0]:
        return rate
    start, start_rate = rebase
    final = max_lr * schedule.get("final_lr_frac", 0.0)
    at_start = learning_rate(start, total_steps, max_lr, **schedule)
    if at_start <= final:  # a flat schedule: nothing left to decay
        return start_rate
    return final + (start_rate - final) * (rate - final) / (at_start - final)

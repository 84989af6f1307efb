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

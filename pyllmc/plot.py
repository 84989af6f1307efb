"""
Training curves of a run: `python -m pyllmc.plot OUT_DIR` reads
OUT_DIR/main.jsonl and draws train/val loss, learning rate and gradient norm
(and HellaSwag accuracy, when logged) into OUT_DIR/curves.png. Several runs
(`python -m pyllmc.plot RUN_A RUN_B -o both.png`) share the panels, each
line named by its run's folder.

Drawing needs matplotlib, which the rest of llmc does not: install it with
`pip install matplotlib` to plot.
"""
import argparse
import json
import os
import sys


def load_log(out_dir):
    """{series name: ([steps], [values])} from a run's main.jsonl."""
    path = os.path.join(out_dir, "main.jsonl")
    series = {}
    try:
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                for key, value in record.items():
                    if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                        steps, values = series.setdefault(key, ([], []))
                        steps.append(record["step"])
                        values.append(value)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no training log here (is {out_dir} a run's --out-dir?)") from None
    return series


PANELS = [  # (title, [(series, label)], log scale)
    ("loss", [("train_loss", "train"), ("val_loss", "val")], False),
    ("learning rate", [("lr", "lr")], False),
    ("gradient norm", [("grad_norm", "norm")], True),
    ("HellaSwag", [("hellaswag_acc_norm", "acc_norm"), ("hellaswag_acc", "acc")], False),
]


def plot(out_dirs, output=None):
    """Draw the curves of one run (a folder) or several (a list of folders,
    drawn over each other; then output is needed); returns the PNG's path."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib, which llmc does not install: "
                          "pip install matplotlib") from None
    several = not isinstance(out_dirs, (str, os.PathLike))
    if several and len(out_dirs) > 1 and not output:
        raise ValueError("several runs: name the PNG with -o")
    out_dirs = list(out_dirs) if several else [out_dirs]
    names = [os.path.basename(os.path.abspath(d)) for d in out_dirs]
    runs = [load_log(d) for d in out_dirs]
    panels = [p for p in PANELS if any(name in series for series in runs for name, _ in p[1])]
    if not panels:
        raise ValueError(f"{out_dirs[0]}/main.jsonl holds no steps yet")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (title, curves, log_scale) in zip(axes[0], panels):
        for run, series in zip(names, runs):
            for name, label in curves:
                if name in series:
                    steps, values = series[name]
                    ax.plot(steps, values, label=f"{run} {label}" if len(runs) > 1 else label,
                            marker="o" if len(steps) < 30 else None, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        if log_scale:
            ax.set_yscale("log")
        if len(curves) > 1 or len(runs) > 1:
            ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(" vs ".join(names))
    fig.tight_layout()
    output = output or os.path.join(out_dirs[0], "curves.png")
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m pyllmc.plot",
                                description="Draw a training run's curves (or several runs' "
                                "over each other) to a PNG.")
    p.add_argument("out_dirs", nargs="+", metavar="out_dir",
                   help="a run's --out-dir (holding main.jsonl)")
    p.add_argument("-o", "--output", help="PNG path (default, one run: OUT_DIR/curves.png)")
    args = p.parse_args(argv)
    try:
        print(plot(args.out_dirs, args.output))
    except (ImportError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

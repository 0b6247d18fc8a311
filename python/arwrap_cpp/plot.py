"""Loss curves from metrics files (arwrap-train --metrics, arwrap_cpp.metrics.MetricsWriter).

    scripts/plot.sh RUN.metrics.jsonl [RUN2.metrics.jsonl ...] [-o curves.png]
    python -m arwrap_cpp.plot RUN.metrics.jsonl ...          # the same, matplotlib installed

Draws the training loss (lines) and the validation loss (dots joined by a dashed line) of
every run, against optimizer steps (left) and against wall-clock time (right), one colour
per run, into one PNG. Several files are overlaid with a legend (fp32 against bf16, one
process against two, ...). The label of a run is its file name without .metrics.jsonl,
followed by the precision and the number of processes when its lines record them; --label
sets the labels instead. Needs only matplotlib (the optional extra `plot`), not torch.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["load_run", "plot_runs", "main"]


def load_run(path) -> list[dict]:
    """The records of one metrics file, sorted by step; a clear error for a file that is not one."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"plot: no such metrics file: {path}")
    recs = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"plot: {path}:{i} is not a JSON line ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            raise SystemExit(f"plot: {path}:{i} has no integer 'step': not a metrics file")
        recs.append(rec)
    if not any(r.get("loss") is not None or r.get("val_loss") is not None for r in recs):
        raise SystemExit(f"plot: {path} has no loss or val_loss values to plot")
    return sorted(recs, key=lambda r: r["step"])


def run_label(path, recs) -> str:
    name = Path(path).name
    for suffix in (".metrics.jsonl", ".jsonl", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    extra = []
    last = recs[-1]
    if last.get("precision"):
        extra.append(str(last["precision"]))
    if last.get("world_size"):
        n = int(last["world_size"])
        extra.append(f"{n} process{'es' if n != 1 else ''}")
    return name + (f" ({', '.join(extra)})" if extra else "")


def _series(recs, key, x):
    pts = [(r[x], r[key]) for r in recs if r.get(key) is not None and r.get(x) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_runs(paths, out, labels=None, size=(1400, 520), dpi=100, title=None) -> Path:
    """Writes the PNG `out` of width x height `size` pixels; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [load_run(p) for p in paths]
    if labels is None:
        labels = [run_label(p, r) for p, r in zip(paths, runs)]
        if len(set(labels)) < len(labels):  # same names in different folders: say which
            labels = [f"{Path(p).parent.name}/{lab}" for p, lab in zip(paths, labels)]
    elif len(labels) != len(paths):
        raise SystemExit(f"plot: {len(labels)} --label given for {len(paths)} files")
    max_wall = max((r.get("wall_s") or 0.0) for recs in runs for r in recs)
    unit, scale = ("min", 60.0) if max_wall > 600 else ("s", 1.0)

    fig, axes = plt.subplots(1, 2, figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi, sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (recs, label) in enumerate(zip(runs, labels)):
        c = colors[i % len(colors)]
        for ax, x in ((axes[0], "step"), (axes[1], "wall_s")):
            k = 1.0 if x == "step" else 1.0 / scale
            xs, ys = _series(recs, "loss", x)
            if xs:
                ax.plot([v * k for v in xs], ys, color=c, lw=1.4, label=f"{label} train")
            xs, ys = _series(recs, "val_loss", x)
            if xs:
                ax.plot([v * k for v in xs], ys, color=c, lw=1.0, ls="--", marker="o", ms=4,
                        label=f"{label} validation")
    axes[0].set_xlabel("optimizer step")
    axes[1].set_xlabel(f"wall-clock time ({unit})")
    axes[0].set_ylabel("loss (nats per byte)")
    axes[0].set_title("loss against steps")
    axes[1].set_title("loss against wall time")
    for ax in axes:
        ax.grid(alpha=0.3)
    ln2 = 0.6931471805599453
    right = axes[1].secondary_yaxis("right", functions=(lambda v: v / ln2, lambda v: v * ln2))
    right.set_ylabel("bits per byte")
    axes[1].legend(fontsize=8, loc="upper right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def _size(text):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size expects WIDTHxHEIGHT in pixels, got {text!r}") from None
    if w < 200 or h < 150:
        raise argparse.ArgumentTypeError(f"--size must be at least 200x150 pixels, got {text!r}")
    return w, h


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/plot.sh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="metrics files (JSON Lines)")
    ap.add_argument("-o", "--out", help="PNG to write (default: the first file with .png)")
    ap.add_argument("--label", action="append", help="a label per file, in order (repeat)")
    ap.add_argument("--title", help="a title over both panels")
    ap.add_argument("--size", type=_size, default=(1400, 520), help="WIDTHxHEIGHT pixels (default 1400x520)")
    args = ap.parse_args(argv)
    out = args.out
    if out is None:
        first = Path(args.files[0])
        out = first.with_name(first.name.removesuffix(".jsonl").removesuffix(".metrics") + ".png")
    path = plot_runs(args.files, out, labels=args.label, size=args.size, title=args.title)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Charts of the benchmark results: each bench/results/NAME.json into NAME.png beside it.

    .venv/bin/python bench/plot_results.py                     # every bench/results/*.json
    .venv/bin/python bench/plot_results.py bench/results/cross_entropy.json

One row of panels per shape or configuration: the time of each contender (left) and its
peak extra memory (right), horizontal bars labelled with their values, on a log axis when
they span more than 20x. A floor the JSON records (per result `floor_time_s`,
`floor_peak_extra_bytes`; its label in the top-level `floor_labels`) is drawn as a red dashed
line; a contender that failed is shown as such. The benchmark scripts call render() after
writing their JSON (bench/_measure.py write_results). Needs matplotlib (scripts/plot.sh
installs it into .venv; the optional extra `plot`).

The JSON shapes read: {"results": [...], ...} or a bare list (bench_gpu.py); in a result, the
contender is `contender`, `wrapper` or `name`; time `time_s` or `secs`; memory
`peak_extra_bytes` or `mem`; the other plain fields name the shape (rows x vocab, n x d x v,
config, op). native.json's `generate` section (tokens/s) gets a panel of its own.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONTENDER_KEYS = ("contender", "wrapper", "name")
TIME_KEYS = ("time_s", "secs")
MEM_KEYS = ("peak_extra_bytes", "mem")
NOT_SHAPE = set(CONTENDER_KEYS + TIME_KEYS + MEM_KEYS) | {
    "loss", "loss_rel_err", "error", "gbs", "logits_bytes", "floor_time_s", "floor_peak_extra_bytes"}
SHAPE_ORDER = (("rows", "vocab"), ("n", "d", "v"))


def _first(rec, keys):
    for k in keys:
        if rec.get(k) is not None:
            return rec[k]
    return None


def shape_label(rec) -> str:
    for keys in SHAPE_ORDER:
        if all(k in rec for k in keys):
            return "x".join(str(rec[k]) for k in keys) + (f" {rec['dtype']}" if "dtype" in rec else "")
    parts = [f"{k} {rec[k]}" for k in rec if k not in NOT_SHAPE and not isinstance(rec[k], (dict, list))]
    return ", ".join(parts) or "all"


def load(path) -> tuple[list[dict], dict]:
    """(results, top-level payload) of one results JSON; SystemExit naming the file otherwise."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"plot_results: cannot read {path}: {e}") from None
    results = payload if isinstance(payload, list) else payload.get("results") if isinstance(payload, dict) else None
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise SystemExit(f"plot_results: {path} has no list of results (a bench/results JSON has 'results')")
    if not any(_first(r, CONTENDER_KEYS) is not None for r in results):
        raise SystemExit(f"plot_results: {path}: no result names its contender ({', '.join(CONTENDER_KEYS)})")
    return _fold_floor_rows(results), (payload if isinstance(payload, dict) else {})


def _fold_floor_rows(results):
    """Results whose contender is a floor of a precision (bench_step: "floor_fp32", "floor_bf16")
    mark the other rows of their configuration and precision (floor_time_s) instead of being
    bars; each row then carries its precision, which groups the chart."""
    floors = [r for r in results if str(_first(r, CONTENDER_KEYS)).startswith("floor_")]
    if not floors:
        return results
    out = []
    for r in results:
        if r in floors:
            continue
        name = str(_first(r, CONTENDER_KEYS))
        prec = "bf16" if "bf16" in name else "fp32"
        row = {k: v for k, v in r.items()}
        row["precision"] = prec
        for f in floors:
            if f.get("config") == r.get("config") and _first(f, CONTENDER_KEYS) == f"floor_{prec}":
                row.setdefault("floor_time_s", _first(f, TIME_KEYS))
        out.append(row)
    return out


def _fmt_time(s):
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def _fmt_mem(b):
    if b < 2**20:
        return f"{b / 2**10:.3g} kB"
    return f"{b / 2**20:.4g} MB" if b < 2**30 else f"{b / 2**30:.3g} GB"


TIME_UNITS = ((1.0, "s"), (1e-3, "ms"))
MEM_UNITS = ((2**30, "GB"), (2**20, "MB"), (2**10, "kB"))


def _bars(ax, names, raw, errors, fmt, floor, floor_label, xlabel, units=((1.0, ""),)):
    """Horizontal bars of `raw` values (None: missing), drawn in the largest of `units` that the
    biggest value reaches, labelled with fmt(raw value)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    biggest = max([v for v in raw if v] + [floor or 0], default=0)
    div, unit = next(((d, u) for d, u in units if biggest >= d), units[-1])
    values = [v / div if v is not None else None for v in raw]
    floor_raw, floor = floor, (floor / div if floor else None)
    ys = list(range(len(names)))[::-1]
    finite = [v for v in values if v is not None and v > 0]
    log = bool(finite) and max(finite) / min(finite) > 20
    ax.barh(ys, [v if v is not None else 0 for v in values], color="#4c72b0", height=0.6)
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if unit:
        xlabel = f"{xlabel} ({unit})"
    for y, v, r, err in zip(ys, values, raw, errors):
        if err:
            ax.text(0.01, y, f"error: {err[:50]}", va="center", ha="left", color="#c44e52", fontsize=8,
                    transform=ax.get_yaxis_transform())
        elif v is not None:
            ax.text(v, y, " " + fmt(r), va="center", ha="left", fontsize=8)
    if floor is not None and floor > 0:
        ax.axvline(floor, color="#c44e52", ls="--", lw=1.3, label=f"{floor_label}: {fmt(floor_raw)}")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks(ys)
    ax.set_yticklabels(names, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=9)
    hi = max(finite + ([floor] if floor else []), default=1.0)
    if log:
        lo = min(finite + ([floor] if floor else []))
        ax.set_xlim(lo / 2, hi * 6)
    else:
        ax.set_xlim(0, hi * 1.3)
    ax.grid(axis="x", alpha=0.3)


def render(json_path, out=None, dpi=100) -> Path:
    """Draws one results JSON into a PNG (default: beside it, .png); returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    json_path = Path(json_path)
    results, payload = load(json_path)
    labels = payload.get("floor_labels", {})
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(shape_label(r), []).append(r)
    has_mem = any(_first(r, MEM_KEYS) is not None for r in results)
    gen = payload.get("generate") if isinstance(payload.get("generate"), dict) else None
    ncols = 2 if has_mem else 1
    heights = [0.42 * len(rs) + 0.9 for rs in groups.values()] + ([0.42 * len(gen) + 0.9] if gen else [])
    fig, axes = plt.subplots(len(heights), ncols, figsize=(13 if has_mem else 7.5, sum(heights) + 0.6), dpi=dpi,
                             squeeze=False, gridspec_kw={"height_ratios": heights})
    for row, (shape, rs) in enumerate(groups.items()):
        names = [str(_first(r, CONTENDER_KEYS)) for r in rs]
        errors = [r.get("error") for r in rs]
        times = [_first(r, TIME_KEYS) for r in rs]
        panels = [(times, _fmt_time, "time_s", "time per step (forward + backward)", TIME_UNITS, "time")]
        if has_mem:
            panels.append(([_first(r, MEM_KEYS) for r in rs], _fmt_mem, "peak_extra_bytes", "peak extra memory",
                           MEM_UNITS, "peak memory"))
        for col, (values, fmt, key, xlabel, units, title) in enumerate(panels):
            floor = next((r[f"floor_{key}"] for r in rs if r.get(f"floor_{key}")), None)
            _bars(axes[row][col], names, values, errors, fmt, floor, labels.get(key, "floor"), xlabel, units)
            axes[row][col].set_title(f"{shape}: {title}", fontsize=10)
    if gen:
        names = list(gen)
        _bars(axes[-1][0], names, [gen[n].get("tokens_per_s") for n in names], [gen[n].get("error") for n in names],
              lambda v: f"{v:.0f} tok/s", None, "", "generation, tokens/s (higher is better)")
        axes[-1][0].set_title("generation with the key/value cache", fontsize=10)
        if has_mem:
            axes[-1][1].axis("off")
    env = payload.get("env", {})
    threads = env.get("threads", payload.get("threads"))
    bits = [f"{threads} threads" if threads else None, env.get("torch"),
            f"THP_MEM_ALLOC_ENABLE={env['THP_MEM_ALLOC_ENABLE']}" if "THP_MEM_ALLOC_ENABLE" in env else None]
    fig.suptitle(json_path.name + (f"  ({', '.join(b for b in bits if b)})" if any(bits) else ""),
                 fontsize=11)
    fig.tight_layout()
    out = Path(out) if out else json_path.with_suffix(".png")
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="results JSON files (default: every bench/results/*.json)")
    ap.add_argument("--out", help="the PNG to write, for one file (default: beside it)")
    args = ap.parse_args(argv)
    files = args.files or sorted((HERE / "results").glob("*.json"))
    if not files:
        raise SystemExit("plot_results: no results JSON given and none in bench/results")
    if args.out and len(files) != 1:
        raise SystemExit(f"plot_results: --out goes with one file, {len(files)} given")
    for f in files:
        print(f"wrote {render(f, out=args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peak extra memory of one training step (loss = wrapper(x); loss.backward()): the native net's
three modes against x-transformers' contenders of the same precision, every (configuration,
contender) in its own process (bench_step.py's memory child: bench/_measure.py, glibc mapping every
allocation over 128 KiB directly, the resident high-water mark reset before the step).

    python bench/bench_step_memory.py                    # A, B, C, T; fp32 and bf16 autocast
    python bench/bench_step_memory.py --configs tiny     # a smoke test of this script

The native modes: default (the lean blocks: csrc/modules/lean_projections.cpp and
lean_feed_forward.cpp), checkpoint_layers=True, and the plain ATen composition
(ARWRAP_LEAN_LAYERS=0) for what the lean blocks save. Memory does not depend on the machine's
load, so this runs beside other work; the times are bench_step.py's. Writes
bench/results/step_memory.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

XT = {"fp32": ("xt_flash", "xt_flash_compiled"), "bf16": ("xt_flash_bf16", "xt_flash_compiled_bf16")}
NATIVE = {"fp32": ("native_fp32", "native_ckpt_fp32", "native_composed_fp32"),
          "bf16": ("native_bf16", "native_ckpt_bf16", "native_composed_bf16")}


def table(results):
    mb = lambda b: b / 2**20  # noqa: E731
    lines = ["| config | precision | leanest x-transformers | native default (vs leanest) | "
             "native checkpoint_layers (vs leanest) | plain ATen composition (vs leanest) |",
             "|---|---|---:|---:|---:|---:|"]
    for cfg, precs in results.items():
        for prec, rows in precs.items():
            xt = {c: rows[c] for c in XT[prec] if isinstance(rows.get(c), (int, float))}
            if not xt:
                continue
            lean_name = min(xt, key=xt.get)
            lean = xt[lean_name]
            cells = []
            for c in NATIVE[prec]:
                v = rows.get(c)
                if not isinstance(v, (int, float)):
                    cells.append(f"error: {v}")
                else:  # a tiny step can stay inside memory already mapped: no ratio to a zero
                    cells.append(f"{mb(v):.0f} MB ({v / lean:.2f}x)" if lean > 0 else f"{mb(v):.0f} MB")
            lines.append(f"| {cfg} | {prec} | {mb(lean):.0f} MB ({lean_name}) | " + " | ".join(cells) + " |")
    return lines


def main():
    import torch
    from _measure import run_isolated, write_results

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="A,B,C,T")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "step_memory"))
    args = ap.parse_args()
    results = {}
    for cfg in args.configs.split(","):
        for prec in args.precisions.split(","):
            rows = results.setdefault(cfg, {}).setdefault(prec, {})
            for c in XT[prec] + NATIVE[prec]:
                print(f"  {cfg} {c} ...", file=sys.stderr, flush=True)
                r = run_isolated(str(HERE / "bench_step.py"),
                                 ["--config", cfg, "--contender", c, "--threads", args.threads, "--repeats", 1],
                                 measures=("memory",))
                rows[c] = r.get("peak_extra_bytes", r.get("error", "failed"))
    lines = ["# Peak extra memory of one training step", "",
             f"`python bench/bench_step_memory.py {' '.join(sys.argv[1:])}`: every (configuration, contender) in "
             f"its own process, {args.threads} threads, torch {torch.__version__}; configurations as in step.md "
             "(bench/bench_step.py CONFIGS). Leanest: the leaner of x-transformers flash eager and compiled, of the "
             "same precision (bf16: under torch.autocast).", "", *table(results)]
    write_results(args.out, lines, {"threads": args.threads, "torch": torch.__version__,
                                    "command": "python bench/bench_step_memory.py " + " ".join(sys.argv[1:]),
                                    "results": results})


if __name__ == "__main__":
    main()

"""Fused cross-entropy, forward+backward, against the anchors, side by side in one run.

    python bench/bench_cross_entropy.py                  # the three shapes of the issue
    python bench/bench_cross_entropy.py --shapes 4096x256 --repeats 3
    python bench/bench_cross_entropy.py --floor-only   # add the floor to the stored JSON

Each (shape, contender) runs in its own process (so peak memory is its own), with
the same thread count and environment. Time: median of --repeats forward+backward
steps after a warm-up, torch.autograd.grad(loss, logits) (so no leaf accumulation
copies the gradient). Memory: peak resident memory the step adds on top of its
inputs. The floor of each shape (`floor_time_s`) is the plainest pass that moves the bytes
of the fused in-place step: the logits read once and written once (`mul_(1.0)` in place,
as bench/bandwidth_floor.py), in its own process, the fastest of 20 passes (a lower bound). Writes
bench/results/cross_entropy.{json,md} and the chart cross_entropy.png (bench/plot_results.py).
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

from _measure import WATCH, bench_parser, load_note  # WATCH starts now

HERE = Path(__file__).resolve().parent
CONTENDERS = ["arwrap", "arwrap_inplace", "eager", "x_transformers", "torch_compile"]


def child(args) -> None:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(HERE))
    from _measure import median_time, peak_extra_bytes

    torch.set_num_threads(args.threads)
    rows, V = args.rows, args.vocab
    g = torch.Generator().manual_seed(0)
    source = torch.randn(rows, V, generator=g) * 2
    if args.measure == "floor":  # the memory-traffic floor: read + write the logits once, in place
        import time

        source.mul_(1.0)
        times = []
        for _ in range(max(20, args.repeats)):  # a lower bound: the fastest of many, so a busy machine
            t0 = time.perf_counter()            # inflates it less than a median
            source.mul_(1.0)
            times.append(time.perf_counter() - t0)
        print(json.dumps({"floor_time_s": min(times)}))
        return
    target = torch.randint(0, V, (rows,), generator=g)
    target[torch.rand(rows, generator=g) < args.ignore_frac] = -100
    logits = source.clone().requires_grad_(True)

    name = args.contender
    if name in ("arwrap", "arwrap_inplace"):
        import arwrap_cpp

        inplace = name == "arwrap_inplace"

        def loss_fn(x):
            return arwrap_cpp.cross_entropy(x, target, inplace_backward=inplace)
    elif name == "eager":
        def loss_fn(x):
            return F.cross_entropy(x, target)
    elif name == "x_transformers":
        from x_transformers.autoregressive_wrapper import cross_entropy as xt_ce

        def loss_fn(x):  # as the wrapper calls it: logits (b, c, n)
            return xt_ce(x.t().unsqueeze(0), target.unsqueeze(0), ignore_index=-100)
    elif name == "torch_compile":
        compiled = torch.compile(F.cross_entropy)

        def loss_fn(x):
            return compiled(x, target)
    else:
        raise SystemExit(f"unknown contender {name}")

    def step():
        loss = loss_fn(logits)
        (grad,) = torch.autograd.grad(loss, logits)
        return loss.detach(), grad

    def refill():  # the in-place variant overwrote the logits with their gradient
        with torch.no_grad():
            logits.copy_(source)

    refill()
    loss0, grad0 = step()  # warm-up (and compilation)
    step()  # a second one: lets the allocator settle on reusable buffers
    # check against float64 so a fast wrong answer can't win
    ref = F.cross_entropy(source.double(), target)
    err = abs(loss0.item() - ref.item()) / max(1.0, abs(ref.item()))
    del grad0
    refill()
    if args.measure == "memory":
        print(json.dumps({"peak_extra_bytes": peak_extra_bytes(step), "loss_rel_err": err}))
    else:
        print(json.dumps({"time_s": median_time(step, args.repeats, before_each=refill), "loss_rel_err": err}))


def run_child(contender, rows, V, args, measures=("time", "memory")):
    from _measure import run_isolated

    return run_isolated(__file__, ["--contender", contender, "--rows", rows, "--vocab", V] + common_args(args),
                        measures=measures)


def common_args(args):
    return ["--threads", args.threads, "--repeats", args.repeats, "--ignore-frac", args.ignore_frac]


FLOOR_LABELS = {"time_s": "floor (read + write logits in place)"}


def add_floors(results, args):
    """Measures the floor of every shape in results (each in its own process) and adds it to them."""
    for rows, V in sorted({(r["rows"], r["vocab"]) for r in results}):
        print(f"  {rows}x{V} floor ...", file=sys.stderr, flush=True)
        f = run_child("floor", rows, V, args, measures=("floor",))
        for r in results:
            if (r["rows"], r["vocab"]) == (rows, V) and "floor_time_s" in f:
                r["floor_time_s"] = f["floor_time_s"]


def add_floor_only(args):
    """Measures the floor of every shape of the stored results (args.out.json) and adds it there."""
    from _measure import render_chart

    path = Path(args.out).with_suffix(".json")
    payload = json.loads(path.read_text())
    add_floors(payload["results"], args)
    import torch

    payload["floor_labels"] = FLOOR_LABELS
    payload.setdefault("env", {})["floor"] = {
        "note": "measured after the contenders, by --floor-only", "threads": args.threads, "repeats": args.repeats,
        "torch": torch.__version__, "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", "unset")}
    path.write_text(json.dumps(payload, indent=1))
    render_chart(path)


def main():
    ap = bench_parser(__doc__, str(HERE / "results" / "cross_entropy"), repeats=5,
                      hidden=[("--contender", str), ("--rows", int), ("--vocab", int)])
    ap.add_argument("--shapes", default="4096x256,8192x32000,4096x128256", help="comma-separated ROWSxVOCAB")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--ignore-frac", type=float, default=0.05)
    ap.add_argument("--floor-only", action="store_true",
                    help="measure only the floor of the shapes in --out's JSON and add it there")
    args = ap.parse_args()
    if args.child:
        return child(args)

    import torch

    sys.path.insert(0, str(HERE))
    from _measure import measure_shapes, write_results

    if args.floor_only:
        return add_floor_only(args)
    results = measure_shapes(__file__, args.shapes, args.contenders, ("rows", "vocab"), common_args(args))
    for r in results:
        r["logits_bytes"] = r["rows"] * r["vocab"] * 4
    add_floors(results, args)

    env = {"torch": torch.__version__, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
           "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", "unset"), "repeats": args.repeats}
    lines = [f"float32, {args.threads} threads, {args.ignore_frac:.0%} ignored targets, median of {args.repeats}, "
             f"torch {env['torch']}, THP_MEM_ALLOC_ENABLE={env['THP_MEM_ALLOC_ENABLE']}. {load_note(WATCH)}", "",
             "| rows x V | contender | fwd+bwd ms | vs eager | vs x-transformers | peak extra MB | extra / logits | loss rel. err |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for shape in args.shapes.split(","):
        rows, V = (int(v) for v in shape.lower().split("x"))
        rs = {r["contender"]: r for r in results if r["rows"] == rows and r["vocab"] == V}
        base = rs.get("eager", {}).get("time_s")
        xt = rs.get("x_transformers", {}).get("time_s")
        for c, r in rs.items():
            if "error" in r:
                lines.append(f"| {rows}x{V} | {c} | error: {r['error'][:60]} | | | | | |")
                continue
            t = r["time_s"]
            vs_eager = f"{base / t:.2f}x" if base else "–"
            vs_xt = f"{xt / t:.2f}x" if xt else "–"
            lines.append(
                f"| {rows}x{V} | {c} | {t * 1e3:.1f} | {vs_eager} | {vs_xt} | {r['peak_extra_bytes'] / 2**20:.1f} | "
                f"{r['peak_extra_bytes'] / r['logits_bytes']:.1%} | {r['loss_rel_err']:.1e} |")
        floor_t = next((r["floor_time_s"] for r in rs.values() if "floor_time_s" in r), None)
        if floor_t is not None:
            lines.append(f"| {rows}x{V} | floor: read + write logits in place | {floor_t * 1e3:.3g} | | | | | |")
    write_results(args.out, lines, {"env": env, "results": results, "floor_labels": FLOOR_LABELS})


if __name__ == "__main__":
    main()

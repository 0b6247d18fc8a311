"""Fused linear cross-entropy, forward+backward, against the anchors, side by side in one run.

    python bench/bench_linear_cross_entropy.py          # (N, D, V) of the issue
    python bench/bench_linear_cross_entropy.py --shapes 2048x512x32000 --repeats 2

Contenders: arwrap_cpp.linear_cross_entropy; eager F.cross_entropy(h @ W.T);
PyTorch's chunked F.linear_cross_entropy(options=LinearCrossEntropyOptions());
Apple's Cut Cross-Entropy with impl="torch_compile" (its CPU path; needs the
`bench` extra: cut-cross-entropy and triton). Each in its own process; time is the
median of --repeats steps after a warm-up; memory is the peak resident memory one
step adds over its inputs, and is compared with grad_hidden + grad_weight, the floor.
Writes bench/results/linear_cross_entropy.{json,md}.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from _measure import bench_parser

HERE = Path(__file__).resolve().parent
CONTENDERS = ["arwrap", "eager", "torch_chunked", "cce_torch_compile"]


def child(args):
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(HERE))
    from _measure import median_time, peak_extra_bytes

    torch.set_num_threads(args.threads)
    N, D, V = args.n, args.d, args.v
    g = torch.Generator().manual_seed(0)
    h = torch.randn(N, D, generator=g).requires_grad_(True)
    W = (torch.randn(V, D, generator=g) / D**0.5).requires_grad_(True)
    t = torch.randint(0, V, (N,), generator=g)
    t[torch.rand(N, generator=g) < 0.05] = -100

    name = args.contender
    if name == "arwrap":
        import arwrap_cpp

        fn = lambda: arwrap_cpp.linear_cross_entropy(h, W, t)
    elif name == "eager":
        fn = lambda: F.cross_entropy(h @ W.T, t)
    elif name == "torch_chunked":
        opts = torch.nn.LinearCrossEntropyOptions()
        fn = lambda: F.linear_cross_entropy(h, W, t, ignore_index=-100, options=opts)
    elif name == "cce_torch_compile":
        from cut_cross_entropy import linear_cross_entropy as cce

        fn = lambda: cce(h, W, t, impl="torch_compile")
    else:
        raise SystemExit(f"unknown contender {name}")

    def step():
        loss = fn()
        gh, gw = torch.autograd.grad(loss, (h, W))
        return loss.detach(), gh, gw

    loss0, *_ = step()
    if args.measure == "memory":
        print(json.dumps({"peak_extra_bytes": peak_extra_bytes(step), "loss": loss0.item()}))
    else:
        print(json.dumps({"time_s": median_time(step, args.repeats), "loss": loss0.item()}))


def main():
    ap = bench_parser(__doc__, str(HERE / "results" / "linear_cross_entropy"), repeats=3,
                      hidden=[("--contender", str), ("--n", int), ("--d", int), ("--v", int)])
    ap.add_argument("--shapes", default="8192x1024x32000,4096x1024x128256", help="comma-separated NxDxV")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    args = ap.parse_args()
    if args.child:
        return child(args)
    import torch

    sys.path.insert(0, str(HERE))
    from _measure import measure_shapes, write_results

    results = measure_shapes(__file__, args.shapes, args.contenders, ("n", "d", "v"),
                             ["--threads", args.threads, "--repeats", args.repeats])
    for r in results:  # the floor: grad_hidden + grad_weight, which any implementation must hold
        r["floor_peak_extra_bytes"] = (r["n"] * r["d"] + r["v"] * r["d"]) * 4
    lines = [f"float32, {args.threads} threads, 5% ignored targets, median of {args.repeats}, torch {torch.__version__}",
             "", "| N x D x V | contender | fwd+bwd s | vs eager | peak extra MB | / (grad_h + grad_W) | loss |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for shape in args.shapes.split(","):
        N, D, V = (int(v) for v in shape.lower().split("x"))
        floor = (N * D + V * D) * 4
        rs = {r["contender"]: r for r in results if (r["n"], r["d"], r["v"]) == (N, D, V)}
        base = rs.get("eager", {}).get("time_s")
        for c, r in rs.items():
            if "error" in r:
                lines.append(f"| {shape} | {c} | error: {r['error'][:70]} | | | | |")
                continue
            lines.append(f"| {shape} | {c} | {r['time_s']:.2f} | {base / r['time_s'] if base else float('nan'):.2f}x | "
                         f"{r['peak_extra_bytes'] / 2**20:.0f} | {r['peak_extra_bytes'] / floor:.2f}x | "
                         f"{r['loss']:.5f} |")
    write_results(args.out, lines, {"threads": args.threads, "results": results,
                                    "floor_labels": {"peak_extra_bytes": "grad_h + grad_W"}})


if __name__ == "__main__":
    main()

"""Fused linear cross-entropy, forward+backward, against the anchors, side by side in one run.

    python bench/bench_linear_cross_entropy.py          # (N, D, V) of the issue, float32 and bfloat16
    python bench/bench_linear_cross_entropy.py --shapes 2048x512x32000 --dtypes bf16 --repeats 2
    python bench/bench_linear_cross_entropy.py --contenders arwrap,arwrap_unfused --out bench/results/fused_head \
        --shapes 4096x256x256,4096x256x1024,4096x256x4096,4096x256x32000 --repeats 5   # fused or not, T's head

Contenders: arwrap_cpp.linear_cross_entropy; arwrap_unfused, the logits and then
arwrap_cpp.cross_entropy with its in-place backward (the native net's head if it did not fuse;
in bf16 on a CPU without AVX-512 its products on the float32 route the native net takes there,
csrc/ops/low_precision_mm.h); eager F.cross_entropy(h @ W.T);
PyTorch's chunked F.linear_cross_entropy(options=LinearCrossEntropyOptions());
Apple's Cut Cross-Entropy with impl="torch_compile" (its CPU path; needs the
`bench` extra: cut-cross-entropy and triton). Each in its own process; time is the
median of --repeats steps after a warm-up; memory is the peak resident memory one
step adds over its inputs, and is compared with grad_hidden + grad_weight, the floor.
In bfloat16 (--dtypes), hidden and weight are bfloat16 leaves for every contender.
The time floor ("floor" row): the three GEMMs any implementation runs (logits, grad_hidden,
grad_weight; 6 N D V FLOPs) as torch.mm / addmm in 2048-row chunks, in the same dtype,
timed like a contender.
Writes bench/results/linear_cross_entropy.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _measure import bench_parser

HERE = Path(__file__).resolve().parent
CONTENDERS = ["floor", "arwrap", "arwrap_unfused", "eager", "torch_chunked", "cce_torch_compile"]
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def child(args):
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(HERE))
    from _measure import median_time, peak_extra_bytes

    torch.set_num_threads(args.threads)
    N, D, V = args.n, args.d, args.v
    g = torch.Generator().manual_seed(0)
    dtype = getattr(torch, DTYPES[args.dtype])
    h = torch.randn(N, D, generator=g).to(dtype).requires_grad_(True)
    W = (torch.randn(V, D, generator=g) / D**0.5).to(dtype).requires_grad_(True)
    t = torch.randint(0, V, (N,), generator=g)
    t[torch.rand(N, generator=g) < 0.05] = -100

    name = args.contender
    if name == "floor":  # measured as the contenders are, warm-up included
        step = floor_step(h.detach(), W.detach())
    elif name == "arwrap":
        import arwrap_cpp

        fn = lambda: arwrap_cpp.linear_cross_entropy(h, W, t)
    elif name == "arwrap_unfused":
        import arwrap_cpp

        if dtype != torch.float32 and arwrap_cpp.lowp_gemm_upcasts(dtype):
            # the native net's linear there: the float32 route of csrc/ops/low_precision_mm.h
            fn = lambda: arwrap_cpp.cross_entropy((h.float() @ W.float().T).to(dtype), t, inplace_backward=True)
        else:
            fn = lambda: arwrap_cpp.cross_entropy(h @ W.T, t, inplace_backward=True)
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
    if name != "floor":
        def step():
            loss = fn()
            gh, gw = torch.autograd.grad(loss, (h, W))
            return loss.detach(), gh, gw

    loss0, *_ = step()
    if args.measure == "memory":
        print(json.dumps({"peak_extra_bytes": peak_extra_bytes(step), "loss": loss0.item()}))
    else:
        print(json.dumps({"time_s": median_time(step, args.repeats), "loss": loss0.item()}))


def floor_step(h, W, chunk=2048):
    """The three GEMMs of a linear cross-entropy, and nothing else, in row chunks."""
    import torch

    N = h.shape[0]
    gw = torch.zeros_like(W)

    def step():
        for r0 in range(0, N, chunk):
            hc = h[r0:r0 + chunk]
            z = hc @ W.T  # logits (the gradient over them stands in z: same shape, same dtype)
            _ = z @ W  # grad_hidden
            gw.addmm_(z.T, hc)  # grad_weight
        return (torch.tensor(float("nan")),)  # no loss
    return step


def main():
    ap = bench_parser(__doc__, str(HERE / "results" / "linear_cross_entropy"), repeats=3,
                      hidden=[("--contender", str), ("--n", int), ("--d", int), ("--v", int)])
    ap.add_argument("--shapes", default="8192x1024x32000,4096x1024x128256", help="comma-separated NxDxV")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma-separated subset of " + ",".join(DTYPES))
    ap.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    import torch

    sys.path.insert(0, str(HERE))
    from _measure import WATCH, load_note, measure_shapes, write_results

    results = []
    for dt in args.dtypes.split(","):
        for r in measure_shapes(__file__, args.shapes, args.contenders, ("n", "d", "v"),
                                ["--threads", args.threads, "--repeats", args.repeats, "--dtype", dt]):
            results.append({**r, "dtype": dt})
    for r in results:  # the memory floor: grad_hidden + grad_weight, which any implementation must hold
        r["floor_peak_extra_bytes"] = (r["n"] * r["d"] + r["v"] * r["d"]) * (2 if r["dtype"] == "bf16" else 4)
    lines = [f"{args.threads} threads, 5% ignored targets, median of {args.repeats}, torch {torch.__version__}. "
             f"{load_note(WATCH)} Time floor: the three GEMMs alone (6 N D V FLOPs) at this run's rate; "
             "memory floor: grad_hidden + grad_weight.", "",
             "| N x D x V | dtype | contender | fwd+bwd s | / time floor | vs eager | peak extra MB | "
             "/ (grad_h + grad_W) | loss |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for dt in args.dtypes.split(","):
        for shape in args.shapes.split(","):
            N, D, V = (int(v) for v in shape.lower().split("x"))
            rs = {r["contender"]: r for r in results if (r["n"], r["d"], r["v"], r["dtype"]) == (N, D, V, dt)}
            base = rs.get("eager", {}).get("time_s")
            floor_t = rs.get("floor", {}).get("time_s")
            for c, r in rs.items():
                if "error" in r:
                    lines.append(f"| {shape} | {dt} | {c} | error: {r['error'][:70]} | | | | | |")
                    continue
                if c == "floor":
                    r["floor_time_s"] = r["time_s"]
                    lines.append(f"| {shape} | {dt} | floor ({6 * N * D * V / r['time_s'] / 1e9:.0f} GFLOP/s) | "
                                 f"{r['time_s']:.2f} | 1.00 | | | | |")
                    continue
                if floor_t:
                    r["floor_time_s"] = floor_t
                lines.append(f"| {shape} | {dt} | {c} | {r['time_s']:.2f} | "
                             f"{r['time_s'] / floor_t if floor_t else float('nan'):.2f} | "
                             f"{base / r['time_s'] if base else float('nan'):.2f}x | "
                             f"{r['peak_extra_bytes'] / 2**20:.0f} | "
                             f"{r['peak_extra_bytes'] / r['floor_peak_extra_bytes']:.2f}x | {r['loss']:.5f} |")
    write_results(args.out, lines, {"threads": args.threads, "results": [r for r in results if r["contender"] != "floor"],
                                    "floor_labels": {"peak_extra_bytes": "grad_h + grad_W", "time_s": "3 GEMMs"}})


if __name__ == "__main__":
    main()

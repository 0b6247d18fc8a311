"""Causal attention forward + backward alone, at the step configurations' shapes: the fused
operator (arwrap_cpp.attention) against PyTorch's SDPA (the CPU flash kernel x-transformers
uses with attn_flash=True), and the floor: the seven causal products (QK^T, PV; QK^T, dP, dV,
dQ, dK, each half of a full product) at the matmul rate measured in the same run on a large
product of the same dtype. Round-robin in one process, so the machine's drift hits all alike.

    python bench/bench_attention.py --configs A,B,T --precisions fp32,bf16 --repeats 5

Writes bench/results/attention.{md,json,png}. The host's ISA is recorded: a CPU without
avx512_bf16/AMX has no fast bf16 GEMM, and its bf16 floor says so.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import WATCH, bench_parser, cpu_note, load_note, peak_extra_bytes, round_robin, write_results  # noqa: E402

from configs import CONFIGS, DIM_HEAD, HEADS, TRAINER, TRAINER_HEADS  # noqa: E402

# the step configurations' attention: (batch, heads, seq_len, dim_head)
SHAPES = {name: (c[3], HEADS, c[4] - 1, DIM_HEAD) for name, c in CONFIGS.items() if name in ("A", "B")}
SHAPES["T"] = (TRAINER[3], TRAINER_HEADS, TRAINER[4] - 1, DIM_HEAD)


DEFAULT_OUT = str(HERE / "results" / "attention")


def steps_for(shape, dtype):
    import torch
    import torch.nn.functional as F

    import arwrap_cpp

    b, h, n, d = shape
    g = torch.Generator().manual_seed(0)

    def leaf():  # heads split off a projection, as in the nets
        return torch.randn(b, n, h * d, generator=g).view(b, n, h, d).transpose(1, 2).to(dtype).requires_grad_(True)

    q, k, v = leaf(), leaf(), leaf()
    up = torch.randn(b, h, n, d, generator=g).to(dtype)

    def run(fn):
        def step():
            for t in (q, k, v):
                t.grad = None
            out = fn(q, k, v)
            out.backward(up)
            return out.float().square().mean()
        return step

    side = 1024 if dtype == torch.float32 else 512
    A, B = torch.randn(side, side, dtype=dtype), torch.randn(side, side, dtype=dtype)
    return {
        "arwrap": run(lambda a, b_, c: arwrap_cpp.attention(a, b_, c)),
        "sdpa": run(lambda a, b_, c: F.scaled_dot_product_attention(a, b_, c, is_causal=True)),
        "matmul": lambda: (A @ B)[0, 0],
    }, 2.0 * side**3, 7 * 2.0 * b * h * n * n * d * 0.5


def main():
    ap = bench_parser(__doc__, DEFAULT_OUT, repeats=5)
    ap.add_argument("--configs", default="A,B,T")
    ap.add_argument("--precisions", default="fp32,bf16")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results, lines = [], []
    for cfg in args.configs.split(","):
        for prec in args.precisions.split(","):
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[prec]
            steps, mm_flop, flop = steps_for(SHAPES[cfg], dtype)
            r = round_robin(steps, args.repeats, label=f"{cfg} {prec}")
            rate = mm_flop / r["matmul"]["time_s"]
            floor = flop / rate
            for name in ("arwrap", "sdpa"):
                mem = peak_extra_bytes(steps[name])
                results.append({"config": cfg, "precision": prec, "contender": name, "time_s": r[name]["time_s"],
                                "peak_extra_bytes": mem, "floor_time_s": floor, "gflop": flop / 1e9,
                                "matmul_gflops": rate / 1e9})
            ours, sdpa = r["arwrap"]["time_s"], r["sdpa"]["time_s"]
            lines.append(f"| {cfg} {SHAPES[cfg]} | {prec} | {ours * 1e3:.1f} | {sdpa * 1e3:.1f} | "
                         f"{sdpa / ours:.2f}x | {floor * 1e3:.1f} ({flop / 1e9:.2f} GFLOP at {rate / 1e9:.1f} GFLOP/s) | "
                         f"{ours / floor:.2f} | {sdpa / floor:.2f} |")
    head = [
        "# Causal attention, forward + backward (bench/bench_attention.py)",
        "",
        f"{args.threads} threads; CPU flags: {cpu_note()}. {load_note(WATCH)}",
        "",
        "Command: `python bench/bench_attention.py --configs " + args.configs + " --precisions " + args.precisions +
        f" --repeats {args.repeats}" + (f" --out {args.out}" if args.out != DEFAULT_OUT else "") + "`",
        "",
        "| config (b, h, n, d) | precision | arwrap ms | SDPA ms | arwrap vs SDPA | floor ms | arwrap / floor | "
        "SDPA / floor |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    write_results(args.out, head + lines, {"results": results, "floor_labels": {"time": "7 causal products"}})


if __name__ == "__main__":
    main()

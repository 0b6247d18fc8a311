"""The pre-norm alone (x-transformers' LayerNorm: layer_norm without affine, times gamma), forward +
backward, on the residual stream of the step configurations (batch, seq_len, dim): the fused
operator (torch.ops.arwrap.norm, what the native net calls) against the ATen composition the net
ran before, eager and under torch.compile, and the floor: the bytes a fused forward + backward
must move (read x and write the output; read the upstream gradient and x, write d x) at the copy
bandwidth measured in the same run. bf16: the residual stream in float32 and the output in bf16
(the products' input under autocast: the composition casts it, the operator writes it so), the
upstream gradient in bf16. Round-robin in one process.

    python bench/bench_norm.py --configs A,B,C,T --precisions fp32,bf16 --repeats 15

Writes bench/results/norm.{md,json}.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import bench_parser, elementwise_row, write_elementwise  # noqa: E402

from bench_step import CONFIGS  # noqa: E402  (V, dim, depth, batch, seq_len + 1, heads, rotary)


def shape_of(cfg):
    _, dim, _, b, n1, _, _ = CONFIGS[cfg]
    return b, n1 - 1, dim


def steps_for(shape, out_dtype):
    import torch
    import torch.nn.functional as F

    import arwrap_cpp  # noqa: F401  (registers torch.ops.arwrap)

    g = torch.Generator().manual_seed(0)
    x = (2 * torch.randn(*shape, generator=g) + 0.5).requires_grad_(True)
    gamma = (1 + 0.1 * torch.randn(shape[-1], generator=g)).requires_grad_(True)
    up = torch.randn(*shape, generator=g).to(out_dtype)

    def composed(a, w):
        return (F.layer_norm(a, a.shape[-1:], eps=1e-5) * w).to(out_dtype)

    compiled = torch.compile(composed)

    def run(fn):
        def step():
            x.grad = gamma.grad = None
            fn(x, gamma).backward(up)
            return x.grad[0, 0, 0].float()
        return step

    n = x.numel()
    out_bytes = torch.empty((), dtype=out_dtype).element_size()
    nbytes = n * (4 + out_bytes + out_bytes + 4 + 4)  # x, out; d out, x, d x
    return {
        "arwrap": run(lambda a, w: torch.ops.arwrap.norm(a, w, False, False, out_dtype)),
        "eager": run(composed),
        "compiled": run(compiled),
    }, nbytes


def main():
    ap = bench_parser(__doc__, str(HERE / "results" / "norm"), repeats=7)
    ap.add_argument("--configs", default="A,B,C,T")
    ap.add_argument("--precisions", default="fp32,bf16")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results, lines = [], []
    for cfg in args.configs.split(","):
        shape = shape_of(cfg)
        for prec in args.precisions.split(","):
            out_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[prec]
            steps, nbytes = steps_for(shape, out_dtype)
            entries, cells = elementwise_row(steps, nbytes, args.repeats, f"{cfg} {prec}",
                                             {"config": cfg, "precision": prec})
            results += entries
            lines.append(f"| {cfg} {shape} | {prec} | {cells} |")
    write_elementwise(args, "The pre-norm, forward + backward", "bench_norm.py",
                      f"--configs {args.configs} --precisions {args.precisions}",
                      ("config (b, n, dim)", "precision"), lines, results,
                      notes=("x-transformers' LayerNorm on the residual stream (float32); bf16: the output in bf16 "
                             "(autocast's products' input) and a bf16 upstream gradient.",))


if __name__ == "__main__":
    main()

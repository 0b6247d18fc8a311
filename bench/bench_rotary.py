"""The rotary embedding of q (or k) alone, forward + backward, at the step configurations'
attention shapes (the heads of a projection: a (b, h, n, d) view of (b, n, h, d) memory): the
fused operator (torch.ops.arwrap.rotary, what the native net calls) against the ATen composition
the net ran before (x-transformers' rotate_half: a reshape, a negation, a stack and two products),
eager and under torch.compile, and the floor: the bytes a fused forward + backward must move
(read t, write the output; read the upstream gradient, write d t) at the copy bandwidth
measured in the same run. float32 tables, as the net builds them (under bf16 autocast q and k
are bf16: the composition promotes to float32, the operator rounds to bf16 once). Round-robin
in one process.

    python bench/bench_rotary.py --configs A,B,T --precisions fp32,bf16 --repeats 15

Writes bench/results/rotary.{md,json,png}.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import bench_parser, elementwise_row, write_elementwise  # noqa: E402

from bench_attention import SHAPES  # noqa: E402  (the step configurations' (batch, heads, seq_len, dim_head))


def steps_for(shape, dtype):
    import torch

    import arwrap_cpp  # noqa: F401  (registers torch.ops.arwrap)

    b, h, n, d = shape
    g = torch.Generator().manual_seed(0)
    t = torch.randn(b, n, h * d, generator=g).view(b, n, h, d).transpose(1, 2).to(dtype).requires_grad_(True)
    up = torch.randn(b, h, n, d, generator=g).to(dtype)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, d, 2).float() / d)
    freqs = torch.outer(torch.arange(n).float(), inv_freq).repeat_interleave(2, -1)
    cos, sin = freqs.cos(), freqs.sin()

    def composed(x):
        pairs = x.reshape(-1, d // 2, 2).unbind(-1)
        rotated = torch.stack([-pairs[1], pairs[0]], -1).reshape(x.shape)
        return x * cos + rotated * sin

    compiled = torch.compile(composed)

    def run(fn):
        def step():
            t.grad = None
            out = fn(t)
            out.backward(up.to(out.dtype))
            return t.grad[0, 0, 0, 0].float()
        return step

    return {
        "arwrap": run(lambda x: torch.ops.arwrap.rotary(x, cos, sin)),
        "eager": run(composed),
        "compiled": run(compiled),
    }, 4 * t.numel() * t.element_size()


def main():
    ap = bench_parser(__doc__, str(HERE / "results" / "rotary"), repeats=7)
    ap.add_argument("--configs", default="A,B,T")
    ap.add_argument("--precisions", default="fp32,bf16")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results, lines = [], []
    for cfg in args.configs.split(","):
        for prec in args.precisions.split(","):
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[prec]
            steps, nbytes = steps_for(SHAPES[cfg], dtype)
            entries, cells = elementwise_row(steps, nbytes, args.repeats, f"{cfg} {prec}",
                                             {"config": cfg, "precision": prec})
            results += entries
            lines.append(f"| {cfg} {SHAPES[cfg]} | {prec} | {cells} |")
    write_elementwise(args, "The rotary embedding of q, forward + backward", "bench_rotary.py",
                      f"--configs {args.configs} --precisions {args.precisions}",
                      ("config (b, h, n, d)", "precision"), lines, results)


if __name__ == "__main__":
    main()

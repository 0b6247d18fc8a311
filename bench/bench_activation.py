"""The feed-forward's activation alone, forward + backward, at the step configurations' shapes
(rows = batch x seq_len, inner = 4 dim): the fused operator (torch.ops.arwrap.activation, what
the native net's feed-forward calls) against the ATen composition (F.gelu, or chunk, F.silu and
a product for the GLU) eager and under torch.compile (inductor fuses the element-wise ops), and
the floor: the bytes a fused forward + backward must move (read f, write the output; read the
upstream gradient and f, write df) at the copy bandwidth measured in the same run. GELU is the
benchmarks' nets' activation; SwiGLU (glu with SiLU) the common GLU. Round-robin in one process.

    python bench/bench_activation.py --configs A,B,T --precisions fp32,bf16 --repeats 7

Writes bench/results/activation.{md,json,png}.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import bench_parser, elementwise_row, write_elementwise  # noqa: E402

from configs import CONFIGS, TRAINER  # noqa: E402

# (rows, inner): the feed-forward of each step configuration (ff_mult 4)
SHAPES = {name: (c[3] * (c[4] - 1), 4 * c[1]) for name, c in CONFIGS.items() if name in ("A", "B")}
SHAPES["T"] = (TRAINER[3] * (TRAINER[4] - 1), 4 * TRAINER[1])
KINDS = {"gelu": (False, False), "swiglu": (True, True)}


def steps_for(rows, inner, glu, swish, dtype):
    import torch
    import torch.nn.functional as F

    import arwrap_cpp  # noqa: F401  (registers torch.ops.arwrap)

    g = torch.Generator().manual_seed(0)
    f = torch.randn(rows, 2 * inner if glu else inner, generator=g).to(dtype).requires_grad_(True)
    up = torch.randn(rows, inner, generator=g).to(dtype)

    def composed(x):
        act = F.silu if swish else F.gelu
        if not glu:
            return act(x)
        a, gate = x.chunk(2, -1)
        return a * act(gate)

    compiled = torch.compile(composed)

    def run(fn):
        def step():
            f.grad = None
            out = fn(f)
            out.backward(up)
            return f.grad[0, 0].float()
        return step

    return {
        "arwrap": run(lambda x: torch.ops.arwrap.activation(x, glu, swish)),
        "eager": run(composed),
        "compiled": run(compiled),
    }, (2 * f.numel() + 2 * up.numel()) * f.element_size()


def main():
    ap = bench_parser(__doc__, str(HERE / "results" / "activation"), repeats=7)
    ap.add_argument("--configs", default="A,B,T")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--kinds", default="gelu,swiglu")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results, lines = [], []
    for cfg in args.configs.split(","):
        rows, inner = SHAPES[cfg]
        for kind in args.kinds.split(","):
            glu, swish = KINDS[kind]
            for prec in args.precisions.split(","):
                dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[prec]
                steps, nbytes = steps_for(rows, inner, glu, swish, dtype)
                entries, cells = elementwise_row(steps, nbytes, args.repeats, f"{cfg} {kind} {prec}",
                                                 {"config": cfg, "kind": kind, "precision": prec}, digits=1)
                results += entries
                lines.append(f"| {cfg} ({rows} x {inner}) | {kind} | {prec} | {cells} |")
    write_elementwise(args, "The feed-forward activation, forward + backward", "bench_activation.py",
                      f"--configs {args.configs} --precisions {args.precisions} --kinds {args.kinds}",
                      ("config (rows x inner)", "kind", "precision"), lines, results)


if __name__ == "__main__":
    main()

"""A whole training step (loss = wrapper(x); loss.backward()) with an x-transformers net:
arwrap_cpp.AutoregressiveWrapper vs x-transformers' AutoregressiveWrapper, side by side.

    python bench/bench_wrapper.py                   # configurations A, B, C of the issue
    python bench/bench_wrapper.py --configs C --repeats 3

Time: one process per configuration wraps the same net with each wrapper and runs
their steps round-robin (--repeats rounds after two warm-up steps each), so slow
drifts of the machine hit all of them alike; the median per wrapper is reported.
Memory: each (configuration, wrapper) in its own process, the resident memory one
step adds over the model and its inputs (see _measure.py). Writes bench/results/wrapper.{json,md}.
"""
from __future__ import annotations

import sys
from pathlib import Path

from _measure import bench_parser
from configs import CONFIGS, HEADS  # name: (num_tokens, dim, depth, batch, seq_len + 1)

HERE = Path(__file__).resolve().parent
WRAPPERS = ("x_transformers", "arwrap", "arwrap_fused_head")


def child(args):
    import torch
    from x_transformers import AutoregressiveWrapper as XT
    from x_transformers import Decoder, TransformerWrapper

    import arwrap_cpp

    sys.path.insert(0, str(HERE))
    from _measure import step_child

    torch.set_num_threads(args.threads)
    V, dim, depth, b, n1 = CONFIGS[args.config]
    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=V, max_seq_len=n1, attn_layers=Decoder(dim=dim, depth=depth, heads=HEADS))
    x = torch.randint(0, V, (b, n1))

    def build(name):
        if name == "x_transformers":
            return XT(net), net
        return arwrap_cpp.AutoregressiveWrapper(net, fused_head=name == "arwrap_fused_head"), net

    step_child(args.measure, args.repeats, build, x, args.wrapper, WRAPPERS)


def main():
    ap = bench_parser(__doc__, str(HERE / "results" / "wrapper"), repeats=5,
                      hidden=[("--config", str), ("--wrapper", str)])
    ap.add_argument("--configs", default="A,B,C")
    args = ap.parse_args()
    if args.child:
        return child(args)
    import torch

    sys.path.insert(0, str(HERE))
    from _measure import measure_contenders, step_table_rows, write_results

    configs = args.configs.split(",")
    results = measure_contenders(__file__, configs, WRAPPERS, "wrapper",
                                 ["--threads", args.threads, "--repeats", args.repeats])
    lines = [f"float32, {args.threads} threads, median of {args.repeats} round-robin steps, torch {torch.__version__}", "",
             "| config | wrapper | step ms | speed-up | peak extra MB | memory ratio | loss |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += step_table_rows(configs, CONFIGS, results, "wrapper")
    write_results(args.out, lines, {"threads": args.threads, "results": results})


if __name__ == "__main__":
    main()

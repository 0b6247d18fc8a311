"""A whole training step (loss = wrapper(x); loss.backward()) with an x-transformers net:
arwrap_cpp.AutoregressiveWrapper vs x-transformers' AutoregressiveWrapper, side by side.

    python bench/bench_wrapper.py                   # configurations A, B, C of the issue
    python bench/bench_wrapper.py --configs C --repeats 3

Each (configuration, wrapper) runs in its own process: time is the median of
--repeats steps after two warm-up steps; peak memory is the resident memory one step
adds over the model and its inputs (see _measure.py). Writes bench/results/wrapper.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = {  # name: (num_tokens, dim, depth, batch, seq_len + 1)
    "A": (256, 512, 6, 4, 1025),
    "B": (256, 256, 4, 8, 513),
    "C": (32000, 512, 2, 4, 513),
}


def child(args):
    import torch
    from x_transformers import AutoregressiveWrapper as XT
    from x_transformers import Decoder, TransformerWrapper

    import arwrap_cpp

    sys.path.insert(0, str(HERE))
    from _measure import median_time, peak_extra_bytes

    torch.set_num_threads(args.threads)
    V, dim, depth, b, n1 = CONFIGS[args.config]
    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=V, max_seq_len=n1, attn_layers=Decoder(dim=dim, depth=depth, heads=8))
    if args.wrapper == "x_transformers":
        wrapper = XT(net)
    else:
        wrapper = arwrap_cpp.AutoregressiveWrapper(net, fused_head=args.wrapper == "arwrap_fused_head")
    x = torch.randint(0, V, (b, n1))

    def step():
        loss = wrapper(x)
        loss.backward()
        for p in net.parameters():
            p.grad = None
        return loss.detach()

    l0 = step()
    step()
    if args.measure == "memory":
        print(json.dumps({"peak_extra_bytes": peak_extra_bytes(step), "loss": l0.item()}))
    else:
        print(json.dumps({"time_s": median_time(step, args.repeats), "loss": l0.item()}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="A,B,C")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "wrapper"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--measure", default="time", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--wrapper", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    import torch

    sys.path.insert(0, str(HERE))
    from _measure import run_isolated

    results = []
    for cfg in args.configs.split(","):
        for w in ("x_transformers", "arwrap", "arwrap_fused_head"):
            print(f"  {cfg} {w} ...", file=sys.stderr, flush=True)
            r = {"config": cfg, "wrapper": w}
            r.update(run_isolated(__file__, ["--config", cfg, "--wrapper", w, "--threads", args.threads,
                                             "--repeats", args.repeats]))
            results.append(r)
    lines = [f"float32, {args.threads} threads, median of {args.repeats} steps, torch {torch.__version__}", "",
             "| config | wrapper | step ms | speed-up | peak extra MB | memory ratio | loss |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for cfg in args.configs.split(","):
        V, dim, depth, b, n1 = CONFIGS[cfg]
        rs = {r["wrapper"]: r for r in results if r["config"] == cfg}
        base = rs.get("x_transformers", {})
        for w, r in rs.items():
            label = f"{cfg}: V={V}, dim {dim}, depth {depth}, ({b}, {n1})"
            if "error" in r:
                lines.append(f"| {label} | {w} | error: {r['error'][:70]} | | | | |")
                continue
            sp = base.get("time_s", float("nan")) / r["time_s"]
            mr = r["peak_extra_bytes"] / base.get("peak_extra_bytes", float("nan"))
            lines.append(f"| {label} | {w} | {r['time_s'] * 1e3:.0f} | {sp:.2f}x | {r['peak_extra_bytes'] / 2**20:.0f} | "
                         f"{mr:.2f} | {r['loss']:.4f} |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"threads": args.threads, "results": results}, indent=1))
    out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()

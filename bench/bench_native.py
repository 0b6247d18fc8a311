"""The native net against x-transformers' net, side by side in one run:

* the training step (loss = wrapper(x); loss.backward()) of configurations A, B, C:
  x-transformers' TransformerWrapper + AutoregressiveWrapper, our wrapper around
  x-transformers' net (fused head), and arwrap_cpp.TransformerWrapper + our wrapper
  (the whole forward in C++). Same weights (loaded both ways), same batch.
* greedy generation with the key/value cache: tokens/s of x-transformers' generate
  and ours (arwrap::generate) on the same weights.

    python bench/bench_native.py                       # A, B, C and generation
    python bench/bench_native.py --configs B --repeats 3 --no-generate

Time: one process per configuration runs the contenders round-robin (--repeats
rounds after two warm-up steps each); medians. Memory: each (configuration,
contender) in its own process, the resident memory one step adds over the model
and its inputs (bench/_measure.py). Writes bench/results/native.{json,md}.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from _measure import bench_parser
from configs import CONFIGS as MODEL_CONFIGS, HEADS, TINY

HERE = Path(__file__).resolve().parent
CONTENDERS = ("x_transformers", "arwrap_xt_net", "arwrap_native")
CONFIGS = {**MODEL_CONFIGS, "tiny": TINY}  # name: (num_tokens, dim, depth, batch, seq_len + 1); heads 8
GEN = dict(num_tokens=256, dim=512, depth=6, batch=1, prompt=16, new=256)


def build(name, V, dim, depth, max_seq_len):
    """The contender's (wrapper, net); every contender gets the weights of seed 0."""
    import torch
    from x_transformers import AutoregressiveWrapper as XAR
    from x_transformers import Decoder, TransformerWrapper

    import arwrap_cpp

    torch.manual_seed(0)
    xt = TransformerWrapper(num_tokens=V, max_seq_len=max_seq_len,
                            attn_layers=Decoder(dim=dim, depth=depth, heads=HEADS, attn_flash=name.endswith("_flash")))
    if name.startswith("x_transformers"):
        return XAR(xt), xt
    if name == "arwrap_xt_net":
        return arwrap_cpp.AutoregressiveWrapper(xt, fused_head=True), xt
    net = arwrap_cpp.TransformerWrapper(num_tokens=V, max_seq_len=max_seq_len,
                                        attn_layers=arwrap_cpp.Decoder(dim=dim, depth=depth, heads=HEADS))
    net.load_state_dict(xt.state_dict())
    del xt
    return arwrap_cpp.AutoregressiveWrapper(net), net


def child(args):
    import torch

    sys.path.insert(0, str(HERE))
    from _measure import median_time, step_child

    torch.set_num_threads(args.threads)
    if args.measure == "generate":
        g = GEN
        out = {}
        prompts = torch.randint(0, g["num_tokens"], (g["batch"], g["prompt"]), generator=torch.Generator().manual_seed(1))
        runs = {}
        for name in ("x_transformers", "x_transformers_flash", "arwrap_native"):
            wrapper, net = build(name, g["num_tokens"], g["dim"], g["depth"], g["prompt"] + g["new"])
            net.eval()
            runs[name] = wrapper
        # the floor: every weight read once per token at the read bandwidth measured here
        weight_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
        big = torch.randn(64 * 2**20)  # 256 MiB: not in any cache
        big.sum()
        bandwidth = big.numel() * 4 / median_time(big.sum, 3)
        out["floor"] = {"tokens_per_s": bandwidth / weight_bytes, "weight_bytes": weight_bytes,
                        "read_bytes_per_s": bandwidth}
        tokens = {}
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, w in runs.items():
                t0 = time.perf_counter()
                with torch.no_grad():
                    tokens[name] = w.generate(prompts, g["new"], temperature=0.0, cache_kv=True)
                times[name].append(time.perf_counter() - t0)
        for name, t in times.items():
            out[name] = {"tokens_per_s": g["batch"] * g["new"] / statistics.median(t),
                         "same_tokens": torch.equal(tokens["x_transformers"], tokens[name])}
        print(json.dumps(out))
        return
    V, dim, depth, b, n1 = CONFIGS[args.config]
    x = torch.randint(0, V, (b, n1), generator=torch.Generator().manual_seed(2))

    step_child(args.measure, args.repeats, lambda name: build(name, V, dim, depth, n1), x, args.contender,
               CONTENDERS)


def main():
    ap = bench_parser(__doc__, str(HERE / "results" / "native"), repeats=3,
                      hidden=[("--config", str), ("--contender", str)])
    ap.add_argument("--configs", default="A,B,C")
    ap.add_argument("--no-generate", action="store_true")
    args = ap.parse_args()
    if args.child:
        return child(args)
    import torch

    sys.path.insert(0, str(HERE))
    from _measure import measure_contenders, run_isolated, step_table_rows, write_results

    configs = [c for c in args.configs.split(",") if c]
    common = ["--threads", args.threads, "--repeats", args.repeats]
    results = measure_contenders(__file__, configs, CONTENDERS, "contender", common)
    gen = None
    if not args.no_generate:
        print("  greedy generation with cache ...", file=sys.stderr, flush=True)
        gen = run_isolated(__file__, ["--config", "gen", "--contender", "all", *common], measures=("generate",))

    lines = [f"float32, {args.threads} threads, median of {args.repeats} round-robin steps, torch {torch.__version__}", "",
             "Training step (loss = wrapper(x); loss.backward()), heads 8, dim_head 64:", "",
             "| config | contender | step ms | speed-up vs x-transformers | peak extra MB | memory ratio | loss |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += step_table_rows(configs, CONFIGS, results, "contender")
    if gen is not None:
        g = GEN
        lines += ["", f"Greedy generation with the key/value cache: V={g['num_tokens']}, dim {g['dim']}, depth "
                      f"{g['depth']}, batch {g['batch']}, prompt {g['prompt']}, {g['new']} new tokens:", ""]
        if "error" in gen:
            lines.append(f"error: {gen['error'][:200]}")
        else:
            base = max(gen[c]["tokens_per_s"] for c in ("x_transformers", "x_transformers_flash"))
            fl = gen["floor"]
            lines += [f"floor: {fl['weight_bytes'] / 1e6:.0f} MB of weights read once per token at "
                      f"{fl['read_bytes_per_s'] / 1e9:.1f} GB/s (a 256 MiB read measured in the same process).", "",
                      "| contender | tokens/s | vs fastest x-transformers | / floor time | same tokens as x-transformers |",
                      "|---|---:|---:|---:|---|"]
            for c, r in gen.items():
                if c == "floor":
                    lines.append(f"| floor | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base:.2f}x | 1.00 | |")
                    continue
                lines.append(f"| {c} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base:.2f}x | "
                             f"{fl['tokens_per_s'] / r['tokens_per_s']:.2f} | {r['same_tokens']} |")
    write_results(args.out, lines, {"threads": args.threads, "results": results, "generate": gen})


if __name__ == "__main__":
    main()

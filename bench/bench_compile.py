"""What torch.compile gives the drop-in: one training step (loss = wrapper(x); loss.backward())
with an x-transformers net, eager and compiled (fullgraph=True), for both wrappers.

    python bench/bench_compile.py                       # configurations B and C
    python bench/bench_compile.py --configs B --repeats 3

Contenders, all on the same net (same weights) and the same batch:
  x_transformers          x-transformers' AutoregressiveWrapper, eager
  x_transformers_compiled torch.compile(x-transformers' wrapper, fullgraph=True)
  arwrap                  arwrap_cpp.AutoregressiveWrapper, eager (the C++ ARWrapper calls the net)
  arwrap_compiled         torch.compile(arwrap_cpp.AutoregressiveWrapper, fullgraph=True): the net
                          traced between torch.ops.arwrap.shift_tokens and autoregressive_loss
One process per configuration compiles every contender (compile time reported apart: the
first call, forward and backward), then times them round-robin (two warm-up steps each,
then --repeats rounds); the median per contender is reported, with its ratio to eager
x-transformers. Writes bench/results/compile.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import WATCH, load_note, round_robin, write_results  # noqa: E402  (WATCH starts now)
from configs import CONFIGS as ALL_CONFIGS, HEADS  # noqa: E402

CONFIGS = {name: ALL_CONFIGS[name] for name in ("B", "C")}  # name: (num_tokens, dim, depth, batch, seq_len + 1)
CONTENDERS = ("x_transformers", "x_transformers_compiled", "arwrap", "arwrap_compiled")


def isa() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    found = sorted(set(re.findall(r"\b(avx512_bf16|avx512f|avx2)\b", flags)))
    return ", ".join(found) or platform.machine()


def run(config: str, repeats: int, threads: int) -> dict:
    import torch
    from x_transformers import Decoder, TransformerWrapper
    from x_transformers.autoregressive_wrapper import AutoregressiveWrapper as XT

    import arwrap_cpp

    torch.set_num_threads(threads)
    V, dim, depth, b, n1 = CONFIGS[config]
    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=V, max_seq_len=n1, attn_layers=Decoder(dim=dim, depth=depth, heads=HEADS))
    x = torch.randint(0, V, (b, n1))
    params = list(net.parameters())
    wrappers = {"x_transformers": XT(net), "arwrap": arwrap_cpp.AutoregressiveWrapper(net)}
    models = {
        "x_transformers": wrappers["x_transformers"],
        "x_transformers_compiled": torch.compile(wrappers["x_transformers"], fullgraph=True),
        "arwrap": wrappers["arwrap"],
        "arwrap_compiled": torch.compile(wrappers["arwrap"], fullgraph=True),
    }

    def step_of(model):
        def step():
            for p in params:
                p.grad = None
            loss = model(x)
            loss.backward()
            return loss.detach()
        return step

    return round_robin({name: step_of(m) for name, m in models.items()}, repeats, label=config)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="B,C")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=str(HERE / "results" / "compile"))
    args = ap.parse_args()
    results = {}
    for config in args.configs.split(","):
        results[config] = run(config, args.repeats, args.threads)
        write(args, results)  # after every configuration, so a long run leaves what it measured


def write(args, results):
    import torch

    host = f"{platform.node()} ({isa()}), {args.threads} threads, torch {torch.__version__}"
    lines = [
        f"Training step (forward + backward) with an x-transformers net, eager vs torch.compile(fullgraph=True); "
        f"{host}; median of {args.repeats} round-robin rounds. {load_note(WATCH)}",
        "",
        "| config | contender | step (s) | vs eager x-transformers | first step incl. compile (s) | loss |",
        "|---|---|---|---|---|---|",
    ]
    for config, res in results.items():
        V, dim, depth, b, n1 = CONFIGS[config]
        base = res["x_transformers"]["time_s"]
        for name in CONTENDERS:
            r = res[name]
            lines.append(f"| {config} (V={V}, dim {dim}, depth {depth}, ({b}, {n1})) | {name} | {r['time_s']:.3f} | "
                         f"{base / r['time_s']:.2f}x | {r['first_step_s']:.1f} | {r['loss']:.6f} |")
    write_results(args.out, lines, {"host": host, "repeats": args.repeats, "configs": CONFIGS, "results": results})

if __name__ == "__main__":
    main()

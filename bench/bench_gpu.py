"""CUDA kernels against the anchors on one GPU, side by side (scripts/gpu_check.sh runs it).

Cross-entropy at (16384, 128256) bf16 and linear cross-entropy at (16384, 4096, 128256)
bf16, forward+backward: median of CUDA-event timings, peak allocated memory over the
inputs (torch.cuda.max_memory_allocated), and for the cross-entropy the achieved memory
bandwidth (logits read once + gradient written once, over the step time).
Anchors that are not installed are reported as such, not silently dropped.

Then the native training step against x-transformers (Decoder(attn_flash=True)) under
bf16 autocast, same weights and batch (--sections native --device cpu --tiny is its
smoke test on a CPU).

Each row is printed and appended to <out>.md / <out>.jsonl as soon as its contender
finishes (a run cut off by its time limit keeps the rows it has), and the contenders
that compile or autotune (torch.compile, Cut Cross-Entropy) run last.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F


SLOW = {"torch.compile", "cut cross-entropy"}  # compile or autotune: measured after the others


def measure(step, repeats=10, setup=lambda: None):
    """step(setup()) timed with CUDA events; setup (untimed) makes the step's input."""
    for _ in range(3):
        step(setup())
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        inp = setup()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step(inp)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
        del inp
    inp = setup()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(inp)
    torch.cuda.synchronize()
    return statistics.median(times), torch.cuda.max_memory_allocated() - base


def ce_contenders(z, t):
    import arwrap_cpp

    out = {
        "arwrap (inplace)": lambda x: arwrap_cpp.cross_entropy(x, t, inplace_backward=True),
        "arwrap": lambda x: arwrap_cpp.cross_entropy(x, t),
        "eager F.cross_entropy": lambda x: F.cross_entropy(x, t),
    }
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss

        liger = LigerCrossEntropyLoss()
        out["liger"] = lambda x: liger(x, t)
    except Exception as e:  # noqa: BLE001
        out[f"liger (not available: {type(e).__name__})"] = None
    out["torch.compile"] = torch.compile(lambda x: F.cross_entropy(x, t))  # last: it compiles and may autotune
    return out


def lce_contenders(t):
    import arwrap_cpp

    out = {
        "arwrap": lambda h, W: arwrap_cpp.linear_cross_entropy(h, W, t),
        "eager": lambda h, W: F.cross_entropy((h @ W.T).float(), t),
        "torch chunked": lambda h, W: F.linear_cross_entropy(h, W, t, options=torch.nn.LinearCrossEntropyOptions()),
    }
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss()
        out["liger"] = lambda h, W: liger(W, h, t)
    except Exception as e:  # noqa: BLE001
        out[f"liger (not available: {type(e).__name__})"] = None
    try:  # last: its Triton kernels may autotune
        from cut_cross_entropy import linear_cross_entropy as cce

        out["cut cross-entropy"] = lambda h, W: cce(h, W, t, impl="cce")
    except Exception as e:  # noqa: BLE001
        out[f"cut cross-entropy (not available: {type(e).__name__})"] = None
    return out


NATIVE = dict(num_tokens=32000, dim=512, depth=6, batch=8, seq=1025)  # (b, seq) tokens: seq - 1 predicted
NATIVE_TINY = dict(num_tokens=64, dim=32, depth=1, batch=2, seq=17)  # a smoke test of this section (--tiny)


def native_step(device, cfg, repeats=10):
    """The training step (loss = wrapper(x); loss.backward()) under bf16 autocast:
    x-transformers' TransformerWrapper (Decoder(attn_flash=True)) + AutoregressiveWrapper
    against arwrap_cpp.TransformerWrapper + arwrap_cpp.AutoregressiveWrapper with the same
    weights and batch. Round-robin, median seconds; peak memory over the model on CUDA.
    Returns {name: dict(secs, mem, loss)}."""
    import time

    import arwrap_cpp
    from x_transformers import AutoregressiveWrapper as XAR
    from x_transformers import Decoder, TransformerWrapper

    V, n1 = cfg["num_tokens"], cfg["seq"]
    torch.manual_seed(0)
    xt = TransformerWrapper(num_tokens=V, max_seq_len=n1,
                            attn_layers=Decoder(dim=cfg["dim"], depth=cfg["depth"], heads=8, attn_flash=True))
    nat = arwrap_cpp.TransformerWrapper(num_tokens=V, max_seq_len=n1,
                                        attn_layers=arwrap_cpp.Decoder(dim=cfg["dim"], depth=cfg["depth"], heads=8))
    nat.load_state_dict(xt.state_dict())
    xt.to(device)
    nat.to(device)
    runs = {"x-transformers (attn_flash)": (XAR(xt), xt), "arwrap native": (arwrap_cpp.AutoregressiveWrapper(nat), nat)}
    x = torch.randint(0, V, (cfg["batch"], n1), device=device, generator=torch.Generator(device).manual_seed(2))
    cuda = torch.device(device).type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step(wrapper, net):
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            loss = wrapper(x)
        loss.backward()
        for p in net.parameters():
            p.grad = None
        return loss.detach()

    out = {name: dict(times=[]) for name in runs}
    for name, (w, net) in runs.items():
        for _ in range(2):
            out[name]["loss"] = step(w, net).item()
    for _ in range(repeats):
        for name, (w, net) in runs.items():
            sync()
            t0 = time.perf_counter()
            step(w, net)
            sync()
            out[name]["times"].append(time.perf_counter() - t0)
    for name, (w, net) in runs.items():
        out[name]["secs"] = statistics.median(out[name].pop("times"))
        out[name]["mem"] = None
        if cuda:
            sync()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step(w, net)
            sync()
            out[name]["mem"] = torch.cuda.max_memory_allocated() - base
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--out", default="build/gpu_check/gpu")
    ap.add_argument("--sections", default="ce,lce,native", help="comma-separated: ce, lce, native")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only for --sections native --tiny (a smoke test)")
    ap.add_argument("--tiny", action="store_true", help="the native section at a tiny size (smoke test)")
    args = ap.parse_args()
    dev = args.device
    sections = set(args.sections.split(","))
    if dev != "cuda" and sections != {"native"}:
        raise SystemExit("bench_gpu.py: the cross-entropy sections need --device cuda")
    desc = torch.cuda.get_device_properties(0).name if dev == "cuda" else dev
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md, jsonl = out.with_suffix(".md"), out.with_suffix(".jsonl")
    jsonl.write_text("")

    class Lines(list):
        """The table, written to <out>.md and printed as each row comes."""

        def append(self, line):
            super().append(line)
            print(line, flush=True)
            md.write_text("\n".join(self) + "\n")

    class Results(list):
        def append(self, row):
            super().append(row)
            with jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")

    lines = Lines()
    for line in (f"{desc}, torch {torch.__version__}", "",
                 "| op | shape | contender | fwd+bwd ms | peak extra MB | GB/s | loss |", "|---|---|---|---:|---:|---:|---:|"):
        lines.append(line)
    results = Results()
    N, V, D = args.rows, args.vocab, args.dim
    if sections & {"ce", "lce"}:
        z0 = torch.randn(N, V, device=dev, dtype=torch.bfloat16)
        t = torch.randint(0, V, (N,), device=dev)
        t[torch.rand(N, device=dev) < 0.05] = -100
        h = (torch.randn(N, D, device=dev) / D**0.25).to(torch.bfloat16).requires_grad_(True)
        W = (torch.randn(V, D, device=dev) / D**0.25).to(torch.bfloat16).requires_grad_(True)
    ce = ce_contenders(z0, t) if "ce" in sections else {}
    lce = lce_contenders(t) if "lce" in sections else {}

    def run_ce(name, fn):
        if fn is None:
            lines.append(f"| cross_entropy | {N}x{V} bf16 | {name} | | | | |")
            return

        def setup():  # a fresh logits buffer (the in-place variant consumes it)
            return z0.clone().requires_grad_(True)

        def step(x):
            loss = fn(x)
            (g,) = torch.autograd.grad(loss, x)
            return loss

        try:
            secs, mem = measure(step, setup=setup)
            loss = fn(z0.clone()).item()
        except Exception as e:  # noqa: BLE001
            lines.append(f"| cross_entropy | {N}x{V} bf16 | {name} | error: {str(e)[:60]} | | | |")
            return
        gbs = 2 * N * V * 2 / secs / 1e9
        results.append(dict(op="ce", name=name, secs=secs, mem=mem, gbs=gbs, loss=loss))
        lines.append(f"| cross_entropy | {N}x{V} bf16 | {name} | {secs * 1e3:.2f} | {mem / 2**20:.0f} | {gbs:.0f} | {loss:.5f} |")

    def run_lce(name, fn):
        if fn is None:
            lines.append(f"| linear_cross_entropy | {N}x{D}x{V} bf16 | {name} | | | | |")
            return

        def step(_):
            loss = fn(h, W)
            torch.autograd.grad(loss, (h, W))
            return loss

        try:
            secs, mem = measure(step, repeats=5)
            loss = fn(h, W).item()
        except Exception as e:  # noqa: BLE001
            lines.append(f"| linear_cross_entropy | {N}x{D}x{V} bf16 | {name} | error: {str(e)[:60]} | | | |")
            return
        results.append(dict(op="lce", name=name, secs=secs, mem=mem, loss=loss))
        lines.append(f"| linear_cross_entropy | {N}x{D}x{V} bf16 | {name} | {secs * 1e3:.1f} | {mem / 2**20:.0f} | | {loss:.5f} |")

    # the cheap contenders first, those that compile or autotune last (SLOW)
    for name, fn in ce.items():
        if name not in SLOW:
            run_ce(name, fn)
    for name, fn in lce.items():
        if name not in SLOW:
            run_lce(name, fn)
    if "native" in sections:
        cfg = NATIVE_TINY if args.tiny else NATIVE
        shape = f"{cfg['batch']}x{cfg['seq']} V={cfg['num_tokens']} d={cfg['dim']} L={cfg['depth']} bf16 autocast"
        try:
            rows = native_step(dev, cfg)
        except Exception as e:  # noqa: BLE001
            lines.append(f"| native step | {shape} | | error: {str(e)[:60]} | | | |")
            rows = {}
        for name, r in rows.items():
            results.append(dict(op="step", name=name, secs=r["secs"], mem=r["mem"], loss=r["loss"]))
            mem = "" if r["mem"] is None else f"{r['mem'] / 2**20:.0f}"
            lines.append(f"| native step | {shape} | {name} | {r['secs'] * 1e3:.1f} | {mem} | | {r['loss']:.5f} |")
    for name, fn in ce.items():
        if name in SLOW:
            run_ce(name, fn)
    for name, fn in lce.items():
        if name in SLOW:
            run_lce(name, fn)
    out.with_suffix(".json").write_text(json.dumps(list(results), indent=1))
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _measure import render_chart
    try:  # the rows are already written: a chart that fails must not lose them
        render_chart(out.with_suffix(".json"))
    except Exception as e:  # noqa: BLE001
        print(f"chart of {out.with_suffix('.json')} not drawn: {e!r}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""The training step against x-transformers at its fastest, in float32 and bfloat16,
with the floor of each configuration and precision:

* contenders (loss = wrapper(x); loss.backward(), same weights and batch):
    xt_default          x-transformers, default attention                     float32
    xt_flash            x-transformers, attn_flash=True                       float32
    xt_flash_compiled   the same under torch.compile                          float32
    xt_flash_bf16       attn_flash=True under torch.autocast("cpu", bf16)    bfloat16
    xt_flash_compiled_bf16  the same, compiled                               bfloat16
    arwrap_xt_net       our wrapper around x-transformers' flash net          float32
    native_fp32         arwrap_cpp.TransformerWrapper + our wrapper           float32
    native_bf16         the same under torch.autocast("cpu", bf16)           bfloat16
    native_ckpt_fp32    the native net with Decoder(checkpoint_layers=True)   float32
    native_ckpt_bf16    the same under torch.autocast("cpu", bf16)           bfloat16
    native_composed_fp32  the native net without its lean blocks (ARWRAP_LEAN_LAYERS=0: the
                        plain ATen composition, which keeps the norms' outputs)  float32
    native_composed_bf16  the same under torch.autocast("cpu", bf16)         bfloat16
* floor (per configuration and precision): the step's matrix products (projections,
  attention products with the causal half skipped, feed-forward, head; forward and the
  two backward products of each), run alone as torch.mm / torch.bmm at their shapes and
  dtype, timed round-robin with the contenders in their process: FLOPs / that rate.
* the trainer: arwrap-train's tokens/s against the same model and loop in Python
  (x-transformers attn_flash=True, Adam, clip_grad_norm 0.5; autocast for bf16), with
  --trainer PATH (a built examples/train).

    python bench/bench_step.py                                  # A, B, C, T (the trainer's model)
    python bench/bench_step.py --configs tiny --repeats 1       # a smoke test of this script
    python bench/bench_step.py --configs B --profile native_bf16   # where the time goes
    python bench/bench_step.py --configs '' --trainer build/train/arwrap-train --trainer-steps 20
    python bench/bench_step.py --configs '' --trainer build/train/arwrap-train --trainer-vocabs 256,4096,32000 \
        --trainer-precisions fp32 --merge       # the trainer at BPE vocabularies (token shards), kept beside the rest

Time: one process per configuration runs every contender round-robin (--repeats rounds
after two warm-up steps each), medians; the floors are two more "contenders" there.
Memory: each (configuration, contender) in its own process (bench/_measure.py).
Writes bench/results/step.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from configs import CONFIGS as MODEL_CONFIGS, DIM_HEAD, HEADS, TINY, TRAINER, TRAINER_HEADS, TRAINER_VOCABS

HERE = Path(__file__).resolve().parent
CONTENDERS = ("xt_default", "xt_flash", "xt_flash_compiled", "xt_flash_bf16", "xt_flash_compiled_bf16",
              "arwrap_xt_net", "native_fp32", "native_bf16", "native_ckpt_fp32", "native_ckpt_bf16",
              "native_composed_fp32", "native_composed_bf16")
# name: (num_tokens, dim, depth, batch, seq_len + 1, heads, rotary); dim_head 64
CONFIGS = {
    **{name: (*c, HEADS, False) for name, c in MODEL_CONFIGS.items()},
    "T": (*TRAINER, TRAINER_HEADS, True),  # arwrap-train's default model and batch
    # the same at a BPE vocabulary (token shards, --num-tokens)
    **{f"T{v}": (v, *TRAINER[1:], TRAINER_HEADS, True) for v in TRAINER_VOCABS},
    "tiny": (*TINY, 2, False),  # a smoke test of this script
}


def is_bf16(contender):
    return contender.endswith("_bf16")


def build(name, V, dim, depth, max_seq_len, heads, rotary):
    """The contender's (wrapper, net); every contender gets the weights of seed 0."""
    import torch
    from x_transformers import AutoregressiveWrapper as XAR
    from x_transformers import Decoder, TransformerWrapper

    import arwrap_cpp

    dkw = dict(dim=dim, depth=depth, heads=heads, attn_dim_head=DIM_HEAD, rotary_pos_emb=rotary)
    wkw = dict(num_tokens=V, max_seq_len=max_seq_len, use_abs_pos_emb=not rotary)
    torch.manual_seed(0)
    flash = name != "xt_default"
    xt = TransformerWrapper(**wkw, attn_layers=Decoder(**dkw, attn_flash=flash))
    if name.startswith("xt_"):
        w = XAR(xt)
        if "compiled" in name:
            w = torch.compile(w)
        return w, xt
    if name == "arwrap_xt_net":
        return arwrap_cpp.AutoregressiveWrapper(xt, fused_head=True), xt
    net = arwrap_cpp.TransformerWrapper(**wkw, attn_layers=arwrap_cpp.Decoder(**dkw,
                                                                          checkpoint_layers="_ckpt_" in name))
    net.load_state_dict(xt.state_dict())
    del xt
    return arwrap_cpp.AutoregressiveWrapper(net), net


def step_of(name, wrapper, net, x):
    import os

    import torch
    from _measure import training_step

    step = training_step(wrapper, net, x, torch.bfloat16 if is_bf16(name) else None)
    if "_composed_" not in name:
        return step

    def composed():  # the layers read the switch at each call (csrc/modules/layers.h, records)
        os.environ["ARWRAP_LEAN_LAYERS"] = "0"
        try:
            return step()
        finally:
            del os.environ["ARWRAP_LEAN_LAYERS"]
    return composed


# ------------------------------------------------------------------ floor

def step_products(V, dim, depth, b, n, heads):
    """The step's matrix products: (kind, shape, count, flops) with kind mm (M, K, N) or
    bmm (batch, M, K, N); each forward product Y = X W^T brings two backward ones."""
    T, inner, ff = b * n, heads * DIM_HEAD, 4 * dim
    out = []

    def linear(M, K, N, count):  # forward (M,K)x(K,N), backward dX (M,N)x(N,K), dW (N,M)x(M,K)
        out.extend([("mm", (M, K, N), count), ("mm", (M, N, K), count), ("mm", (N, M, K), count)])

    linear(T, dim, 3 * inner, depth)  # q, k, v
    linear(T, inner, dim, depth)  # attention out
    linear(T, dim, ff, depth)  # feed-forward in
    linear(T, ff, dim, depth)  # feed-forward out
    linear(T, dim, V, 1)  # head
    # attention: S = Q K^T and O = P V forward; dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q
    # backward; the causal mask lets a fused kernel skip half of every product (count 0.5)
    BH = b * heads
    for shape in [(n, DIM_HEAD, n), (n, n, DIM_HEAD)] * 3:
        out.append(("bmm", (BH, *shape), 0.5 * depth))
    return [(k, s, c, 2.0 * c * (s[0] * s[1] * s[2] if k == "mm" else s[0] * s[1] * s[2] * s[3]))
            for k, s, c in out]


def bf16_floor_dtype():
    """The dtype of the bf16 floor's products: bf16, except where the native net takes the float32
    route for them (arwrap_cpp.lowp_gemm_upcasts: a CPU without AVX-512, whose ATen bf16 GEMM has
    no oneDNN kernel and runs at 0.6-12 GFLOP/s against 105-128 for float32 sgemm,
    csrc/ops/low_precision_mm.h): the fastest way to a bf16 product there is the float32 one."""
    import torch

    import arwrap_cpp

    return torch.float32 if arwrap_cpp.lowp_gemm_upcasts(torch.bfloat16) else torch.bfloat16


def floor_step(products, dtype):
    """A step of the products alone: torch.mm / torch.bmm at each of the step's shapes in
    `dtype`, each run 2 x count times (counts are multiples of 0.5), so the floor is half
    its time. Timed round-robin with the contenders, so the machine's load hits it alike.
    Returns (step, FLOPs of the products)."""
    import torch

    calls = []
    for kind, shape, count, _ in products:
        if kind == "mm":
            M, K, N = shape
            a, bb = torch.randn(M, K, dtype=dtype), torch.randn(K, N, dtype=dtype)
            calls.append((torch.mm, a, bb, round(2 * count)))
        else:
            B, M, K, N = shape
            a, bb = torch.randn(B, M, K, dtype=dtype), torch.randn(B, K, N, dtype=dtype)
            calls.append((torch.bmm, a, bb, round(2 * count)))

    def step():
        for fn, a, bb, reps in calls:
            for _ in range(reps):
                fn(a, bb)
        return torch.zeros(())
    return step, sum(f for *_, f in products)


# ------------------------------------------------------------------ child processes

def child(args):
    import torch

    sys.path.insert(0, str(HERE))
    from _measure import peak_extra_bytes, round_robin

    torch.set_num_threads(args.threads)
    V, dim, depth, b, n1, heads, rotary = CONFIGS[args.config]
    x = torch.randint(0, V, (b, n1), generator=torch.Generator().manual_seed(2))
    if args.measure == "memory":
        step = step_of(args.contender, *build(args.contender, V, dim, depth, n1, heads, rotary), x)
        l0 = step()
        step()
        print(json.dumps({"peak_extra_bytes": peak_extra_bytes(step), "loss": l0.item()}))
        return
    if args.measure == "profile":
        from torch.profiler import ProfilerActivity, profile

        step = step_of(args.contender, *build(args.contender, V, dim, depth, n1, heads, rotary), x)
        step(), step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=48),
              file=sys.stderr)
        print(json.dumps({}))
        return
    names = CONTENDERS if args.contender == "all" else args.contender.split(",")
    steps = {name: step_of(name, *build(name, V, dim, depth, n1, heads, rotary), x) for name in names}
    prods = step_products(V, dim, depth, b, n1 - 1, heads)
    flops = {}
    for prec, dt in (("fp32", torch.float32), ("bf16", bf16_floor_dtype())):
        steps[f"floor_{prec}"], flops[prec] = floor_step(prods, dt)
    out = round_robin(steps, args.repeats)
    for prec, f in flops.items():
        r = out[f"floor_{prec}"]
        r["time_s"] /= 2  # each product ran twice its count
        r.update(gflop=f / 1e9, gflops=f / r["time_s"] / 1e9)
    print(json.dumps(out))


# ------------------------------------------------------------------ the trainer against Python

TRAINER_MODEL = dict(seq_len=256, dim=256, depth=4, heads=4, dim_head=64, batch=16)


def python_loop(steps, precision, compiled, threads, data, vocab=256):
    """x-transformers' flash net with arwrap-train's loop: random windows of ``data`` (the ids,
    bytes or int64), Adam lr 2e-3 (warmup 50), clip_grad_norm 0.5; tokens/s over the steps
    after the first."""
    import torch
    from x_transformers import AutoregressiveWrapper as XAR
    from x_transformers import Decoder, TransformerWrapper

    torch.set_num_threads(threads)
    m = TRAINER_MODEL
    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=vocab, max_seq_len=m["seq_len"], use_abs_pos_emb=False,
                             attn_layers=Decoder(dim=m["dim"], depth=m["depth"], heads=m["heads"],
                                                 attn_dim_head=m["dim_head"], rotary_pos_emb=True, attn_flash=True))
    model = XAR(net)
    fwd = torch.compile(model) if compiled else model
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    buf = data if isinstance(data, torch.Tensor) else torch.tensor(list(data), dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    t_start = None
    for s in range(steps + 1):
        if s == 1:
            t_start = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = 2e-3 * min(1.0, (s + 1) / 50)
        starts = torch.randint(0, len(buf) - m["seq_len"] - 1, (m["batch"],), generator=g)
        x = torch.stack([buf[i:i + m["seq_len"] + 1] for i in starts.tolist()])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = fwd(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
        opt.step()
        opt.zero_grad()
        loss.item()
    return m["batch"] * m["seq_len"] * steps / (time.perf_counter() - t_start)


def trainer_data():
    """The trainer's default corpus: the Python standard library's .py files, first 4 MB."""
    import sysconfig

    out, total = [], 0
    for p in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        b = p.read_bytes()
        out.append(b)
        total += len(b)
        if total > 4_000_000:
            break
    return b"".join(out)


def token_data(vocab, tokens=4_000_000):
    """A BPE-sized vocabulary's stand-in corpus: ``tokens`` uniform ids below ``vocab`` (seed 0).
    Throughput does not depend on which ids a window holds, only on the vocabulary's size, so
    no tokenizer is trained for the bench (docs/training.md times a real BPE run)."""
    import torch

    return torch.randint(0, vocab, (tokens,), generator=torch.Generator().manual_seed(0))


def write_token_dir(ids, tmp, vocab):
    """``ids`` as the llm.c shards arwrap-train reads: a train shard and a small validation one."""
    from arwrap_cpp.data import write_shard

    d = Path(tmp) / f"tokens-{vocab}"
    if not d.exists():
        n_val = len(ids) // 10
        write_shard(d / "bench_train_000000.bin", ids[n_val:].numpy())
        write_shard(d / "bench_val_000000.bin", ids[:n_val].numpy())
    return d


def run_trainer(trainer, precision, steps, threads, tmp, vocab=256, data_dir=None):
    """arwrap-train's tokens/s after its first step, as the Python loop's: from its metrics file
    (--log-every 1), the training tokens of steps 2..N over the wall time from step 1's line to
    step N's (its own 'done' line counts the first step too)."""
    metrics = Path(tmp) / f"bench-{precision}.metrics.jsonl"
    metrics.unlink(missing_ok=True)
    m = TRAINER_MODEL
    p = subprocess.run([str(trainer), "--precision", precision, "--steps", str(steps), "--threads", str(threads),
                        "--seq-len", str(m["seq_len"]), "--dim", str(m["dim"]), "--depth", str(m["depth"]),
                        "--heads", str(m["heads"]), "--dim-head", str(m["dim_head"]), "--batch", str(m["batch"]),
                        "--val-every", "0", "--sample-every", "0", "--save-every", "0", "--max-bytes", "4000000",
                        "--log-every", "1", "--metrics", str(metrics),
                        "--checkpoint", str(Path(tmp) / f"bench-{precision}.pt"),
                        *(["--data", str(data_dir), "--num-tokens", str(vocab)] if data_dir else [])],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["failed"])[-1]}
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    steps_seen = [x for x in lines if "loss" in x and "wall_s" in x]
    first, last = steps_seen[0], steps_seen[-1]
    tokens = (last["step"] - first["step"]) * m["batch"] * m["seq_len"]
    head = [line for line in p.stdout.splitlines() if line.startswith("precision:")]
    return {"tokens_per_s": tokens / (last["wall_s"] - first["wall_s"]), "header": head[0] if head else ""}


def trainer_child(args):
    """Python loops in this process, round-robin with the C++ trainer's runs."""
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for vocab in (int(v) for v in args.trainer_vocabs.split(",")):
            # the byte model reads the text corpus (the trainer's default), a larger vocabulary token shards
            data = trainer_data() if vocab == 256 else token_data(vocab)
            data_dir = None if vocab == 256 else write_token_dir(data, tmp, vocab)
            for prec in args.trainer_precisions.split(","):
                runs = {"arwrap-train": lambda: run_trainer(args.trainer, prec, args.trainer_steps, args.threads,
                                                            tmp, vocab, data_dir),
                        "python xt_flash": lambda: {"tokens_per_s": python_loop(
                            args.trainer_steps, prec, False, args.threads, data, vocab)},
                        "python xt_flash compiled": lambda: {"tokens_per_s": python_loop(
                            args.trainer_steps, prec, True, args.threads, data, vocab)}}
                for run, fn in runs.items():
                    name = trainer_run_name(run, prec, vocab)
                    print(f"  trainer: {name} ...", file=sys.stderr, flush=True)
                    out[name] = {**fn(), "vocab": vocab, "precision": prec}
    print(json.dumps(out))


def trainer_run_name(run, precision, vocab):
    """A trainer row's key: 'arwrap-train fp32' for the byte model, '... fp32 V=4096' for a larger vocabulary."""
    return f"{run} {precision}" + ("" if vocab == 256 else f" V={vocab}")


# ------------------------------------------------------------------ tables

def load_line(configs, results, trainer):
    """How much of the machine other jobs used while each part ran (bench/_measure.py's CpuWatch)."""
    import os

    from _measure import QUIET_SHARE

    def fmt(r):
        if r.get("others_cpu_share") is not None:
            return f"{r['others_cpu_share']:.0%}"
        return "not recorded"

    parts = [f"{c} {fmt(next((r for r in reversed(results) if r['config'] == c), {}))}" for c in configs]
    if trainer:
        parts.append(f"trainer {fmt(next((r for r in trainer.values() if isinstance(r, dict)), {}))}")
    return (f"Share of the {os.cpu_count()} cores other jobs used while each part ran (/proc/stat less the "
            f"benchmark's own processes): {', '.join(parts)} (under {QUIET_SHARE:.0%}: a quiet machine; above: "
            "absolute times noisy, ratios within one configuration, one process round-robin, fair).")


def tables(configs, results, threads, repeats, trainer, commands=()):
    import torch

    isa = ""
    try:
        caps = torch._C._cpu._get_cpu_capability()
        isa = ", ".join(k for k in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16") if caps.get(k))
    except Exception:  # noqa: BLE001  (older torch)
        pass
    lines = [f"{threads} threads, median of --repeats round-robin steps (per command below), torch {torch.__version__}, "
             f"CPU ISA: {isa}. {load_line(configs, results, trainer)}", "",
             *[f"    {c}" for c in commands], *([""] if commands else []),
             "Training step (loss = wrapper(x); loss.backward()), dim_head 64. step / floor: the step's time over "
             f"its precision's floor (the bf16 floor's products in {str(bf16_floor_dtype()).split('.')[-1]}: "
             "float32 where the CPU has no fast bf16 GEMM, bf16_floor_dtype); vs best xt: the fastest x-transformers contender of the same precision over "
             "this one (>1: we are faster); memory vs leanest xt: peak extra memory over the leanest "
             "x-transformers contender's of the same precision.", "",
             "| config | contender | precision | step ms | step / floor | vs best xt | peak extra MB | "
             "memory vs leanest xt | loss |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for cfg in configs:
        V, dim, depth, b, n1, heads, rotary = CONFIGS[cfg]
        label = f"{cfg}: V={V}, dim {dim}, depth {depth}, heads {heads}, ({b}, {n1}){', rotary' if rotary else ''}"
        rs = {r["contender"]: r for r in results if r["config"] == cfg}
        ok = {c: r for c, r in rs.items() if "error" not in r and "time_s" in r}
        for prec in ("fp32", "bf16"):
            fl = ok.get(f"floor_{prec}")
            xts = [r for c, r in ok.items() if c.startswith("xt_") and (is_bf16(c) == (prec == "bf16"))]
            best = min((r["time_s"] for r in xts), default=float("nan"))
            lean = min((r["peak_extra_bytes"] for r in xts if math.isfinite(r.get("peak_extra_bytes", float("nan")))),
                       default=float("nan"))
            if fl:
                lines.append(f"| {label} | floor ({fl['gflop']:.3g} GFLOP at {fl['gflops']:.0f} GFLOP/s) | {prec} | "
                             f"{fl['time_s'] * 1e3:.0f} | 1.00 | | | | |")
            for c, r in rs.items():
                if c.startswith("floor") or is_bf16(c) != (prec == "bf16"):
                    continue
                if c not in ok:
                    lines.append(f"| {label} | {c} | {prec} | error: {r.get('error', '?')[:70]} | | | | | |")
                    continue
                ratio = r["time_s"] / fl["time_s"] if fl else float("nan")
                mem = r.get("peak_extra_bytes", float("nan"))
                mem_ratio = f"{mem / lean:.2f}" if lean > 0 and math.isfinite(mem) else "n/a"
                lines.append(f"| {label} | {c} | {prec} | {r['time_s'] * 1e3:.0f} | {ratio:.2f} | "
                             f"{best / r['time_s']:.2f}x | {mem / 2**20:.0f} | {mem_ratio} | {r['loss']:.4f} |")
    if trainer and "error" in trainer:
        lines += ["", f"arwrap-train against the same loop in Python: error: {trainer['error'][:200]}"]
    elif trainer:
        lines += ["", f"arwrap-train against the same model and loop in Python ({TRAINER_MODEL}, Adam, "
                      "clip_grad_norm 0.5; x-transformers attn_flash=True; autocast for bf16), tokens/s after the "
                      "first step:", "",
                  "| run | tokens/s | arwrap-train / this |", "|---|---:|---:|"]
        for name, r in trainer.items():
            if "error" in r:
                lines.append(f"| {name} | error: {r['error'][:80]} | |")
                continue
            prec, vocab = r.get("precision", name.split()[-1]), r.get("vocab", 256)
            ours = trainer.get(trainer_run_name("arwrap-train", prec, vocab), {}).get("tokens_per_s", float("nan"))
            lines.append(f"| {name} | {r['tokens_per_s']:.0f} | {ours / r['tokens_per_s']:.2f}x |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="A,B,C,T")
    ap.add_argument("--contenders", default="all", help="comma-separated subset of " + ",".join(CONTENDERS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-memory", action="store_true",
                    help="time only (no per-contender memory processes; with --merge the memory measured before stays)")
    ap.add_argument("--profile", metavar="CONTENDER", help="print torch.profiler's table of one step and exit")
    ap.add_argument("--trainer", help="a built arwrap-train: compare its tokens/s with the loop in Python")
    ap.add_argument("--trainer-steps", type=int, default=30)
    ap.add_argument("--trainer-precisions", default="fp32,bf16", help="the trainer rows' precisions")
    ap.add_argument("--trainer-vocabs", default="256",
                    help="comma-separated vocabularies of the trainer rows: 256 is the byte model on the text "
                         "corpus, a larger one the same model on token shards (e.g. 256,4096,32000)")
    ap.add_argument("--out", default=str(HERE / "results" / "step"))
    ap.add_argument("--merge", action="store_true",
                    help="keep the results already in OUT.json for the (configuration, contender) pairs not "
                         "measured in this run (the floors are remeasured with every configuration)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--measure", default="time", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--contender", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return trainer_child(args) if args.measure == "trainer" else child(args)
    sys.path.insert(0, str(HERE))
    from _measure import CpuWatch, run_isolated, write_results

    configs = [c for c in args.configs.split(",") if c]
    common = ["--threads", args.threads, "--repeats", args.repeats]
    if args.profile:
        for cfg in configs:
            subprocess.run([sys.executable, __file__, "--child", "--measure", "profile", "--config", cfg,
                            "--contender", args.profile, *map(str, common)])
        return
    contenders = CONTENDERS if args.contenders == "all" else tuple(args.contenders.split(","))
    import torch

    out_json = Path(args.out).with_suffix(".json")
    old = json.loads(out_json.read_text()) if args.merge and out_json.exists() else {}
    measured = set(contenders) | {"floor_fp32", "floor_bf16"}
    results = [r for r in old.get("results", []) if r["config"] not in configs or r["contender"] not in measured]
    trainer = old.get("trainer")
    commands = list(old.get("commands", []))
    if configs or args.trainer:
        commands.append("python bench/bench_step.py " + " ".join(sys.argv[1:]))

    def save():
        done = list(dict.fromkeys([r["config"] for r in results]))
        order = [c for c in CONFIGS if c in done]
        lines = tables(order, results, args.threads, args.repeats, trainer, commands)
        write_results(args.out, lines, {"threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
                                        "commands": commands,
                                        "configs": {c: CONFIGS[c] for c in order}, "results": results,
                                        "trainer": trainer})

    for cfg in configs:
        watch = CpuWatch()
        print(f"  {cfg} time (round-robin) and floors ...", file=sys.stderr, flush=True)
        timed = run_isolated(__file__, ["--config", cfg, "--contender", ",".join(contenders), *common],
                             measures=("time",))
        for c in list(contenders) + ["floor_fp32", "floor_bf16"]:
            r = {"config": cfg, "contender": c}
            r.update({"error": timed["error"]} if "error" in timed else timed[c])
            if not c.startswith("floor") and "error" not in r and not args.no_memory:
                print(f"  {cfg} {c} memory ...", file=sys.stderr, flush=True)
                mem = run_isolated(__file__, ["--config", cfg, "--contender", c, *common], measures=("memory",))
                r["peak_extra_bytes"] = mem.get("peak_extra_bytes", float("nan"))
            elif args.no_memory and "error" not in r:  # --merge --no-memory: the memory measured before stays
                before = [o for o in old.get("results", []) if o["config"] == cfg and o["contender"] == c]
                if before and "peak_extra_bytes" in before[0]:
                    r["peak_extra_bytes"] = before[0]["peak_extra_bytes"]
            results.append(r)
        share = watch.others_share()
        for r in results:
            if r["config"] == cfg and r["contender"] in measured:
                r["others_cpu_share"] = share
        save()  # after every configuration: a long run that stops keeps what it measured
    if args.trainer:
        watch = CpuWatch()
        new = run_isolated(__file__, ["--trainer", args.trainer, "--trainer-steps", args.trainer_steps,
                                      "--trainer-vocabs", args.trainer_vocabs,
                                      "--trainer-precisions", args.trainer_precisions, "--threads", args.threads],
                           measures=("trainer",))
        share = watch.others_share()
        for r in new.values():
            if isinstance(r, dict):
                r["others_cpu_share"] = share
        # with --merge the rows of other vocabularies stay (an error replaces nothing it did not measure)
        trainer = {**(trainer or {}), **new} if args.merge and "error" not in new else new
    save()


if __name__ == "__main__":
    main()

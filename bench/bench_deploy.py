"""The deployment routes of docs/deploy.md, side by side on the trainer's default model
(arwrap-train's flags: byte vocabulary, dim 256, depth 4, heads 4, dim_head 64, rotary,
max_seq_len 256; random weights of seed 0, or --checkpoint PATH):

* export + compile: torch.export of the decoding step, then AOTInductor (python -m arwrap_cpp.export's
  two stages), timed once (a compile is not repeated: its C++ build dominates).
* greedy decoding with the key/value cache, batch 1, a 16-token prompt, --new tokens, tokens/s of
    package_cpp      the AOTInductor package in C++ (examples/deploy's arwrap-deploy, its own timer: the
                     median of 3 decodes in its process, so the first, cold one does not count)
    package_python   the same package through aoti_load_package, arwrap_cpp.export.greedy_decode's loop
    eager_python     the eager native net, the same loop over net.decode (one operator call a token)
    native_generate  the C++ net's own generate (net.generate: arwrap::generate, one call)
  every one checked to give net.generate's tokens.

    python bench/bench_deploy.py                  # writes bench/results/deploy.{json,md}
    python bench/bench_deploy.py --new 64 --repeats 2 --out /tmp/deploy

Time: --repeats rounds after one warm-up each, the contenders in turn within a round (the C++
program once per round, in its own process, timing its decoding only); medians.
"""
from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _measure import WATCH, bench_parser, load_note, write_results

# OpenMP threads that sleep instead of spinning (as scripts/train.sh and deploy.sh run): on a shared
# machine a spinning thread loses its core for whole time slices; the same for every contender,
# the C++ program inheriting it (set before torch is imported)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# arwrap-train's default model (examples/train/flags.h: seq_len 256, dim 256, depth 4, heads 4, dim_head 64)
TRAINER_DEFAULT = dict(num_tokens=256, max_seq_len=256, use_abs_pos_emb=False,
                       decoder=dict(dim=256, depth=4, heads=4, attn_dim_head=64, rotary_pos_emb=True))
PROMPT = 16


def isa_note() -> str:
    flags = re.findall(r"\b(avx512_bf16|avx512f|avx2|amx_bf16)\b", Path("/proc/cpuinfo").read_text())
    return " ".join(sorted(set(flags))) or "no AVX2"


def build_deploy() -> Path:
    """examples/deploy built in build/deploy (scripts/lib.sh's cmake_project: the one build recipe)."""
    build = ROOT / "build" / "deploy"
    venv = Path(sys.prefix)  # cmake and ninja are the virtual environment's (scripts/bootstrap.sh)
    env = {**os.environ, "ARWRAP_VENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(["bash", "-c", f'source "{ROOT}/scripts/lib.sh" && cmake_project "{ROOT}/examples/deploy" "{build}" '
                    "arwrap-deploy"], check=True, env=env)
    return build / "arwrap-deploy"


def main() -> None:
    ap = bench_parser(__doc__, str(HERE / "results" / "deploy"), repeats=3)
    ap.add_argument("--new", type=int, default=200, help="tokens to decode (default 200: within the window)")
    ap.add_argument("--checkpoint", default=None, help="an arwrap-train checkpoint instead of random weights")
    args = ap.parse_args()

    import torch

    import arwrap_cpp
    from arwrap_cpp import export

    torch.set_num_threads(args.threads)
    if args.checkpoint:
        net = arwrap_cpp.load_model(args.checkpoint)
    else:
        torch.manual_seed(0)
        cfg = dict(TRAINER_DEFAULT)
        net = arwrap_cpp.TransformerWrapper(attn_layers=arwrap_cpp.Decoder(**cfg.pop("decoder")), **cfg).eval()
    params = sum(p.numel() for p in net.parameters())

    tmp = Path(tempfile.mkdtemp(prefix="bench_deploy"))
    t0 = time.perf_counter()
    ep = export.export_decode(net)
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    package = export.compile_package(net, tmp / "model.pt2", exported=ep)
    compile_s = time.perf_counter() - t0
    print(f"[deploy] export {export_s:.1f} s, AOTInductor compile + package {compile_s:.1f} s", file=sys.stderr)
    program = build_deploy()

    prompt = torch.randint(0, net.num_tokens, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    expected = net.generate(prompt, args.new, temperature=0.0)
    loaded = torch._inductor.aoti_load_package(package)

    def cpp():
        run = subprocess.run([str(program), package, "--tokens", " ".join(map(str, prompt[0].tolist())),
                              "--steps", str(args.new), "--threads", str(args.threads), "--repeat", "3"],
                             capture_output=True, text=True, check=True)
        tokens = [int(t) for t in run.stdout.split("tokens:")[1].split("\n")[0].split()]
        seconds = float(re.search(r"generated \d+ tokens in ([0-9.]+) s", run.stdout).group(1))
        return torch.tensor([tokens]), seconds

    def timed(fn):
        def step():
            t = time.perf_counter()
            out = fn()
            return out, time.perf_counter() - t
        return step

    with torch.no_grad():
        contenders = {
            "package_cpp": cpp,
            "package_python": timed(lambda: export.greedy_decode(loaded, net, prompt, args.new)),
            "eager_python": timed(lambda: export.greedy_decode(net.decode, net, prompt, args.new)),
            "native_generate": timed(lambda: net.generate(prompt, args.new, temperature=0.0)),
        }
        same, times = {}, {name: [] for name in contenders}
        for name, fn in contenders.items():  # warm-up, and the tokens
            out, _ = fn()
            same[name] = bool(torch.equal(out, expected))
        for r in range(args.repeats):
            for name, fn in contenders.items():
                times[name].append(fn()[1])
            print(f"[deploy] round {r + 1}/{args.repeats}: " +
                  ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()), file=sys.stderr)
    rate = {name: args.new / statistics.median(t) for name, t in times.items()}

    lines = [f"float32, {args.threads} threads (OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}), torch {torch.__version__}, CPU {isa_note()}; {load_note(WATCH)}", "",
             f"Model: {net.config} ({params / 1e6:.2f} M parameters)"
             + (f", from {args.checkpoint}" if args.checkpoint else ", random weights (seed 0)") + ".", "",
             "| stage | seconds |", "|---|---:|",
             f"| torch.export of the decoding step | {export_s:.1f} |",
             f"| AOTInductor compile + package | {compile_s:.1f} |", "",
             f"Greedy decoding with the key/value cache, batch 1, prompt {PROMPT}, {args.new} new tokens "
             f"(median of {args.repeats} rounds):", "",
             "| route | tokens/s | vs eager Python | same tokens as net.generate |", "|---|---:|---:|---|"]
    names = {"package_cpp": "AOTInductor package in C++ (arwrap-deploy)",
             "package_python": "AOTInductor package in Python (aoti_load_package)",
             "eager_python": "eager native net in Python (net.decode loop)",
             "native_generate": "the C++ net's own generate (net.generate)"}
    for name in contenders:
        lines.append(f"| {names[name]} | {rate[name]:.0f} | {rate[name] / rate['eager_python']:.2f}x | {same[name]} |")
    write_results(args.out, lines, {"config": net.config, "params": params, "threads": args.threads,
                                    "torch": torch.__version__, "isa": isa_note(), "others_share": WATCH.others_share(),
                                    "export_s": export_s, "compile_s": compile_s, "new_tokens": args.new,
                                    "results": {k: {"tokens_per_s": rate[k], "times_s": times[k], "same": same[k]}
                                                for k in contenders}})


if __name__ == "__main__":
    main()

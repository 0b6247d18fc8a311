"""arwrap-train data-parallel on this machine: tokens/s at 1 and 2 ranks (torchrun, Gloo, loopback),
the gradient all-reduce time per step and the communication share, measured round-robin.

    .venv/bin/python bench/bench_distributed.py [--trainer build/train/arwrap-train] [--rounds 3]

Contenders (every run trains --steps steps of the same model; tokens/s is arwrap-train's own
"done:" figure, which counts the windows of every rank):
  1 proc x 1 thread        batch B
  1 proc x 2 threads       batch B          (the one-process use of both cores)
  1 proc x 2 threads       batch 2B         (--as-ranks 2: the 2-rank global batch in one process)
  2 ranks x 1 thread       batch B each     (overlap on: the default)
  2 ranks x 1 thread       batch B each     (overlap off: all of the all-reduce is in finish())
and the all-reduce alone (tests/integration/cpp's dist_check bench: a barrier, then one all-reduce of
the model's gradient size, median of 20) at 2 ranks, which gives the loopback bandwidth.
Results: bench/results/distributed.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from _measure import WATCH, load_note, write_results  # noqa: E402

DONE = re.compile(r"^done: (\d+) steps in \S+ \((\d+) tokens/s training\)", re.M)
HEADER = re.compile(r"gradient all-reduce ([\d.]+) MB/step in (\d+) buckets?")
COMM = re.compile(r"^communication \(rank 0\): ([\d.]+) ms/step waiting for gradient buckets, ([\d.]+) ms/step "
                  r"packing\+launching \(([\d.]+) buckets/step from backward\), ([\d.]+) ms/step loss all-reduce; "
                  r"([\d.]+)% of the training time", re.M)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_project(source: Path, build: Path, target: str) -> Path:
    import arwrap_cpp
    prefix = f"{arwrap_cpp.cmake_prefix_path};{torch.utils.cmake_prefix_path}"
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), "-G", "Ninja",
                    f"-DCMAKE_PREFIX_PATH={prefix}", "-DCMAKE_BUILD_TYPE=Release"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True)
    return build / target


def allreduce_ms(dist_check: Path, nbytes: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--no-python", "--nproc_per_node=2",
                        "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(dist_check), "bench",
                        str(nbytes), "20"], capture_output=True, text=True, env=env)
    m = re.search(r"median ([\d.]+) ms \(min ([\d.]+)\)", p.stdout)
    if p.returncode != 0 or not m:
        raise RuntimeError(p.stdout[-2000:] + p.stderr[-2000:])
    return {"bytes": nbytes, "median_ms": float(m.group(1)), "min_ms": float(m.group(2))}


def run(trainer, ranks, threads, common, extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
    args = [str(trainer), *common, "--threads", str(threads), *extra]
    if ranks > 1:
        args = [sys.executable, "-m", "torch.distributed.run", "--no-python", f"--nproc_per_node={ranks}",
                "--master_addr=127.0.0.1", f"--master_port={free_port()}", *args]
    p = subprocess.run(args, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    m = DONE.search(p.stdout)
    out = {"tokens_per_s": float(m.group(2)), "steps": int(m.group(1))}
    if h := HEADER.search(p.stdout):
        out["allreduce_mb_per_step"], out["buckets"] = float(h.group(1)), int(h.group(2))
    if c := COMM.search(p.stdout):
        out.update(wait_ms=float(c.group(1)), launch_ms=float(c.group(2)), overlapped_buckets=float(c.group(3)),
                   loss_allreduce_ms=float(c.group(4)), comm_share_pct=float(c.group(5)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trainer", default=None, help="arwrap-train (default: build it in build/bench_train)")
    ap.add_argument("--dist-check", default=None, help="tests/integration/cpp's dist_check (default: build it)")
    ap.add_argument("--allreduce-only", action="store_true", help="only the all-reduce timing; keeps the table")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "distributed"))
    args = ap.parse_args()
    trainer = Path(args.trainer) if args.trainer else build_project(ROOT / "examples" / "train",
                                                                     ROOT / "build" / "bench_train", "arwrap-train")
    dist_check = Path(args.dist_check) if args.dist_check else build_project(
        ROOT / "tests" / "integration" / "cpp", ROOT / "build" / "bench_cpp", "dist_check")
    data = Path(torch.__file__).parent  # the torch package's sources: a few MB of text
    common = ["--data", str(data), "--ext", ".py", "--max-bytes", "4000000", "--seq-len", "256", "--dim", "256",
              "--depth", "4", "--heads", "4", "--dim-head", "64", "--steps", str(args.steps), "--warmup", "5",
              "--val-every", "0", "--sample-every", "0", "--save-every", "0", "--log-every", str(args.steps),
              "--checkpoint", str(ROOT / "build" / "bench_dist.pt")]
    b = str(args.batch)
    contenders = {
        "1 proc x 1 thread, batch B": (1, 1, ["--batch", b]),
        "1 proc x 2 threads, batch B": (1, 2, ["--batch", b]),
        "1 proc x 2 threads, batch 2B (--as-ranks 2)": (1, 2, ["--batch", b, "--as-ranks", "2"]),
        "2 ranks x 1 thread, batch B each, overlap on": (2, 1, ["--batch", b]),
        "2 ranks x 1 thread, batch B each, overlap off": (2, 1, ["--batch", b, "--overlap", "off"]),
    }
    results = {k: [] for k in contenders}
    out_json = Path(args.out).with_suffix(".json")
    if args.allreduce_only:  # add the all-reduce timing to an earlier run's results
        payload = json.loads(out_json.read_text())
        results = payload["contenders"]
        args.rounds = payload["rounds"]
    for r in range(0 if args.allreduce_only else args.rounds):
        for name, (ranks, threads, extra) in contenders.items():
            res = run(trainer, ranks, threads, common, extra)
            print(f"round {r + 1}: {name}: {res}", file=sys.stderr)
            results[name].append(res)

    def med(name, key):
        vals = [x[key] for x in results[name] if key in x]
        return statistics.median(vals) if vals else None

    base = med("1 proc x 1 thread, batch B", "tokens_per_s")
    isa = sorted(set(re.findall(r"avx512[a-z_0-9]*|avx2", open("/proc/cpuinfo").read())))
    lines = [
        f"arwrap-train, dim 256, depth 4, heads 4, seq 256, batch B={b} windows per rank, {args.steps} steps, float32; "
        f"median of {args.rounds} round-robin runs; torch {torch.__version__}, {os.cpu_count()} cores "
        f"({', '.join(isa) or platform.processor()}); Gloo over loopback. {load_note(WATCH)}",
        "",
        "| contender | tokens/s | vs 1 proc x 1 thread | all-reduce MB/step | buckets | wait ms/step | pack+launch ms/step "
        "| buckets started in backward | loss all-reduce ms/step | communication share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in contenders:
        tps = med(name, "tokens_per_s")
        cells = [name, f"{tps:.0f}", f"{tps / base:.2f}x"]
        for key, fmt in [("allreduce_mb_per_step", "{:.2f}"), ("buckets", "{:.0f}"), ("wait_ms", "{:.1f}"),
                         ("launch_ms", "{:.1f}"), ("overlapped_buckets", "{:.1f}"), ("loss_allreduce_ms", "{:.1f}"),
                         ("comm_share_pct", "{:.1f}%")]:
            v = med(name, key)
            cells.append(fmt.format(v) if v is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    mb = med("2 ranks x 1 thread, batch B each, overlap on", "allreduce_mb_per_step")
    ar = allreduce_ms(dist_check, int(mb * 1e6))
    lines += ["", f"All-reduce alone, 2 ranks, {mb:.2f} MB float32 (the gradient of a step), after a barrier: "
              f"median {ar['median_ms']:.1f} ms, min {ar['min_ms']:.1f} ms over 20; ring traffic per rank "
              f"2(N-1)/N x B = {mb:.2f} MB, so {mb / ar['median_ms']:.2f} GB/s ({mb / ar['min_ms']:.2f} GB/s at the min)."]
    write_results(args.out, lines, {"allreduce": ar, "contenders": results, "common_args": common, "batch": args.batch,
                                    "rounds": args.rounds, "torch": torch.__version__, "cores": os.cpu_count(),
                                    "isa": isa, "shared_machine": True})


if __name__ == "__main__":
    main()

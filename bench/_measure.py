"""Shared measurement helpers for the benchmarks (CPU: resident memory, wall time).

Peak extra memory is measured in a fresh process per contender: the kernel's
high-water mark of resident memory (VmHWM) is reset through /proc/self/clear_refs
after the inputs exist, one forward+backward runs, and the growth of VmHWM over the
resident size before the step is the step's peak extra memory.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time


class CpuWatch:
    """How much of the machine other jobs used while a benchmark ran: the busy CPU time in
    /proc/stat since the watch started, less this process's and its finished children's own,
    over the wall time times the cores (0: nothing else ran; 1: others took every core)."""

    def __init__(self):
        self.start = self._now()

    @staticmethod
    def _now():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
            busy = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
        except OSError:
            busy = float("nan")
        t = os.times()
        return time.time(), busy, t.user + t.system + t.children_user + t.children_system

    def others_share(self) -> float:
        wall, busy, own = (b - a for a, b in zip(self.start, self._now()))
        return max(0.0, busy - own) / max(wall * (os.cpu_count() or 1), 1e-9)


QUIET_SHARE = 0.05  # below this share of the CPU taken by other jobs, a run counts as on a quiet machine


def cpu_note() -> str:
    """The host's vector features that decide our kernels' speed (AVX2/FMA, AVX-512, avx512_bf16,
    AMX) and the build of the fused attention that runs (arwrap_cpp.attention_cpu_kernel())."""
    from pathlib import Path

    import arwrap_cpp
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split()
    except (OSError, IndexError):
        flags = []
    have = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return (" ".join(have) or "no AVX") + f"; arwrap's attention kernel: {arwrap_cpp.attention_cpu_kernel()}"


def load_note(watch: "CpuWatch") -> str:
    """One sentence on how busy the machine was while the benchmark ran (CpuWatch)."""
    share = watch.others_share()
    verdict = ("a quiet machine" if share < QUIET_SHARE else
               "shared with other jobs: absolute times are noisy, ratios within one process (round-robin) are fair")
    return f"Other jobs used {share:.0%} of the {os.cpu_count()} cores while it ran ({verdict})."


WATCH = CpuWatch()  # from import: the benchmark's whole run


def bench_parser(doc: str, out: str, repeats: int, hidden=()) -> argparse.ArgumentParser:
    """The arguments every benchmark takes (--threads, --repeats, --out), and the hidden ones
    its child processes get: --child, --measure and ``hidden``, a list of (flag, type)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--out", default=out)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--measure", default="time", help=argparse.SUPPRESS)
    for flag, typ in hidden:
        ap.add_argument(flag, type=typ, help=argparse.SUPPRESS)
    return ap


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_extra_bytes(step) -> int:
    """Peak resident memory that one call of step() adds (bytes)."""
    gc.collect()
    if not reset_peak():
        raise RuntimeError("cannot reset the resident high-water mark (/proc/self/clear_refs)")
    before = _status_kb("VmRSS")
    out = step()
    peak = _status_kb("VmHWM")
    del out
    gc.collect()
    return max(0, peak - before) * 1024


def median_time(step, repeats: int, before_each=None) -> float:
    times = []
    for _ in range(repeats):
        if before_each is not None:
            before_each()
        gc.collect()
        t0 = time.perf_counter()
        out = step()
        times.append(time.perf_counter() - t0)
        del out
    return statistics.median(times)


def round_robin(steps: dict, repeats: int, label: str = "") -> dict:
    """Runs every step of {name: step} once (its first result and time are kept: a compiled
    step compiles there) and once more to warm up, then `repeats` rounds taking each in turn,
    so slow drifts of the machine hit all alike. With a label, progress goes to stderr.
    Returns {name: {"time_s": median seconds, "first_step_s", "loss": float(first result),
    "times_s": every round's seconds}}."""
    import statistics
    import time

    first, first_s = {}, {}
    for name, s in steps.items():
        t0 = time.perf_counter()
        first[name] = float(s())
        first_s[name] = time.perf_counter() - t0
        if label:
            print(f"[{label}] {name}: first step {first_s[name]:.1f} s, loss {first[name]:.6f}", file=sys.stderr)
    for s in steps.values():
        s()
    times = {name: [] for name in steps}
    for r in range(repeats):
        for name, s in steps.items():
            t0 = time.perf_counter()
            s()
            times[name].append(time.perf_counter() - t0)
        if label:
            print(f"[{label}] round {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()),
                  file=sys.stderr)
    return {name: {"time_s": statistics.median(t), "first_step_s": first_s[name], "loss": first[name], "times_s": t}
            for name, t in times.items()}


ELEMENTWISE_CONTENDERS = ("arwrap", "eager", "compiled")


def elementwise_row(steps: dict, nbytes: int, repeats: int, label: str, fields: dict, digits: int = 2):
    """The element-wise operators' benches (bench_rotary, bench_activation, bench_norm): their steps
    {arwrap, eager, compiled} round-robin with a 64 MB copy (well past the caches), the floor (nbytes
    at the copy's bandwidth, measured in the same run) and each contender's peak extra memory.
    Returns (the results entries, `fields` in each, and the table cells from arwrap's ms to the
    memory column, times with `digits` decimals)."""
    import torch

    big = torch.empty(64 << 20, dtype=torch.uint8)
    dst = torch.empty_like(big)
    r = round_robin({**steps, "copy": lambda: dst.copy_(big)[0].float()}, repeats, label=label)
    bw = 2 * big.numel() / r["copy"]["time_s"]
    floor = nbytes / bw
    entries = [{**fields, "contender": name, "time_s": r[name]["time_s"],
                "peak_extra_bytes": peak_extra_bytes(steps[name]), "floor_time_s": floor, "bandwidth_gbs": bw / 1e9}
               for name in ELEMENTWISE_CONTENDERS]
    t = {e["contender"]: e["time_s"] * 1e3 for e in entries}
    mem = {e["contender"]: e["peak_extra_bytes"] / 1e6 for e in entries}
    best = min(t["eager"], t["compiled"])
    cells = (f"{t['arwrap']:.{digits}f} | {t['eager']:.{digits}f} | {t['compiled']:.{digits}f} | "
             f"{best / t['arwrap']:.2f}x | {floor * 1e3:.{digits}f} ({nbytes / 1e6:.0f} MB at {bw / 1e9:.1f} GB/s) | "
             f"{t['arwrap'] / (floor * 1e3):.2f} | {mem['arwrap']:.0f} / {mem['eager']:.0f} / {mem['compiled']:.0f}")
    return entries, cells


ELEMENTWISE_COLUMNS = ("arwrap ms", "eager ms", "compiled ms", "arwrap vs best", "floor ms", "arwrap / floor",
                       "peak extra MB (arwrap / eager / compiled)")


def write_elementwise(args, title: str, script: str, options: str, key_columns, lines, results, notes=()) -> None:
    """The element-wise benches' results file: the title, the machine and its load, the command
    (`python bench/<script> <options> --repeats N`), the notes, then the table: each row's own
    key_columns before the cells elementwise_row makes."""
    head = [f"# {title} (bench/{script})", "", f"{args.threads} threads; CPU flags: {cpu_note()}. {load_note(WATCH)}", "",
            f"Command: `python bench/{script} {options} --repeats {args.repeats}`", ""]
    for note in notes:
        head += [note, ""]
    head += ["| " + " | ".join((*key_columns, *ELEMENTWISE_COLUMNS)) + " |",
             "|" + "---|" * len(key_columns) + "---:|" * len(ELEMENTWISE_COLUMNS)]
    write_results(args.out, head + lines, {"results": results, "floor_labels": {"time": "bytes at copy bandwidth"}})


def training_step(wrapper, net, x, autocast_dtype=None):
    """One timed training step: loss = wrapper(x); loss.backward(), the net's gradients cleared;
    the forward under torch.autocast("cpu", autocast_dtype) when one is given."""
    import torch

    def step():
        with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            loss = wrapper(x)
        loss.backward()
        for p in net.parameters():
            p.grad = None
        return loss.detach()
    return step


def step_child(measure: str, repeats: int, build, x, contender: str, contenders) -> None:
    """A training-step benchmark's child process: with measure "memory" the peak extra memory of
    ``contender``'s step, else every contender's step timed round-robin; printed as JSON.
    build(name) -> (wrapper, net)."""
    import json

    if measure == "memory":
        step = training_step(*build(contender), x)
        loss = step()
        step()
        print(json.dumps({"peak_extra_bytes": peak_extra_bytes(step), "loss": loss.item()}))
        return
    print(json.dumps(round_robin({name: training_step(*build(name), x) for name in contenders}, repeats)))


def write_results(out, lines, payload) -> None:
    """Prints the markdown table and writes it as OUT.md, with the raw results as OUT.json."""
    import json
    from pathlib import Path

    table = "\n".join(lines)
    print(table)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    out.with_suffix(".md").write_text(table + "\n")
    render_chart(out.with_suffix(".json"))


def render_chart(json_path) -> None:
    """Draws the results JSON into a PNG beside it (bench/plot_results.py), when matplotlib is there."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"chart of {json_path} not drawn: matplotlib is not installed (bash scripts/plot.sh --help installs "
              "it into .venv; then python bench/plot_results.py)", file=sys.stderr)
        return
    import json

    payload = json.loads(Path(json_path).read_text())
    rows = payload if isinstance(payload, list) else payload.get("results")  # bench_gpu.py writes a bare list
    if not isinstance(rows, list):
        # compile.json and distributed.json keep their results by name: their tables are the record
        print(f"no chart for {json_path}: bench/plot_results.py draws a JSON whose 'results' is a list of rows",
              file=sys.stderr)
        return
    from plot_results import render

    print(f"chart: {render(json_path)}", file=sys.stderr)


def run_isolated(script: str, child_args: list, measures=("time", "memory")) -> dict:
    """Runs `script --child --measure M *child_args` in a fresh process for each measure
    and merges the JSON each prints last; {"error": ...} if one fails. Memory runs have
    glibc map every allocation over 128 KiB directly, so that freed memory leaves the
    resident set and the high-water mark sees every buffer (heap reuse would hide small ones)."""
    import json
    import os
    import subprocess
    import sys

    out = {}
    for measure in measures:
        env = dict(os.environ)
        if measure == "memory":
            env["MALLOC_MMAP_THRESHOLD_"] = "131072"
        p = subprocess.run([sys.executable, script, "--child", "--measure", measure, *map(str, child_args)],
                           capture_output=True, text=True, env=env)
        if p.returncode != 0:
            return {"error": (p.stderr.strip().splitlines() or ["failed"])[-1]}
        out.update(json.loads(p.stdout.strip().splitlines()[-1]))
    return out


def measure_shapes(script: str, shapes: str, contenders: str, keys, common: list) -> list:
    """Every contender on every shape ("AxB[xC]": one value per key, passed to the child as
    --key), each in its own processes (run_isolated); each result carries its shape's keys and
    its contender."""
    import sys

    results = []
    for shape in shapes.split(","):
        dims = dict(zip(keys, (int(v) for v in shape.lower().split("x"))))
        for c in contenders.split(","):
            print(f"  {shape} {c} ...", file=sys.stderr, flush=True)
            child = ["--contender", c] + [a for k, v in dims.items() for a in (f"--{k}", v)]
            results.append({**dims, "contender": c, **run_isolated(script, child + common)})
    return results


def measure_contenders(script: str, configs, contenders, flag: str, common: list) -> list:
    """The training-step benchmarks' parent loop: per configuration, one process times every
    contender round-robin (`--<flag> all`), then one process per contender measures its
    memory. Returns one dict per (configuration, contender) with keys config, <flag>,
    time_s, loss, peak_extra_bytes (or error)."""
    import sys

    results = []
    for cfg in configs:
        print(f"  {cfg} time (all, round-robin) ...", file=sys.stderr, flush=True)
        timed = run_isolated(script, ["--config", cfg, f"--{flag}", "all", *common], measures=("time",))
        for c in contenders:
            print(f"  {cfg} {c} memory ...", file=sys.stderr, flush=True)
            r = {"config": cfg, flag: c}
            if "error" in timed:
                r["error"] = timed["error"]
            else:
                r.update(timed[c])
                r.update(run_isolated(script, ["--config", cfg, f"--{flag}", c, *common], measures=("memory",)))
            results.append(r)
    return results


def step_table_rows(configs, shapes: dict, results: list, flag: str, base: str = "x_transformers") -> list:
    """Markdown rows `| config | contender | step ms | speed-up | peak extra MB | memory ratio | loss |`
    of measure_contenders' results, the ratios against `base` in the same configuration."""
    rows = []
    for cfg in configs:
        V, dim, depth, b, n1 = shapes[cfg]
        rs = {r[flag]: r for r in results if r["config"] == cfg}
        ref = rs.get(base, {})
        label = f"{cfg}: V={V}, dim {dim}, depth {depth}, ({b}, {n1})"
        for c, r in rs.items():
            if "error" in r:
                rows.append(f"| {label} | {c} | error: {r['error'][:70]} | | | | |")
                continue
            sp = ref.get("time_s", float("nan")) / r["time_s"]
            mr = r["peak_extra_bytes"] / ref.get("peak_extra_bytes", float("nan"))
            rows.append(f"| {label} | {c} | {r['time_s'] * 1e3:.0f} | {sp:.2f}x | {r['peak_extra_bytes'] / 2**20:.0f} | "
                        f"{mr:.2f} | {r['loss']:.4f} |")
    return rows

"""What is alive at the peak of one training step: the tensors' timeline of a bench_step.py
contender, from torch.profiler's memory events (profile_memory=True), with every allocation
alive at the peak that is larger than --min-mib, the operator that made it and its size.

    python bench/memory_timeline.py --config B --contender native_fp32
    python bench/memory_timeline.py --config T --contender native_ckpt_bf16 --min-mib 0.5

This counts tensors (the allocator's requests), not the process's resident memory that
bench_step_memory.py measures: the two differ by the allocator's slack, but the list says which
saved tensors make a peak, by size (the issues' "what holds the rest"). The step runs twice
first, so the optimiser-free step's warm-up allocations (autocast's casts, the compiled graph)
are not counted.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main():
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench_step import CONFIGS, build, step_of

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="B", choices=sorted(CONFIGS))
    ap.add_argument("--contender", default="native_fp32")
    ap.add_argument("--min-mib", type=float, default=1.0, help="list live allocations at least this large")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    V, dim, depth, b, n1, heads, rotary = CONFIGS[args.config]
    wrapper, net = build(args.contender, V, dim, depth, n1, heads, rotary)
    x = torch.randint(0, V, (b, n1), generator=torch.Generator().manual_seed(0))
    step = step_of(args.contender, wrapper, net, x)
    step()
    step()

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # the chrome trace carries each allocation's address and size (the [memory] instant events'
    # Addr and Bytes, negative for a free); the Python event list carries no address
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        with open(f.name) as fh:
            trace = json.load(fh)["traceEvents"]
    mem = sorted((e["ts"], int(e["args"]["Bytes"]), int(e["args"]["Addr"])) for e in trace
                 if e.get("name") == "[memory]" and e["args"].get("Device Type", 0) == 0)
    if not mem:
        raise SystemExit("the profiler recorded no memory events")
    # every operator's time range: those open when an allocation happened made it
    ops = sorted((e["ts"], e["ts"] + e.get("dur", 0), e["name"]) for e in trace
                 if e.get("ph") == "X" and e.get("cat") == "cpu_op")

    def op_at(t):
        """the operators open at t, outermost first, the allocators' own (empty, empty_strided)
        left out: 'autograd::engine::evaluate_function: LeanFeedForwardBackward > aten::mm'"""
        chain = [(s, name) for s, end, name in ops if s <= t <= end]
        names = [name for _, name in sorted(chain) if name not in ("aten::empty", "aten::empty_strided")]
        return " > ".join(names[:1] + names[-2:] if len(names) > 3 else names) or "?"

    # walk the allocations in time order: an address enters the live set, its free leaves it
    live, total, peak, peak_live, peak_t = {}, 0, 0, {}, 0
    for t, nbytes, addr in mem:
        if nbytes > 0:
            live[addr] = (nbytes, t)
        else:
            live.pop(addr, None)
        total += nbytes
        if total > peak:
            peak, peak_live, peak_t = total, dict(live), t

    mib = 2**20
    print(f"{args.config} {args.contender}: peak of live tensors {peak / mib:.1f} MiB over what was alive "
          f"before the step; reached in {op_at(peak_t)}")
    rows = sorted(peak_live.values(), key=lambda v: -v[0])
    shown = 0
    for nbytes, t in rows:
        if nbytes < args.min_mib * mib:
            continue
        shown += nbytes
        print(f"  {nbytes / mib:8.2f} MiB  made in {op_at(t)}")
    rest = sum(v[0] for v in rows) - shown
    print(f"  {shown / mib:8.2f} MiB listed; {rest / mib:.2f} MiB in smaller allocations; "
          f"{(peak - shown - rest) / mib:.2f} MiB net of frees of tensors made before the step")


if __name__ == "__main__":
    main()

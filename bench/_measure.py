"""Shared measurement helpers for the benchmarks (CPU: resident memory, wall time).

Peak extra memory is measured in a fresh process per contender: the kernel's
high-water mark of resident memory (VmHWM) is reset through /proc/self/clear_refs
after the inputs exist, one forward+backward runs, and the growth of VmHWM over the
resident size before the step is the step's peak extra memory.
"""
from __future__ import annotations

import gc
import statistics
import time


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

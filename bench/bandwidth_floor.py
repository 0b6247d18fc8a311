"""The memory-traffic floor the cross-entropy is compared with on this machine: the
plainest passes that move the same bytes as its fused forward+backward over logits
of --rows x --vocab float32 (read once, write once in place), on --threads threads.

    python bench/bandwidth_floor.py
"""
import argparse
import statistics
import time

import torch


def median_ms(fn, k=7):
    fn()
    ts = []
    for _ in range(k):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.rows, args.vocab)
    gb = x.numel() * 4 / 1e9
    r = median_ms(lambda: x.sum())
    rw = median_ms(lambda: x.mul_(1.0))
    print(f"{args.rows}x{args.vocab} float32 ({gb:.2f} GB), {args.threads} threads:")
    print(f"  read once (sum):                 {r:6.1f} ms  ({gb / r * 1e3:5.1f} GB/s)")
    print(f"  read + write in place (mul_):    {rw:6.1f} ms  ({2 * gb / rw * 1e3:5.1f} GB/s of traffic)")


if __name__ == "__main__":
    main()

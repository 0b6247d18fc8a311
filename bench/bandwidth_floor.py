"""The memory-traffic floor the cross-entropy is compared with on this machine: the
plainest passes that move the same bytes as its fused forward+backward over logits
of --rows x --vocab float32 (read once, write once in place), on --threads threads;
and, for the other side of the bound, arwrap's fused in-place kernel on 16
cache-resident rows, repeated to the same element count (its compute alone).

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

    import arwrap_cpp  # noqa: F401  (registers torch.ops.arwrap)

    small = torch.randn(16, args.vocab) * 2
    tgt = torch.randint(0, args.vocab, (16,))
    fused = torch.ops.arwrap.cross_entropy_forward_grad_

    def compute_only():
        for _ in range(args.rows // 16):
            fused(small, tgt, -100, 1, 0.0, 0.0)

    print(f"  arwrap fused kernel, cache-resident rows: {median_ms(compute_only, 3):6.1f} ms")


if __name__ == "__main__":
    main()

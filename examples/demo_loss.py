"""A short demo of arwrap_cpp's loss on a real model and real text.

Trains a small x-transformers decoder (TransformerWrapper(Decoder)) on bytes of
the Python standard library's own source files (on every machine, no download),
computing the training loss with arwrap_cpp.shift_tokens + the fused
arwrap_cpp.cross_entropy (gradient written in place over the logits). At each
validation the same held-out batch is scored by arwrap_cpp and by
x-transformers' own AutoregressiveWrapper: the two losses agree.

    scripts/demo.sh                  # defaults: ~1 minute on 2 cores
    scripts/demo.sh --steps 300 --dim 256

Metrics (arwrap-train's format, docs/metrics.md) go to --metrics, by default
build/demo_loss.metrics.jsonl; scripts/plot.sh draws them.
"""
from __future__ import annotations

import argparse
import os
import sysconfig
import time
from pathlib import Path

import torch

import arwrap_cpp
from arwrap_cpp.metrics import MetricsWriter, rss_mb
from x_transformers import AutoregressiveWrapper, Decoder, TransformerWrapper


def load_corpus(limit_bytes: int) -> torch.Tensor:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= limit_bytes:
            break
    data = b"".join(chunks)[:limit_bytes]
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def batch(data: torch.Tensor, bsz: int, seq: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, data.numel() - seq - 1, (bsz,), generator=gen)
    return torch.stack([data[s : s + seq + 1] for s in starts.tolist()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--validate-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--metrics", default=str(Path(__file__).resolve().parent.parent / "build" / "demo_loss.metrics.jsonl"),
                    help="JSON Lines metrics file (default: %(default)s)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    data = load_corpus(4_000_000)
    split = int(data.numel() * 0.95)
    train, valid = data[:split], data[split:]
    print(f"corpus: {data.numel() / 1e6:.1f} MB of Python standard-library source ({split} train / "
          f"{data.numel() - split} validation bytes)")

    net = TransformerWrapper(num_tokens=256, max_seq_len=args.seq,
                             attn_layers=Decoder(dim=args.dim, depth=args.depth, heads=4))
    xt_wrapper = AutoregressiveWrapper(net)  # the reference, sharing the same weights
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    print(f"model: x-transformers TransformerWrapper(Decoder(dim={args.dim}, depth={args.depth})), "
          f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters, {args.threads} threads")

    gen = torch.Generator().manual_seed(args.seed)
    vgen = torch.Generator().manual_seed(args.seed + 1)
    vbatch = batch(valid, args.batch, args.seq, vgen)
    t0 = time.perf_counter()
    tokens = 0
    first_val = last_val = None
    metrics = MetricsWriter(args.metrics)
    for step in range(1, args.steps + 1):
        x = batch(train, args.batch, args.seq, gen)
        inp, target, _ = arwrap_cpp.shift_tokens(x)
        logits = net(inp)
        loss = arwrap_cpp.cross_entropy(logits, target, inplace_backward=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
        opt.step()
        tokens += target.numel()
        if step % 10 == 0 or step == 1:
            el = time.perf_counter() - t0
            left = el / step * (args.steps - step)
            print(f"step {step:4d}  loss {loss.item():.4f}  {tokens / el:7.0f} tok/s  {left:5.0f} s left", flush=True)
            metrics.train(step, loss=loss.item(), tokens_per_s=tokens / el, lr=args.lr, grad_norm=grad_norm.item(),
                          rss_mb=rss_mb())
        if step % args.validate_every == 0 or step == args.steps:
            net.eval()
            with torch.no_grad():
                vi, vt, _ = arwrap_cpp.shift_tokens(vbatch)
                ours = arwrap_cpp.cross_entropy(net(vi), vt).item()
                # x-transformers 2.31 feeds all seq+1 tokens, so give it the window minus one token
                # at the end plus the same targets: score windows of seq tokens.
                theirs = xt_wrapper(vbatch[:, :-1]).item()
                ours_same = arwrap_cpp.cross_entropy(net(vbatch[:, :-2]), vbatch[:, 1:-1]).item()
            net.train()
            first_val = ours if first_val is None else first_val
            last_val = ours
            metrics.validation(step, ours)
            print(f"  validation loss {ours:.4f} (bits/byte {ours / 0.6931:.3f}); same windows: arwrap {ours_same:.6f}"
                  f" vs x-transformers {theirs:.6f}")
    metrics.close()
    el = time.perf_counter() - t0
    print(f"metrics: {args.metrics}  (plot: scripts/plot.sh {args.metrics})")
    print(f"done: {args.steps} steps in {el:.1f} s ({tokens / el:.0f} tokens/s); validation loss "
          f"{first_val:.4f} -> {last_val:.4f}")


if __name__ == "__main__":
    main()

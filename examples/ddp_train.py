"""Data-parallel training of arwrap_cpp.AutoregressiveWrapper with torch.distributed.

Each process (rank) wraps the same small x-transformers decoder in
``arwrap_cpp.AutoregressiveWrapper`` and ``DistributedDataParallel``, trains on its own
micro-batch of a global batch, and DDP averages the gradients over ranks (gloo on CPU,
nccl on GPUs). One launch command:

    torchrun --standalone --nproc_per_node=2 examples/ddp_train.py --steps 100

``--all-ignored-step K``: at step K rank 1's micro-batch has no target at all (``lens = 0``:
a batch of padding). Its loss is 0 with zero gradients (not NaN), its backward still runs
the all-reduce, so nothing hangs, and DDP's average counts it as one of the ranks.

``--reference``: the same training in one process on the concatenated global batch, with the
loss scaled so that its gradients are DDP's (see ``reference_scale``); tests/test_ddp.py
compares the weights of the two. ``--out FILE`` saves the final weights, the logged losses
(the mean over ranks) and, under DDP, every rank's loss per step (rank 0 writes it).
"""
from __future__ import annotations

import argparse
import gc
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from arwrap_cpp import AutoregressiveWrapper
from arwrap_cpp.metrics import MetricsWriter, rss_mb


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=4, help="micro-batch rows per rank")
    p.add_argument("--seq", type=int, default=32, help="tokens per row (seq_len + 1)")
    p.add_argument("--num-tokens", type=int, default=64)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--world-size", type=int, default=None, help="ranks (--reference only; torchrun sets it otherwise)")
    p.add_argument("--all-ignored-step", type=int, action="append", default=[],
                   help="a step at which rank 1's micro-batch has no targets (repeatable)")
    p.add_argument("--fused-head", action="store_true", help="AutoregressiveWrapper(fused_head=True)")
    p.add_argument("--reference", action="store_true", help="one process on the concatenated global batch")
    p.add_argument("--out", default=None, help="save {'state', 'losses'} here (rank 0)")
    p.add_argument("--metrics", default=None,
                   help="JSON Lines metrics file (docs/metrics.md), written by rank 0, with world_size")
    return p.parse_args(argv)


def make_model(args) -> AutoregressiveWrapper:
    from x_transformers import Decoder, TransformerWrapper

    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    net = TransformerWrapper(num_tokens=args.num_tokens, max_seq_len=args.seq,
                             attn_layers=Decoder(dim=args.dim, depth=args.depth, heads=2))
    return AutoregressiveWrapper(net, fused_head=args.fused_head)


def global_batch(args, step: int, world_size: int):
    """Token ids (world_size * batch, seq) and lens for one step; rank r trains rows
    [r * batch, (r + 1) * batch). Every row is whole (lens = seq), except that rank 1's rows
    get lens = 0 at the --all-ignored-step steps."""
    gen = torch.Generator().manual_seed(args.seed * 100003 + step)
    x = torch.randint(0, args.num_tokens, (world_size * args.batch, args.seq), generator=gen)
    lens = torch.full((world_size * args.batch,), args.seq, dtype=torch.long)
    if step in args.all_ignored_step and world_size > 1:
        lens[args.batch: 2 * args.batch] = 0
    return x, lens


def reference_scale(args, lens: torch.Tensor, world_size: int) -> float:
    """DDP's gradient is the mean over ranks of each rank's mean-over-its-targets gradient. When every
    rank that has targets has the same number n of them (k ranks out of R), that is k/R times the
    gradient of the mean over the concatenated batch: (1/R) sum_r (1/n) sum_{t in r} = (k/R) (1/(k n)) sum_t.
    A rank without targets contributes a zero gradient but still counts in the 1/R."""
    counts = [int((lens[r * args.batch:(r + 1) * args.batch] - 1).clamp(min=0).sum()) for r in range(world_size)]
    nonzero = [c for c in counts if c > 0]
    assert len(set(nonzero)) <= 1, f"reference_scale needs equal target counts per rank, got {counts}"
    return len(nonzero) / world_size


def train(args, rank: int, world_size: int, distributed: bool):
    model = make_model(args)
    if distributed:
        model = DDP(model)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    losses, rank_losses = [], []
    metrics = (MetricsWriter(args.metrics, enabled=rank == 0, world_size=world_size if distributed else None)
               if args.metrics else None)
    t0 = t_step = time.time()
    for step in range(args.steps):
        x, lens = global_batch(args, step, world_size)
        if distributed:
            rows = slice(rank * args.batch, (rank + 1) * args.batch)
            loss = model(x[rows], lens=lens[rows])
            parts = [torch.zeros(()) for _ in range(world_size)]
            dist.all_gather(parts, loss.detach().float())  # every rank's loss, for the log only
            per_rank = [p.item() for p in parts]
            report = torch.tensor(sum(per_rank) / world_size)
        else:
            loss = model(x, lens=lens) * reference_scale(args, lens, world_size)
            report, per_rank = loss.detach(), None
        opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP all-reduces (averages) the gradients here
        opt.step()
        if not torch.isfinite(report):
            raise FloatingPointError(f"step {step}: loss {report.item()} (per rank: {per_rank})")
        losses.append(report.item())
        rank_losses.append(per_rank)
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {report.item():.4f}  ({time.time() - t0:.1f} s)", flush=True)
        if metrics is not None:  # the step after `step` updates (step + 1 steps done)
            metrics.train(step + 1, loss=report.item(), lr=args.lr, rss_mb=rss_mb(),
                          tokens_per_s=world_size * args.batch * (args.seq - 1) / max(time.time() - t_step, 1e-9))
        t_step = time.time()
    if metrics is not None:
        metrics.close()
    return (model.module if distributed else model), losses, rank_losses


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.reference:
        model, losses, rank_losses = train(args, 0, args.world_size or 2, distributed=False)
        rank = 0
    else:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank, world_size = dist.get_rank(), dist.get_world_size()
        try:
            model, losses, rank_losses = train(args, rank, world_size, distributed=True)
            # Tear down while Python is whole: the DDP wrapper (reference cycles) and its
            # reducer go now, and every rank's last all-reduce has finished. Otherwise gloo's
            # worker thread may still be releasing the last work item (which holds Python
            # objects) while the interpreter finalizes, and abort the process at exit.
            gc.collect()
            dist.barrier()
        finally:
            dist.destroy_process_group()
    if rank == 0 and args.out:
        torch.save({"state": model.net.state_dict(), "losses": losses, "rank_losses": rank_losses}, args.out)


if __name__ == "__main__":
    main()

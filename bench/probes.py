"""The one-off measurements behind the explanations in docs/mixed_precision.md and
docs/performance.md (where the time and memory go), each reproducible by name:

    python bench/probes.py attention   # causal attention as blocked batched GEMMs vs SDPA, B's shape, fp32 and bf16
    python bench/probes.py saved B     # what one step keeps for its backward, native net vs x-transformers flash
    python bench/probes.py loop build/train/arwrap-train   # the trainer's loop in Python vs arwrap-train, back to back
    python bench/probes.py dw          # the bf16 weight-gradient tile product: upcast vs bf16 product + add
    python bench/probes.py gemv        # decoding's products: at::linear on weights not in cache vs a plain read

They print; nothing is written. 2 threads, as the benchmarks.
"""
from __future__ import annotations

import argparse
import collections
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import WATCH, load_note, median_time  # noqa: E402


def warm_median(fn, repeats=5):
    fn()
    return median_time(fn, repeats)


def blocked_attention(q, k, v, dout, block):
    """Causal attention over query blocks with batched GEMMs (scores of a block in one bmm, the
    softmax in float32, then bmm with V), and its backward recomputing each block from the saved
    log-sum-exp: the composition a fused kernel would replace."""
    BH, n, d = q.shape[0] * q.shape[1], q.shape[2], q.shape[3]
    Q, K, V, dO = (t.reshape(BH, n, d) for t in (q, k, v, dout))
    scale = d**-0.5
    out, lse = torch.empty(BH, n, d), torch.empty(BH, n)

    def scores(i0, i1):
        s = torch.bmm(Q[:, i0:i1], K[:, :i1].transpose(1, 2)).float().mul_(scale)
        s[:, :, i0:i1].masked_fill_(torch.ones(i1 - i0, i1 - i0, dtype=torch.bool).triu_(1), -math.inf)
        return s

    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        s = scores(i0, i1)
        m = s.amax(-1, keepdim=True)
        s.sub_(m).exp_()
        l_ = s.sum(-1, keepdim=True)
        out[:, i0:i1] = torch.bmm(s.to(q.dtype), V[:, :i1]).float().div_(l_)
        lse[:, i0:i1] = (m + l_.log()).squeeze(-1)
    D = (dO.float() * out).sum(-1, keepdim=True)
    dq, dk, dv = torch.empty(BH, n, d), torch.zeros(BH, n, d), torch.zeros(BH, n, d)
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        p = scores(i0, i1).sub_(lse[:, i0:i1, None]).exp_()
        dv[:, :i1] += torch.bmm(p.to(q.dtype).transpose(1, 2), dO[:, i0:i1]).float()
        ds = torch.bmm(dO[:, i0:i1], V[:, :i1].transpose(1, 2)).float().sub_(D[:, i0:i1]).mul_(p).mul_(scale)
        ds = ds.to(q.dtype)
        dq[:, i0:i1] = torch.bmm(ds, K[:, :i1]).float()
        dk[:, :i1] += torch.bmm(ds.transpose(1, 2), Q[:, i0:i1]).float()
    return out, dq, dk, dv


def attention(args):
    b, H, n, d = 8, 8, 512, 64  # configuration B's attention
    for dtype in (torch.float32, torch.bfloat16):
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(b, H, n, d, generator=g).to(dtype).requires_grad_() for _ in range(3))
        dout = torch.randn(b, H, n, d, generator=g).to(dtype)
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        with torch.no_grad():
            out, *_ = blocked_attention(q, k, v, dout, 64)
        err = (out.view(ref.shape) - ref.float()).abs().max().item()

        def sdpa():
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            torch.autograd.grad(o, (q, k, v), dout)

        print(f"{dtype}: SDPA forward+backward {warm_median(sdpa) * 1e3:.1f} ms per layer; blocked (max |diff| "
              f"{err:.1e}):", end="")
        for block in (32, 64, 128):
            with torch.no_grad():
                t = warm_median(lambda: blocked_attention(q, k, v, dout, block))
            print(f"  block {block}: {t * 1e3:.1f} ms", end="")
        print()


def saved(args):
    """What one step keeps for its backward (saved_tensors_hooks, unique storages), in float32
    and under bf16 autocast, for the native net (plain and checkpoint_layers) and x-transformers
    flash; per layer: the difference to the same net one layer shallower."""
    import bench_step as bs

    V, dim, depth, b, n1, heads, rotary = bs.CONFIGS[args.what or "B"]
    x = torch.randint(0, V, (b, n1), generator=torch.Generator().manual_seed(2))

    def count(name, depth, bf16):
        wrapper, net = bs.build(name, V, dim, depth, n1, heads, rotary)
        params = {p.untyped_storage().data_ptr() for p in net.parameters()}
        seen, by_shape = {}, collections.Counter()

        def pack(t):
            key = (t.untyped_storage().data_ptr(), t.dtype)
            if key not in seen and key[0] not in params:
                seen[key] = t.untyped_storage().nbytes()
                by_shape[(tuple(t.shape), str(t.dtype).replace("torch.", ""))] += seen[key]
            return t

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = wrapper(x)
        del loss
        return sum(seen.values()), by_shape

    for bf16 in (False, True):
        for name in ("native_fp32", "native_ckpt_fp32", "xt_flash"):
            total, shapes = count(name, depth, bf16)
            _, fewer = count(name, depth - 1, bf16)
            layer = shapes - fewer
            print(f"{name}{' bf16 autocast' if bf16 else ''}: {total / 2**20:.0f} MB saved for backward besides the "
                  f"parameters; per layer {sum(layer.values()) / 2**20:.1f} MB:")
            for (shape, dt), nb in sorted(layer.items(), key=lambda kv: -kv[1]):
                print(f"    {shape} {dt}: {nb / 2**20:.1f} MB")


def loop(args):
    """arwrap-train's loop (Adam, clip_grad_norm 0.5, random windows) in Python around the native
    net, then arwrap-train itself, twice, tokens/s after the first step."""
    import arwrap_cpp
    import bench_step as bs

    m, steps = bs.TRAINER_MODEL, 15
    buf = torch.tensor(list(bs.trainer_data()), dtype=torch.long)

    def python_loop():
        torch.manual_seed(0)
        net = arwrap_cpp.TransformerWrapper(
            num_tokens=256, max_seq_len=m["seq_len"], use_abs_pos_emb=False,
            attn_layers=arwrap_cpp.Decoder(dim=m["dim"], depth=m["depth"], heads=m["heads"],
                                           attn_dim_head=m["dim_head"], rotary_pos_emb=True))
        model, opt = arwrap_cpp.AutoregressiveWrapper(net), torch.optim.Adam(net.parameters(), lr=2e-3)
        g = torch.Generator().manual_seed(0)
        for s in range(steps + 1):
            if s == 1:
                t0 = time.perf_counter()
            starts = torch.randint(0, len(buf) - m["seq_len"] - 1, (m["batch"],), generator=g)
            model(torch.stack([buf[i:i + m["seq_len"] + 1] for i in starts.tolist()])).backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
            opt.step()
            opt.zero_grad()
        return m["batch"] * m["seq_len"] * steps / (time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(2):
            ours = bs.run_trainer(args.what, "fp32", steps, 2, tmp)
            print(f"fp32, {steps} steps: Python loop around the native net {python_loop():.0f} tok/s, "
                  f"arwrap-train {ours.get('tokens_per_s', float('nan')):.0f} tok/s")


def dw(args):
    V, R, D = 32000, 256, 1024  # one row tile of the linear cross-entropy at 8192x1024x32000 in bf16
    z, h = torch.randn(R, V).bfloat16(), torch.randn(R, D).bfloat16()
    acc, tmp = torch.zeros(V, D), torch.empty(V, D, dtype=torch.bfloat16)
    up = warm_median(lambda: acc.addmm_(z.t().float(), h.float()))
    product = warm_median(lambda: torch.mm(z.t(), h, out=tmp))
    product_add = warm_median(lambda: acc.add_(torch.mm(z.t(), h, out=tmp)))
    print(f"dW += z^T h for one {R}-row tile (V={V}, D={D}): upcast to float32 {up * 1e3:.1f} ms; bf16 product "
          f"{product * 1e3:.1f} ms alone, {product_add * 1e3:.1f} ms with its add into the float32 accumulator")


def gemv(args):
    N, K, count = 2048, 512, 40  # 160 MB of weights: not in any cache, as decoding reads them
    Ws = [torch.randn(N, K) for _ in range(count)]
    x = torch.randn(1, K)
    big = torch.randn(64 * 2**20)
    read = big.numel() * 4 / warm_median(big.sum, 3)
    linear = count * N * K * 4 / warm_median(lambda: [torch.nn.functional.linear(x, W) for W in Ws], 3)
    print(f"one row against weights not in cache: at::linear {linear / 1e9:.1f} GB/s; a plain read "
          f"(sum of 256 MiB) {read / 1e9:.1f} GB/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probe", choices=["attention", "saved", "loop", "dw", "gemv"])
    ap.add_argument("what", nargs="?", help="saved: the configuration (default B); loop: a built arwrap-train")
    args = ap.parse_args()
    if args.probe == "loop" and not args.what:
        ap.error("loop needs the path of a built arwrap-train (e.g. build/train/arwrap-train)")
    torch.set_num_threads(2)
    globals()[args.probe](args)
    print(load_note(WATCH))


if __name__ == "__main__":
    main()

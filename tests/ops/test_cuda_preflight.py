"""The fixes of the CUDA pre-flight review (issue 16, part A), checked where they can run.

Every test is parametrised by device: the CPU runs the device-generic paths (the linear
cross-entropy's tile loop, attention_lse; the backward's rescale and scale_grad_ are in
tests/ops/test_scale_grad.py) here; the
"cuda" cases are skipped, with the reason, on machines without a GPU and run on one
through bench/gpu_check.sh. CPU-only checks of CUDA code (the row sweep's index
arithmetic) compile that code with the host compiler.
"""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import arwrap_cpp
from op_references import reference_cross_entropy as ref_ce
from op_references import reference_attention_lse

ROOT = Path(__file__).resolve().parents[2]
HAS_CUDA = torch.cuda.is_available() and arwrap_cpp.built_with_cuda()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and libarwrap built "
                                                                      "with its CUDA kernels")),
]


# ------------------------------------------------- 1. bf16 weight gradient, float32 output


def lce_float64_reference(h, W, t, ignore_index=-100):
    """dloss/dW (mean reduction) of F.cross_entropy(h W^T) in float64 from the given values."""
    hd, Wd = h.double().requires_grad_(False), W.double().clone().requires_grad_(True)
    loss = F.cross_entropy(hd @ Wd.T, t, ignore_index=ignore_index)
    (gW,) = torch.autograd.grad(loss, Wd)
    return loss.detach(), gW


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("generic", [False, True])
def test_bf16_weight_gradient_matches_the_float32_product(device, generic):
    """The weight gradient of the bf16 linear cross-entropy is accumulated over row tiles
    as bf16 x bf16 products with a float32 result (or the float32 product where the
    backend has no such kernel): it must match the float32 product of the same bf16
    values within bf16 rounding of the result, over several tiles (N = 300 > 64 rows)."""
    if generic and device != "cpu":
        pytest.skip("the generic op is the CUDA kernel itself on a GPU")
    N, D, V = 300, 48, 1009
    h = (torch.randn(N, D) / 2).bfloat16().to(device)
    W = (torch.randn(V, D) / 4).bfloat16().to(device)
    t = torch.randint(0, V, (N,), device=device)
    t[::7] = -100
    if generic:  # the device-generic tile loop (the CUDA kernel) on the CPU
        loss, _, _, gW, _ = torch.ops.arwrap._linear_cross_entropy_forward_generic(
            h, W, None, t, -100, 1, 0.0, 0.0, [False, True, False])
    else:
        Wr = W.clone().requires_grad_(True)
        loss = arwrap_cpp.linear_cross_entropy(h, Wr, t)
        (gW,) = torch.autograd.grad(loss, Wr)
    assert gW.dtype == torch.bfloat16 and gW.shape == W.shape
    ref_loss, ref_gW = lce_float64_reference(h.cpu(), W.cpu(), t.cpu())
    assert abs(loss.item() - ref_loss.item()) < 1e-3 * abs(ref_loss.item())
    err = (gW.cpu().double() - ref_gW).abs().max().item()
    scale = ref_gW.abs().max().item()
    # the logits tile is bf16 (as in any bf16 model), so allow a few bf16 ulps of the largest entry
    assert err <= 2**-6 * scale, (err, scale)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_torch_has_the_low_precision_product_with_float32_output():
    """The fast path of fix 1 on this GPU's torch: bf16 x bf16 -> float32 (addmm.dtype_out
    accumulating into a float32 buffer). If this fails, the kernels fall back to the
    float32 upcast (correct, slower): record it in the results."""
    a = torch.randn(64, 32, device="cuda").bfloat16()
    b = torch.randn(32, 48, device="cuda").bfloat16()
    acc = torch.ones(64, 48, device="cuda")
    torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    torch.testing.assert_close(acc, 1 + a.float() @ b.float(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------- 2. the backward's rescale: tests/ops/test_scale_grad.py


# ------------------------------------------------- 3. validation without host syncs


@pytest.mark.parametrize("sync_checks", [None, "1"])
def test_cpu_errors_stay_clear_with_or_without_sync_checks(monkeypatch, sync_checks):
    """On the CPU the checks read values directly (no sync to avoid): the clear errors stay,
    whatever ARWRAP_SYNC_CHECKS says."""
    if sync_checks is None:
        monkeypatch.delenv("ARWRAP_SYNC_CHECKS", raising=False)
    else:
        monkeypatch.setenv("ARWRAP_SYNC_CHECKS", sync_checks)
    with pytest.raises(IndexError, match=r"target must be in \[0, 10\)"):
        arwrap_cpp.cross_entropy(torch.randn(3, 10), torch.tensor([1, 10, 2]))
    with pytest.raises(IndexError, match="token ids >= 0"):
        arwrap_cpp.shift_tokens(torch.tensor([[1, -5, 3]]))
    net = arwrap_cpp.TransformerWrapper(num_tokens=13, max_seq_len=16,
                                        attn_layers=arwrap_cpp.Decoder(dim=16, depth=1, heads=2))
    with pytest.raises(IndexError, match="outside the net's vocabulary"):
        arwrap_cpp.AutoregressiveWrapper(net)(torch.tensor([[1, 2, 13, 4]]))


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and libarwrap built with its CUDA kernels")
def test_cuda_hot_path_does_not_synchronise():
    """The operators' forward and backward on CUDA make no host synchronisation
    (torch.cuda.set_sync_debug_mode('error') turns any into an error): they can be
    captured in a CUDA graph and do not stall the launch queue."""
    V = 1009
    z = torch.randn(64, V, device="cuda", requires_grad=True)
    t = torch.randint(0, V, (64,), device="cuda")
    h = torch.randn(64, 32, device="cuda", requires_grad=True)
    W = torch.randn(V, 32, device="cuda", requires_grad=True)
    x = torch.randint(0, V, (4, 33), device="cuda")
    q = torch.randn(2, 3, 40, 16, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    kk = torch.randn(2, 3, 40, 16, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    key_mask = torch.ones(2, 40, dtype=torch.bool, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for inplace in (False, True):
            arwrap_cpp.cross_entropy(z * 1, t, inplace_backward=inplace).backward()
            arwrap_cpp.cross_entropy(z * 1, t, reduction="none").sum().backward()
        arwrap_cpp.linear_cross_entropy(h, W, t).backward()
        arwrap_cpp.linear_cross_entropy(h, W, t, reduction="none").sum().backward()
        arwrap_cpp.shift_tokens(x)
        torch.ops.arwrap.attention_lse(q, kk, key_mask, 0.25, True).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and libarwrap built with its CUDA kernels")
def test_cuda_bad_target_asserts_on_the_device_and_sync_checks_restore_the_error():
    """Without ARWRAP_SYNC_CHECKS a bad target fails a device-side assertion (the process's
    CUDA context is lost, so it runs in a child process); with it, the clear IndexError."""
    code = textwrap.dedent("""
        import torch, arwrap_cpp
        loss = arwrap_cpp.cross_entropy(torch.randn(3, 10, device="cuda"), torch.tensor([1, 10, 2], device="cuda"))
        torch.cuda.synchronize()
        print("NO ERROR")
    """)
    env = {k: v for k, v in os.environ.items() if k != "ARWRAP_SYNC_CHECKS"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "NO ERROR" not in r.stdout
    assert "device-side assert" in r.stderr or "target must be in [0, V)" in r.stderr, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-c", code], env={**env, "ARWRAP_SYNC_CHECKS": "1"}, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "IndexError" in r.stderr and "target must be in [0, 10)" in r.stderr, r.stderr[-2000:]


# ------------------------------------------------- 4. the CUDA row sweep's index arithmetic

ROW_SWEEP_CHECK = r"""
#include "row_sweep.h"
#include <cstdio>
#include <vector>
using namespace arwrap::ops::cuda;
// Every element visited exactly once, packs 16-byte aligned, head and tail shorter than a pack.
int check(uint64_t addr, uint64_t addr2, long V, int elem, long threads) {
  const int vec = 16 / elem;
  const RowSplit sp = row_split(addr, addr2, V, elem);
  std::vector<int> seen(V, 0);
  int bad = 0;
  auto pack = [&](long i) {
    const long j0 = sp.head + i * vec;
    if ((addr + j0 * elem) % 16 != 0 || (addr2 + j0 * elem) % 16 != 0) ++bad;
    for (int k = 0; k < vec; ++k) if (j0 + k < V) ++seen[j0 + k]; else ++bad;
  };
  for (long tid = 0; tid < threads; ++tid) {
    row_sweep<4>(sp, V, vec, tid, threads, [&](long j) { ++seen[j]; },
                 [&](long i, long stride) { for (int u = 0; u < 4; ++u) pack(i + u * stride); },
                 [&](long i) { pack(i); });
  }
  for (long j = 0; j < V; ++j) bad += seen[j] != 1;
  const bool vectorised = addr % elem == 0 && addr % 16 == addr2 % 16;
  if (vectorised && (sp.head >= vec || V - sp.head - sp.nvec * vec >= vec)) ++bad;
  if (!vectorised && sp.nvec != 0) ++bad;
  if (bad) std::printf("FAIL addr=%llu addr2=%llu V=%ld elem=%d threads=%ld\n", (unsigned long long)addr,
                       (unsigned long long)addr2, V, elem, threads);
  return bad;
}
int main() {
  int bad = 0, cases = 0;
  const long Vs[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 100, 1009, 50257};
  for (int elem : {2, 4, 8})
    for (long V : Vs)
      for (long threads : {32L, 96L, 512L})
        for (uint64_t off = 0; off < 16; off += 1) {
          const uint64_t a = 4096 + off;
          bad += check(a, a, V, elem, threads) != 0;
          bad += check(a, 8192 + (off + elem) % 16, V, elem, threads) != 0;  // misaligned partner: scalar
          cases += 2;
        }
  std::printf("%d of %d cases bad\n", bad, cases);
  return bad != 0;
}
"""


def test_cuda_row_sweep_visits_every_element_once_with_aligned_packs(tmp_path):
    """The CUDA row sweep (csrc/ops/cuda/row_sweep.h), compiled for the host: a scalar head to
    the first 16-byte boundary, unrolled 16-byte packs, a scalar tail; every element exactly
    once for every start address, V, element size and block size; a partner pointer at
    another offset modulo 16 falls back to scalar loads."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    src = tmp_path / "row_sweep_check.cpp"
    src.write_text(ROW_SWEEP_CHECK)
    exe = tmp_path / "row_sweep_check"
    subprocess.run([cxx, "-std=c++17", "-O1", "-I", str(ROOT / "csrc/ops/cuda"), str(src), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    r = subprocess.run([str(exe)], capture_output=True, text=True)
    print(r.stdout[-400:])
    assert r.returncode == 0, r.stdout[-3000:]
    assert r.stdout.startswith("0 of "), r.stdout[-3000:]


def test_row_sweep_splits_unaligned_rows_at_odd_vocabularies():
    """At V = 50257 in bf16, 7 rows in 8 start off a 16-byte boundary; the split still
    vectorises all but fewer than 8 + 8 elements of each (checked in C++ above); here the
    fraction of such rows, which the old code read with scalar loads only."""
    V, elem = 50257, 2
    unaligned = sum((r * V * elem) % 16 != 0 for r in range(64))
    assert unaligned == 56


# ------------------------------------------------- 5. attention_lse tiles and products


reference_lse = reference_attention_lse  # the operator's one reference (op_references.py)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("budget", [None, "50", "10000"])
def test_attention_lse_tiles_over_heads_and_rows(device, budget, monkeypatch):
    """Tiles of (heads x rows), at least min(nq, 64) rows each, with few heads per tile when
    the score budget is small (ARWRAP_ATTENTION_LSE_TILE_SCORES shrinks it so that these
    small shapes cut into many tiles): lse and gradients equal the float64 reference."""
    if budget is None:
        monkeypatch.delenv("ARWRAP_ATTENTION_LSE_TILE_SCORES", raising=False)
    else:
        monkeypatch.setenv("ARWRAP_ATTENTION_LSE_TILE_SCORES", budget)
    b, h, nq, nk, d = 2, 3, 70, 75, 8
    q = torch.randn(b, h, nq, d, dtype=torch.float64, device=device, requires_grad=True)
    k = torch.randn(b, h, nk, d, dtype=torch.float64, device=device, requires_grad=True)
    mask = torch.rand(b, nk, device=device) > 0.3
    mask[:, 0] = True
    lse = torch.ops.arwrap.attention_lse(q, k, mask, 0.6, True)
    r = reference_lse(q, k, mask, 0.6, True)
    torch.testing.assert_close(lse, r)
    g = torch.randn_like(lse)
    got = torch.autograd.grad(lse, (q, k), g)
    want = torch.autograd.grad(r, (q, k), g)
    for a, c in zip(got, want):
        torch.testing.assert_close(a, c)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attention_lse_low_precision_products_within_tolerance(device, dtype):
    """bf16/fp16 inputs: float32 lse from low-precision products with a float32 result
    (or the float32 upcast where the backend has none); gradients (bf16: p rounded to
    bf16 for the two backward products) within the input dtype's rounding of the float64
    reference of the same values."""
    b, h, n, d = 2, 2, 40, 16
    q = torch.randn(b, h, n, d, device=device).to(dtype).requires_grad_(True)
    k = torch.randn(b, h, n, d, device=device).to(dtype).requires_grad_(True)
    lse = torch.ops.arwrap.attention_lse(q, k, None, d**-0.5, True)
    assert lse.dtype == torch.float32
    qd, kd = q.detach().double().requires_grad_(True), k.detach().double().requires_grad_(True)
    r = reference_lse(qd, kd, None, d**-0.5, True)
    torch.testing.assert_close(lse.double(), r, rtol=0, atol=1e-5)
    g = torch.randn_like(lse)
    dq, dk = torch.autograd.grad(lse, (q, k), g)
    rq, rk = torch.autograd.grad(r, (qd, kd), g.double())
    assert dq.dtype == dk.dtype == dtype
    eps = 2**-7 if dtype == torch.bfloat16 else 2**-9
    for a, c in ((dq, rq), (dk, rk)):
        assert (a.double() - c).abs().max() <= 2 * eps * c.abs().max()


# ------------------------------------------------- 7. cases the CUDA tests did not cover


def _ce_reference_grads(z, t, up, **kw):
    zr = z.detach().double().cpu().requires_grad_(True)
    loss = ref_ce(zr, t.cpu(), **kw)
    up = torch.as_tensor(up, dtype=torch.float64).cpu()
    (g,) = torch.autograd.grad(loss, zr, up.double())
    return loss.detach(), g


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_return_lse_is_differentiable(device, inplace, reduction):
    """return_lse=True (the plain, non-fused path): lse equals logsumexp, and a gradient
    through both the loss and the lse matches the float64 reference."""
    V = 211
    z = (torch.randn(5, 3, V) * 2).to(device)
    t = torch.randint(0, V, (5, 3), device=device)
    t[1, 1] = -100
    x = z.clone().requires_grad_(True)
    loss, lse = arwrap_cpp.cross_entropy(x * 1, t, reduction=reduction, z_loss_weight=1e-3, inplace_backward=inplace,
                                         return_lse=True)
    torch.testing.assert_close(lse.cpu().double(), torch.logsumexp(z.cpu().double(), -1), rtol=1e-6, atol=1e-6)
    gl = torch.randn(loss.shape, device=device)
    gs = torch.randn(lse.shape, device=device)
    torch.autograd.backward([loss, lse], [gl, gs])
    zr = z.double().cpu().requires_grad_(True)
    r = ref_ce(zr, t.cpu(), reduction=reduction, z_loss_weight=1e-3)
    torch.autograd.backward([r, torch.logsumexp(zr, -1)], [gl.double().cpu(), gs.double().cpu()])
    torch.testing.assert_close(x.grad.cpu().double(), zr.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_and_sliced_logits(device, inplace, dtype):
    """Logits that are a view: every other row of a batch, and the first V columns of a
    wider buffer (rows at odd offsets: the unaligned head of the CUDA row sweep)."""
    V = 1001
    base = (torch.randn(6, 8, V + 7) * 3).to(dtype).to(device)
    t = torch.randint(0, V, (6, 4), device=device)
    t[0, 0] = -100
    leaf = base.clone().requires_grad_(True)
    lg = (leaf * 1)[:, ::2, :V]
    assert not lg.is_contiguous() and lg.stride(-1) == 1
    keep = lg.detach().clone()
    loss = arwrap_cpp.cross_entropy(lg, t, label_smoothing=0.1, inplace_backward=inplace)
    loss.backward(torch.tensor(0.5, device=device))
    r, g = _ce_reference_grads(keep, t, 0.5, label_smoothing=0.1)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert abs(loss.item() - r.item()) <= tol * max(1.0, abs(r.item()))
    want = torch.zeros(6, 8, V + 7, dtype=torch.float64)
    want[:, ::2, :V] = g
    assert (leaf.grad.cpu().double() - want).abs().max() <= tol * g.abs().max()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_more_than_eight_leading_dims(device, inplace, reduction):
    """Nine leading dims that do not merge (the CUDA kernel indexes up to 8 and copies
    beyond): values and gradients as for the contiguous logits."""
    V = 13
    base = torch.randn((3,) * 9 + (V,), device=device)
    view_index = (slice(0, 2),) * 9
    leaf = base.clone().requires_grad_(True)
    lg = (leaf * 1)[view_index]
    assert lg.dim() == 10 and not lg.is_contiguous()
    t = torch.randint(0, V, lg.shape[:-1], device=device)
    keep = lg.detach().clone()
    loss = arwrap_cpp.cross_entropy(lg, t, reduction=reduction, inplace_backward=inplace)
    up = torch.randn(loss.shape, device=device)
    loss.backward(up)
    r, g = _ce_reference_grads(keep, t, up, reduction=reduction)
    torch.testing.assert_close(loss.detach().cpu().double(), r, rtol=1e-5, atol=1e-6)
    want = torch.zeros(base.shape, dtype=torch.float64)
    want[view_index] = g
    torch.testing.assert_close(leaf.grad.cpu().double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and libarwrap built with its CUDA kernels")
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cuda_inplace_backward_above_2_31_elements(reduction):
    """rows x V > 2^31 with the gradient written over the logits (the fused forward for
    mean, the in-place backward kernel for none): 64-bit offsets in the writes too."""
    rows, V = 16800, 128256  # 2.15e9 elements, 4.3 GB in bf16
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs a GPU with 40 GiB or more")
    torch.cuda.empty_cache()
    z = torch.randn(rows, V, device="cuda", dtype=torch.bfloat16)
    t = torch.randint(0, V, (rows,), device="cuda")
    check_rows = torch.tensor([0, rows // 2, rows - 1], device="cuda")
    zc = z[check_rows].float()
    x = z.requires_grad_(True)
    lg = x * 1  # a non-leaf: its buffer is overwritten with the gradient
    del z
    loss = arwrap_cpp.cross_entropy(lg, t, reduction=reduction, inplace_backward=True)
    up = torch.ones_like(loss)
    loss.backward(up)
    grad_rows = x.grad[check_rows].float()
    p = torch.softmax(zc, -1)
    p[torch.arange(3), t[check_rows]] -= 1
    if reduction == "mean":
        p /= rows
    torch.testing.assert_close(grad_rows, p, rtol=2e-2, atol=2e-2 / (rows if reduction == "mean" else 1))
    assert torch.isfinite(loss).all()

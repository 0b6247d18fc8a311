"""rotary, x-transformers' rotary embedding of q and k with its backward (internal; the fused CPU
row kernels in float32 and bfloat16, the ATen composition in float64, float16 and on CUDA): against
float64 on odd shapes forward and backward (a partial rotary width, one position, the heads of a
projection as a strided view), the composition the native net ran before (to an ulp), the
layout kept, every instruction set, the same bits for 1 and 2 threads, gradcheck to the
second order, bad input. The shared sample checks (reference, opcheck, compile) run from
test_op_samples.py."""
import pytest
import torch

import arwrap_cpp  # noqa: F401
from conftest import DEVICES
from op_checks import run_script
from op_references import reference_rotary, rotary_tables

A = torch.ops.arwrap
TOL = {torch.float32: dict(atol=2e-6, rtol=2e-6), torch.bfloat16: dict(atol=1e-2, rtol=8e-3),
       torch.float16: dict(atol=2e-3, rtol=2e-3), torch.float64: dict(atol=1e-12, rtol=1e-12)}


def heads(b, m, h, d, dtype, device="cpu", seed=0, strided=True):
    """(b, h, m, d): with strided, a view of (b, m, h, d) memory, as the projections give them."""
    g = torch.Generator().manual_seed(seed)
    if strided:
        return torch.randn(b, m, h, d, generator=g, dtype=torch.float64).to(device, dtype).transpose(1, 2)
    return torch.randn(b, h, m, d, generator=g, dtype=torch.float64).to(device, dtype)


def composition(t, cos, sin):
    """The native net's rotary before the fused operator (modules/layers.cpp), in ATen ops."""
    rot = cos.shape[-1]
    head = t[..., :rot]
    pairs = head.reshape(-1, rot // 2, 2).unbind(-1)
    rotated = torch.stack([-pairs[1], pairs[0]], -1).reshape(head.shape)
    out = head * cos + rotated * sin
    return out if rot == t.shape[-1] else torch.cat([out, t[..., rot:]], -1)


def reference_backward(grad, t, cos, sin):
    t64 = t.double().requires_grad_(True)
    (dt,) = torch.autograd.grad(reference_rotary(t64, cos, sin), t64, grad.double())
    return dt


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("b, m, h, d, rot, strided", [(2, 37, 3, 64, 64, True), (1, 1, 2, 16, 16, False),
                                                      (3, 9, 1, 40, 24, True), (1, 130, 4, 128, 32, False)])
@pytest.mark.parametrize("float32_tables", [True, False])
def test_forward_and_backward_match_float64(device, dtype, b, m, h, d, rot, strided, float32_tables):
    t = heads(b, m, h, d, dtype, device, strided=strided)
    cos, sin = rotary_tables(m, rot, torch.float32 if float32_tables else dtype, device, offset=5)
    out = A.rotary(t, cos, sin)
    assert out.shape == t.shape and out.dtype == dtype and out.stride() == t.stride()
    torch.testing.assert_close(out.double(), reference_rotary(t, cos, sin), **TOL[dtype])
    grad = heads(b, m, h, d, dtype, device, seed=1, strided=False)
    dt = A.rotary_backward(grad, cos, sin)
    torch.testing.assert_close(dt.double(), reference_backward(grad, t, cos, sin), **TOL[dtype])
    leaf = t.detach().requires_grad_(True)
    A.rotary(leaf, cos, sin).backward(grad)
    assert torch.equal(leaf.grad, dt)


@pytest.mark.parametrize("rot", [64, 32])
def test_float32_agrees_with_the_composition_the_net_ran_before(rot):
    """Within an ulp of ATen's composition (the native net's rotary before the operator; the fused
    rows may fuse a product into the sum), forward and backward, and under bf16 autocast (bf16 q
    and k, float32 tables: the composition promoted to float32 and rounded once) to the bit
    wherever the rounding does not land on a tie of the two float32 results."""
    t = heads(2, 50, 3, 64, torch.float32)
    cos, sin = rotary_tables(50, rot)
    a, b = t.detach().requires_grad_(True), t.detach().requires_grad_(True)
    out, ref = A.rotary(a, cos, sin), composition(b, cos, sin)
    ulp = dict(atol=1e-7, rtol=1.2e-7)
    torch.testing.assert_close(out, ref, **ulp)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(a.grad, b.grad, **ulp)
    tb = t.to(torch.bfloat16)
    got, want = A.rotary(tb, cos, sin), composition(tb, cos, sin).to(torch.bfloat16)
    assert (got != want).float().mean() < 1e-3
    torch.testing.assert_close(got, want, atol=1e-2, rtol=8e-3)


def test_gradcheck_to_the_second_order_float64():
    t = heads(1, 5, 2, 6, torch.float64).detach().requires_grad_(True)
    cos, sin = rotary_tables(5, 4, torch.float64)

    def f(x):
        return A.rotary(x, cos, sin)

    assert torch.autograd.gradcheck(f, (t,))
    assert torch.autograd.gradgradcheck(f, (t,))


SCRIPT = """
import torch, arwrap_cpp
from op_references import rotary_tables
g = torch.Generator().manual_seed(0)
# the tables on one thread: torch's float64 cos and sin on two threads differ in the last bit from
# one process to the next, and every run here must rotate by the same tables
threads = torch.get_num_threads()
torch.set_num_threads(1)
cos, sin = rotary_tables(70, 32)
torch.set_num_threads(threads)
res = []
for dtype in (torch.float32, torch.bfloat16):
    t = torch.randn(3, 70, 4, 40, generator=g).to(dtype).transpose(1, 2)
    res += [torch.ops.arwrap.rotary(t, cos, sin), torch.ops.arwrap.rotary_backward(t, cos, sin)]
torch.save(res, {out!r})
"""


def run_with(tmp_path, name, **env):
    return run_script(SCRIPT, tmp_path, name, **env)


def test_every_instruction_set_agrees_and_thread_counts_give_the_same_bits(tmp_path):
    """The per-ISA builds (ARWRAP_CPU_ISA; one the CPU lacks falls back to the best it has) agree within
    a float32 rounding (FMA on AVX2 and AVX-512, none on the baseline); the slices split over
    threads change nothing: the same bits for 1 and 2 threads."""
    best = run_with(tmp_path, "best2", OMP_NUM_THREADS="2")
    for isa in ("base", "avx2", "avx512"):
        got = run_with(tmp_path, isa, ARWRAP_CPU_ISA=isa, OMP_NUM_THREADS="1")
        for a, b in zip(got, best):
            tol = dict(atol=1e-2, rtol=8e-3) if a.dtype == torch.bfloat16 else dict(atol=1e-7, rtol=1.2e-7)
            torch.testing.assert_close(a, b, **tol)
    one = run_with(tmp_path, "best1", OMP_NUM_THREADS="1")
    assert all(torch.equal(a, b) for a, b in zip(one, best))


def test_a_non_contiguous_last_dimension_gives_the_contiguous_result():
    t = torch.randn(2, 8, 3, 10).transpose(-1, -3)  # (2, 10, 3, 8): last dimension strided
    cos, sin = rotary_tables(3, 8)
    out = A.rotary(t, cos, sin)
    assert out.is_contiguous() and torch.equal(out, A.rotary(t.contiguous(), cos, sin))


@pytest.mark.parametrize("device", DEVICES)
def test_bad_arguments_name_them(device):
    t = torch.randn(2, 5, 8, device=device)
    cos, sin = rotary_tables(5, 8, device=device)
    with pytest.raises(ValueError, match=r"rotary: t must be \(\.\.\., seq, dim\) with at least two dimensions"):
        A.rotary(torch.randn(8, device=device), cos[:1], sin[:1])
    with pytest.raises(ValueError, match="rotary: the tables have 4 rows, t has 5 positions"):
        A.rotary(t, cos[:4], sin[:4])
    with pytest.raises(ValueError, match=r"rotary_dim \(the tables' width, 5\) must be even and at most"):
        A.rotary(t, cos[:, :5], sin[:, :5])
    with pytest.raises(ValueError, match=r"rotary_dim \(the tables' width, 10\) must be even and at most t's last "
                                         r"dimension \(8\)"):
        A.rotary(t, torch.cat([cos, cos[:, :2]], -1), torch.cat([sin, sin[:, :2]], -1))
    with pytest.raises(ValueError, match="cos and sin must be .* tables of one shape"):
        A.rotary(t, cos, sin[:, :4])
    with pytest.raises(ValueError, match=r"cos and sin must both be float32 or t's dtype \(Float\), got Half"):
        A.rotary(t, cos.half(), sin.half())
    with pytest.raises(ValueError, match="t must be float32, bfloat16, float16 or float64, got Long"):
        A.rotary(t.long(), cos, sin)
    with pytest.raises(ValueError, match="rotary: cos and sin are constant tables and get no gradient"):
        A.rotary(t, cos.requires_grad_(True), sin)
    with pytest.raises(ValueError, match="rotary_backward: the tables have 4 rows"):
        A.rotary_backward(t, cos.detach()[:4], sin[:4])

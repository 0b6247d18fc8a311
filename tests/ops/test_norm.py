"""norm, the native net's LayerNorm or RMSNorm times gamma with its backward (internal; the fused
CPU row kernels in float32 and bfloat16, the ATen composition in float64, float16 and on CUDA):
against float64 on odd shapes forward and backward (RMSNorm and LayerNorm, unit offset, an output
dtype other than x's, a bf16 upstream gradient with float32 x, strided rows, a zero row, huge and
tiny values), the composition the native net ran before, every instruction set, the same bits for
1 and 2 threads, gradcheck to the second order, bad input. The shared sample checks (reference,
opcheck, compile) run from test_op_samples.py."""
import pytest
import torch
import torch.nn.functional as F

import arwrap_cpp  # noqa: F401
from conftest import DEVICES
from op_checks import run_script
from op_references import reference_norm

A = torch.ops.arwrap
# tolerances of a value or gradient rounded to the dtype (float32 math inside)
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=3e-2, rtol=1.6e-2),
       torch.float16: dict(atol=4e-3, rtol=4e-3), torch.float64: dict(atol=1e-12, rtol=1e-12)}


def inputs(shape, dtype, device="cpu", seed=0, strided=False, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(*shape[:-1], shape[-1] + (5 if strided else 0), generator=g, dtype=torch.float64) + 1.0
    if strided:
        x = x[..., 2:-3]
    gamma = torch.randn(shape[-1], generator=g, dtype=torch.float64)
    return x.to(device, dtype), gamma.to(device, torch.float32 if dtype != torch.float64 else dtype)


def reference_grads(grad, x, gamma, rms, unit_offset):
    x64 = x.double().requires_grad_(True)
    g64 = gamma.double().requires_grad_(True)
    return torch.autograd.grad(reference_norm(x64, g64, rms, unit_offset), (x64, g64), grad.double())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape, strided", [((2, 37, 64), True), ((1, 1, 16), False), ((3, 9, 40), True),
                                            ((130, 256), False), ((5, 1), False), ((4, 1000), False)])
@pytest.mark.parametrize("rms, unit_offset", [(False, False), (False, True), (True, False), (True, True)])
def test_forward_and_backward_match_float64(device, dtype, shape, strided, rms, unit_offset):
    x, gamma = inputs(shape, dtype, device, strided=strided)
    out = A.norm(x, gamma, rms, unit_offset)
    assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()
    want = reference_norm(x, gamma, rms, unit_offset)
    # a row of one value: LayerNorm is 0 there (x - mean), exactly
    torch.testing.assert_close(out.double(), want, **TOL[dtype])
    grad, _ = inputs(shape, dtype, device, seed=1)
    dx, dgamma = A.norm_backward(grad, x, gamma, rms, unit_offset)
    assert dx.dtype == dtype and dx.shape == x.shape and dgamma.dtype == gamma.dtype and dgamma.shape == gamma.shape
    rdx, rdg = reference_grads(grad, x, gamma, rms, unit_offset)
    # d x is rstd (or 1 / |x|) times a difference of terms of d out g's size: its rounding is
    # relative to that (a row of one value, d x exactly 0, keeps rstd times u's rounding)
    x64 = x.double()
    inv = (1 / x64.norm(dim=-1, keepdim=True).clamp_min(1e-12) * shape[-1] ** 0.5 if rms
           else torch.rsqrt(x64.var(-1, unbiased=False, keepdim=True) + 1e-5))
    scale = torch.maximum(rdx.abs().max(), (inv * grad.double() * gamma.double()).abs().max()).clamp(min=1)
    torch.testing.assert_close(dx.double() / scale, rdx / scale, **TOL[dtype])
    gscale = rdg.abs().max().clamp(min=1)  # d gamma sums over the rows
    torch.testing.assert_close(dgamma.double() / gscale, rdg / gscale, **TOL[torch.float32 if dtype == torch.float64 else dtype])


@pytest.mark.parametrize("rms", [False, True])
def test_autocast_output_dtype_and_a_bf16_upstream_gradient(rms):
    """float32 x, a bf16 output (the products' input under autocast): the float32 result rounded
    once, which is the composition's cast; a bf16 d out with float32 x: as if widened first (to
    rounding: the vectoriser may sum the rows in another order for another input type)."""
    x, gamma = inputs((4, 17, 96), torch.float32)
    out = A.norm(x, gamma, rms, True, torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, A.norm(x, gamma, rms, True).to(torch.bfloat16))
    grad = torch.randn(4, 17, 96).bfloat16()
    dx, dg = A.norm_backward(grad, x, gamma, rms, True)
    dx32, dg32 = A.norm_backward(grad.float(), x, gamma, rms, True)
    assert dx.dtype == torch.float32
    torch.testing.assert_close(dx, dx32, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(dg, dg32, atol=1e-5, rtol=1e-6)
    # and through autograd: d out arrives in the output's dtype
    xr, gr = x.clone().requires_grad_(True), gamma.clone().requires_grad_(True)
    A.norm(xr, gr, rms, True, torch.bfloat16).backward(grad)
    assert torch.equal(xr.grad, dx) and torch.equal(gr.grad, dg)


@pytest.mark.parametrize("rms", [False, True])
def test_float32_agrees_with_the_composition_the_net_ran_before(rms):
    """layer_norm(x) * gamma or x / |x| * (g sqrt(dim)) in ATen ops, forward and backward (autograd)."""
    x, gamma = inputs((3, 50, 256), torch.float32, strided=True)
    xr, gr = x.clone().requires_grad_(True), gamma.clone().requires_grad_(True)
    if rms:
        want = xr / torch.linalg.vector_norm(xr, dim=-1, keepdim=True).clamp_min(1e-12) * (gr * 256 ** 0.5)
    else:
        want = F.layer_norm(xr, (256,), eps=1e-5) * gr
    grad = torch.randn_like(want)
    want.backward(grad)
    got = A.norm(x, gamma, rms, False)
    torch.testing.assert_close(got, want.detach(), atol=2e-6, rtol=2e-6)
    dx, dg = A.norm_backward(grad, x, gamma, rms, False)
    torch.testing.assert_close(dx, xr.grad, atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(dg, gr.grad, atol=2e-5, rtol=2e-6)


@pytest.mark.parametrize("rms", [False, True])
def test_extreme_rows(rms):
    """A zero row (RMSNorm's divisor clamped at 1e-12; LayerNorm's variance at eps), a constant row,
    huge and tiny values (as far as their squares stay finite and normal in float32, which the
    composition needs too): the reference's values and gradients, row by row."""
    x = torch.tensor([[0.0] * 8, [3.0] * 8, [1e18, -1e18] * 4, [1e-18, 2e-18] * 4,
                      [1.0, -2.0, 3.0, -4.0, 5.0, -6.0, 7.0, -8.0]], dtype=torch.float32)
    gamma = torch.linspace(0.5, 2.0, 8)
    out = A.norm(x, gamma, rms, False)
    torch.testing.assert_close(out.double(), reference_norm(x, gamma, rms, False), atol=1e-5, rtol=1e-5)
    grad = torch.ones_like(x) * torch.arange(1, 9.0)
    dx, dg = A.norm_backward(grad, x, gamma, rms, False)
    rdx, rdg = reference_grads(grad, x, gamma, rms, False)
    assert torch.isfinite(dx).all() and torch.isfinite(dg).all()
    for i in range(x.shape[0]):
        s = rdx[i].abs().max().clamp(min=1)
        torch.testing.assert_close(dx[i].double() / s, rdx[i] / s, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dg.double(), rdg, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_row_whose_statistics_overflow_is_nan_not_a_silent_zero(rms, dtype):
    """Values beyond ~1e19 (a diverged run): the sum of squares overflows float32, and
    1 / sqrt(inf) would normalise the row to 0 with a 0 gradient (ATen's layer_norm does), which
    hides the divergence; the row is NaN instead, forward and backward, the other rows untouched."""
    x = torch.tensor([[1e20, -1e20, 3e19, 5.0], [1.0, 2.0, -3.0, 0.5]]).to(dtype)
    gamma = torch.ones(4)
    out = A.norm(x, gamma, rms, False)
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1]).all()
    dx, dg = A.norm_backward(torch.ones_like(x), x, gamma, rms, False)
    assert torch.isnan(dx[0]).all() and torch.isfinite(dx[1]).all() and torch.isnan(dg).all()


def test_gradcheck_to_the_second_order_float64():
    x, gamma = inputs((3, 7), torch.float64)
    x.requires_grad_(True), gamma.requires_grad_(True)
    for rms in (False, True):
        def f(a, b):
            return A.norm(a, b, rms, True)

        assert torch.autograd.gradcheck(f, (x, gamma))
        assert torch.autograd.gradgradcheck(f, (x, gamma))


SCRIPT = """
import torch, arwrap_cpp
g = torch.Generator().manual_seed(0)
res = []
for dtype in (torch.float32, torch.bfloat16):
    for rms in (False, True):
        x = (3 * torch.randn(1000, 200, generator=g) + 1).to(dtype)
        gamma = torch.randn(200, generator=g)
        dy = torch.randn(1000, 200, generator=g).to(dtype)
        res += [torch.ops.arwrap.norm(x, gamma, rms, True, torch.bfloat16), torch.ops.arwrap.norm(x, gamma, rms, True),
                *torch.ops.arwrap.norm_backward(dy, x, gamma, rms, True)]
# more rows than 256 blocks of 64: longer blocks, still fixed by the shape
x, dy, gamma = torch.randn(20011, 16, generator=g), torch.randn(20011, 16, generator=g), torch.randn(16, generator=g)
res += list(torch.ops.arwrap.norm_backward(dy, x, gamma, False, False))
torch.save(res, {out!r})
"""


def run_with(tmp_path, name, **env):
    return run_script(SCRIPT, tmp_path, name, **env)


def test_every_instruction_set_agrees_and_thread_counts_give_the_same_bits(tmp_path):
    """The per-ISA builds (ARWRAP_CPU_ISA) agree to rounding (the row sums' order follows the vector
    width); the rows split over threads and d gamma's fixed row blocks change nothing: the same
    bits for 1 and 2 threads."""
    best = run_with(tmp_path, "best2", OMP_NUM_THREADS="2")
    for isa in ("base", "avx2", "avx512"):
        got = run_with(tmp_path, isa, ARWRAP_CPU_ISA=isa, OMP_NUM_THREADS="1")
        for a, b in zip(got, best):
            tol = dict(atol=3e-2, rtol=1.6e-2) if a.dtype == torch.bfloat16 else dict(atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(a, b, **tol)
    one = run_with(tmp_path, "best1", OMP_NUM_THREADS="1")
    assert all(torch.equal(a, b) for a, b in zip(one, best))


@pytest.mark.parametrize("device", DEVICES)
def test_bad_arguments_name_them(device):
    x, gamma = torch.randn(2, 5, 8, device=device), torch.randn(8, device=device)
    with pytest.raises(ValueError, match=r"norm: x must be \(\.\.\., dim\) with at least one dimension, got a scalar"):
        A.norm(torch.tensor(1.0, device=device), gamma, False, False)
    with pytest.raises(ValueError, match=r"norm: gamma must be \(dim,\) = \(8,\), x's last dimension, got \[7\]"):
        A.norm(x, gamma[:7], False, False)
    with pytest.raises(ValueError, match=r"norm: gamma must be float32 or x's dtype \(BFloat16\), got Half"):
        A.norm(x.bfloat16(), gamma.half(), False, False)
    with pytest.raises(ValueError, match="norm: x must be float32, bfloat16, float16 or float64, got Long"):
        A.norm(x.long(), gamma, False, False)
    with pytest.raises(ValueError, match="norm: dtype must be float32, bfloat16, float16 or float64, got Int"):
        A.norm(x, gamma, False, False, torch.int32)
    with pytest.raises(ValueError, match=r"norm: x's last dimension \(dim\) must not be empty"):
        A.norm(torch.randn(3, 0, device=device), torch.randn(0, device=device), False, False)
    with pytest.raises(ValueError, match=r"norm_backward: grad must have x's shape \[2, 5, 8\], got \[2, 5, 7\]"):
        A.norm_backward(torch.randn(2, 5, 7, device=device), x, gamma, False, False)
    with pytest.raises(ValueError, match="norm_backward: grad must be float32, bfloat16, float16 or float64, got Long"):
        A.norm_backward(x.long(), x, gamma, False, False)
    if device == "cpu":
        with pytest.raises(ValueError, match=r"norm: gamma \(meta\) must be on x's device \(cpu\)"):
            A.norm(x, gamma.to("meta"), False, False)

"""activation, the feed-forward's GELU/SiLU (or its GLU) with its backward (internal; the fused
CPU row kernels in float32 and bfloat16, the ATen composition in float64 and on CUDA): against
float64 on odd shapes forward and backward, large and tiny inputs, strided inputs, the in-place
backward that recomputes the output in place, every instruction set, the same bits for 1 and 2 threads, gradcheck, bad input. The
shared sample checks (reference, opcheck, compile) run from test_op_samples.py."""
import pytest
import torch
import torch.nn.functional as F

import arwrap_cpp  # noqa: F401
from conftest import DEVICES
from op_checks import run_script
from op_references import reference_activation

A = torch.ops.arwrap
KINDS = [(glu, swish) for glu in (False, True) for swish in (False, True)]
# float32: the fused kernels' erfc and exp are within a few ulp (erfc below 5e-7 relative); bfloat16: one
# rounding of the output
TOL = {torch.float32: dict(atol=2e-6, rtol=2e-6), torch.bfloat16: dict(atol=1e-2, rtol=8e-3),
       torch.float64: dict(atol=1e-12, rtol=1e-12)}


def inputs(shape, glu, dtype, device="cpu", seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    w = shape[-1] * (2 if glu else 1)
    return (scale * torch.randn(*shape[:-1], w, generator=g, dtype=torch.float64)).to(device, dtype)


def reference_backward(grad, f, glu, swish):
    f64 = f.double().requires_grad_(True)
    (df,) = torch.autograd.grad(reference_activation(f64, glu, swish), f64, grad.double())
    return df


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("glu, swish", KINDS)
@pytest.mark.parametrize("shape", [(1,), (3, 7), (2, 5, 33), (4, 1000)])
def test_forward_and_backward_match_float64(device, dtype, glu, swish, shape):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("float64 is the CPU's reference path")
    f = inputs(shape, glu, dtype, device)
    out = A.activation(f, glu, swish)
    assert out.shape == (*shape[:-1], shape[-1]) and out.dtype == dtype and out.is_contiguous()
    torch.testing.assert_close(out.double(), reference_activation(f, glu, swish), **TOL[dtype])
    grad = inputs(shape, False, dtype, device, seed=1, scale=1.0)
    df = A.activation_backward(grad, f, glu, swish)
    assert df.shape == f.shape and df.dtype == dtype
    torch.testing.assert_close(df.double(), reference_backward(grad, f, glu, swish), **TOL[dtype])


def ulp(x):
    return torch.finfo(torch.float32).eps * x.abs().clamp_min(torch.finfo(torch.float32).tiny)


@pytest.mark.parametrize("swish", [False, True])
def test_float32_on_the_whole_range(swish):
    """Large, tiny and zero inputs (exp underflow, erf saturating to +-1, the sigmoid of +-80, the
    GELU's lower tail): act(x) = x c(x) and act'(x) with c the normal cdf or the sigmoid, whose
    float32 resolution is absolute; so each value is within 4 eps (1 + |x|) plus 4 ulp of float64,
    forward and backward (ATen's float32 gelu, 1 + erf in float32, is not, in the lower tail:
    0 below -5.9); NaN stays NaN. (The GLU is this function times the value half.)"""
    x = torch.cat([torch.linspace(-12, 12, 40001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 80.0, -80.0, 1e4, -1e4])])
    eps = torch.finfo(torch.float32).eps
    ref = reference_activation(x, False, swish)
    out = A.activation(x, False, swish).double()
    assert ((out - ref).abs() <= 4 * eps * (1 + x.double().abs()) + 4 * ulp(ref)).all()
    rdf = reference_backward(torch.ones_like(x), x, False, swish)
    df = A.activation_backward(torch.ones_like(x), x, False, swish).double()
    assert ((df - rdf).abs() <= 4 * eps * (1 + x.double().abs()) + 4 * ulp(rdf)).all()
    neg = x < -6
    if not swish:  # the lower tail keeps its relative accuracy (erfc, not 1 + erf): not flushed to 0
        assert (out[neg & (ref < -1e-30)] < 0).all()
    nan = torch.tensor([float("nan")])
    assert torch.isnan(A.activation(nan, False, swish)).all()
    assert torch.isnan(A.activation(nan.repeat(2), True, swish)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_inputs_give_the_contiguous_results(dtype):
    f = inputs((6, 20), True, dtype)[:, :-2].t()  # (38, 6): neither contiguous nor a row slice
    grad = inputs((38, 3), False, dtype, seed=2)[::1, :].t().contiguous().t()  # strided grad
    assert not f.is_contiguous() and not grad.is_contiguous()
    for glu in (False, True):
        g = grad if glu else inputs((38, 6), False, dtype, seed=2).t().contiguous().t()
        assert torch.equal(A.activation(f, glu, True), A.activation(f.contiguous(), glu, True))
        assert torch.equal(A.activation_backward(g, f, glu, True), A.activation_backward(g.contiguous(), f.contiguous(),
                                                                                         glu, True))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("glu, swish", KINDS)
@pytest.mark.parametrize("shape, strided", [((3, 7), False), ((2, 5, 33), False), ((4, 1000), False), ((6, 20), True)])
def test_backward_recompute_is_forward_then_backward_in_place(device, dtype, glu, swish, shape, strided):
    """activation_backward_recompute_(grad, f): grad := activation(f), f := d f, the same bits as
    the two operators (one pass; the lean feed-forward's backward), strided inputs included, and
    d f's column sums."""
    f = inputs(shape, glu, dtype, device)
    grad = inputs(shape, False, dtype, device, seed=1)
    if strided:  # column-major memory
        f, grad = f.t().contiguous().t(), grad.t().contiguous().t()
    want_out, want_df = A.activation(f, glu, swish), A.activation_backward(grad, f, glu, swish)
    g2, f2 = grad.clone(), f.clone()
    col = A.activation_backward_recompute_(g2, f2, glu, swish)
    assert g2.stride() == grad.stride() and f2.stride() == f.stride()
    assert torch.equal(g2, want_out) and torch.equal(f2, want_df)
    # and d f summed over the rows (the bias gradient), in float32, from the values as stored
    assert col.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and col.shape == (f.shape[-1],)
    want_col = want_df.double().reshape(-1, f.shape[-1]).sum(0)
    torch.testing.assert_close(col.double(), want_col, atol=1e-5 * want_col.abs().max().item() + 1e-6, rtol=1e-5)


def test_empty_and_zero_width():
    for shape in [(0, 8), (3, 0)]:
        f = torch.randn(*shape, requires_grad=True)
        out = A.activation(f, True, False)
        assert out.shape == (shape[0], shape[1] // 2)
        out.sum().backward()
        assert f.grad.shape == f.shape


def test_autograd_through_the_operator_is_the_reference_gradient():
    f = inputs((5, 9), True, torch.float32).requires_grad_(True)
    up = torch.randn(5, 9)
    A.activation(f, True, True).backward(up)
    torch.testing.assert_close(f.grad.double(), reference_backward(up, f.detach(), True, True), **TOL[torch.float32])


@pytest.mark.parametrize("glu, swish", KINDS)
def test_gradcheck_float64(glu, swish):
    f = inputs((3, 5), glu, torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: A.activation(x, glu, swish), (f,))


def test_compile_fullgraph_inductor():
    """Under inductor too (the sample checks use aot_eager): the operator stays one call."""
    f = inputs((4, 12), True, torch.float32).requires_grad_(True)
    fn = torch.compile(lambda x: A.activation(x, True, False).sum(), fullgraph=True)
    fn(f).backward()
    g1 = f.grad.clone()
    f.grad = None
    A.activation(f, True, False).sum().backward()
    torch.testing.assert_close(g1, f.grad)


SCRIPT = """
import torch, arwrap_cpp
g = torch.Generator().manual_seed(0)
outs = []
for dtype in (torch.float32, torch.bfloat16):
    for glu in (False, True):
        for swish in (False, True):
            f = (3 * torch.randn(67, 2 * 301 if glu else 301, generator=g)).to(dtype)
            grad = torch.randn(67, 301, generator=g).to(dtype)
            outs += [torch.ops.arwrap.activation(f, glu, swish), torch.ops.arwrap.activation_backward(grad, f, glu, swish)]
# the recomputing backward and its column sums (float32 sums of bf16 values), over more rows
# than 256 blocks of 64 too
sums = []
for rows in (67, 20011):
    f = (3 * torch.randn(rows, 24, generator=g)).to(torch.bfloat16)
    grad = torch.randn(rows, 24, generator=g).to(torch.bfloat16)
    sums.append(torch.ops.arwrap.activation_backward_recompute_(grad, f, False, False))
    outs += [grad, f]
torch.save((outs, sums), {out!r})
"""


def run_with(tmp_path, name, **env):
    return run_script(SCRIPT, tmp_path, name, **env)


def test_every_instruction_set_agrees_and_thread_counts_give_the_same_bits(tmp_path):
    """The per-ISA builds (ARWRAP_CPU_ISA; one the CPU lacks falls back to the best it has) agree within
    a rounding or two (the compiler may contract a * b + c into an FMA on one ISA and not another);
    rows split over threads change nothing: the same bits for 1 and 2 threads, the recomputing
    backward's column sums (fixed row blocks) included."""
    best, best_sums = run_with(tmp_path, "best2", OMP_NUM_THREADS="2")
    for isa in ("base", "avx2", "avx512"):
        got, sums = run_with(tmp_path, isa, ARWRAP_CPU_ISA=isa, OMP_NUM_THREADS="1")
        for a, b in zip(got, best):  # FMA contraction may differ by ISA: a float32 rounding or two
            tol = dict(atol=1e-2, rtol=8e-3) if a.dtype == torch.bfloat16 else dict(atol=2e-6, rtol=2e-6)
            torch.testing.assert_close(a, b, **tol)
        for a, b in zip(sums, best_sums):  # sums of bf16 values, each of which may round the other way
            torch.testing.assert_close(a, b, atol=2e-2 * b.abs().max().item(), rtol=8e-3)
    one, one_sums = run_with(tmp_path, "best1", OMP_NUM_THREADS="1")
    assert all(torch.equal(a, b) for a, b in zip(one + one_sums, best + best_sums))


@pytest.mark.parametrize("device", DEVICES)
def test_bad_arguments_name_them(device):
    f = torch.randn(3, 6, device=device)
    with pytest.raises(ValueError, match="with glu, f's last dimension \\(5\\) must be even"):
        A.activation(torch.randn(3, 5, device=device), True, False)
    with pytest.raises(ValueError, match="f must be float32, bfloat16, float16 or float64, got Long"):
        A.activation(torch.ones(3, 4, dtype=torch.long, device=device), False, False)
    with pytest.raises(ValueError, match="f must have at least one dimension"):
        A.activation(torch.tensor(1.0, device=device), False, False)
    with pytest.raises(ValueError, match=r"grad must have shape \[3, 3\]"):
        A.activation_backward(torch.randn(3, 6, device=device), f, True, False)
    with pytest.raises(ValueError, match="grad \\(BFloat16\\) must have f's dtype \\(Float\\)"):
        A.activation_backward(torch.randn(3, 6, dtype=torch.bfloat16, device=device), f, False, False)
    with pytest.raises(ValueError, match=r"activation_backward_recompute_: grad must have shape \[3, 3\]"):
        A.activation_backward_recompute_(torch.randn(3, 6, device=device), f.clone(), True, False)

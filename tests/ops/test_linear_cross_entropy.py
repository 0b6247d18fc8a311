"""Fused linear cross-entropy against F.cross_entropy(F.linear(h, W, b), t)."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import arwrap_cpp
from arwrap_cpp import cross_entropy, linear_cross_entropy
from conftest import DEVICES
from op_references import reference_cross_entropy as ref


def make(shape, D, V, dtype=torch.float32, bias=True, ignore_frac=0.1):
    h = torch.randn(*shape, D, dtype=torch.float64).to(dtype)
    W = (torch.randn(V, D, dtype=torch.float64) / D**0.5).to(dtype)
    b = (torch.randn(V, dtype=torch.float64) * 0.1).to(dtype) if bias else None
    t = torch.randint(0, V, shape)
    t[torch.rand(shape) < ignore_frac] = -100
    return h, W, b, t


def run(fn, h, W, b, upstream=None, need=(True, True, True)):
    hh = h.detach().clone().requires_grad_(need[0])
    WW = W.detach().clone().requires_grad_(need[1])
    bb = b.detach().clone().requires_grad_(need[2]) if b is not None else None
    out = fn(hh, WW, bb)
    inputs = [x for x in (hh, WW, bb) if x is not None and x.requires_grad]
    grads = torch.autograd.grad(out, inputs, upstream if upstream is not None else torch.ones_like(out))
    it = iter(grads)
    return out.detach(), tuple(next(it) if (x is not None and x.requires_grad) else None for x in (hh, WW, bb))


def reference(h, W, b, t, **kw):
    return ref(F.linear(h.double(), W.double(), b.double() if b is not None else None), t, **kw)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_reference_odd_shapes(dtype, tol, reduction, bias):
    h, W, b, t = make((257,), 131, 1009, dtype, bias)
    up = torch.randn(257, dtype=torch.float64) if reduction == "none" else torch.tensor(0.7, dtype=torch.float64)
    ldt = torch.float64 if dtype == torch.float64 else torch.float32
    kw = dict(reduction=reduction)
    loss, g = run(lambda h_, W_, b_: linear_cross_entropy(h_, W_, t, bias=b_, **kw), h, W, b, up.to(ldt))
    rloss, rg = run(lambda h_, W_, b_: reference(h_, W_, b_, t, **kw), h.double(), W.double(),
                    b.double() if b is not None else None, up)
    assert (loss.double() - rloss).abs().max() <= tol * rloss.abs().max().clamp(min=1)
    for a, r in zip(g, rg):
        if r is None:
            assert a is None
            continue
        assert a.dtype == dtype
        assert (a.double() - r).abs().max() <= tol * r.abs().max().clamp(min=1e-6) * 10


@pytest.mark.parametrize("opts", [dict(label_smoothing=0.1), dict(z_loss_weight=1e-3), dict(ignore_index=3)])
def test_options(opts):
    h, W, b, t = make((4, 33), 48, 97, torch.float64)
    t[0, :4] = 3
    if opts.get("ignore_index") == 3:
        t[t == -100] = 5
    loss, g = run(lambda h_, W_, b_: linear_cross_entropy(h_, W_, t, bias=b_, **opts), h, W, b)
    rloss, rg = run(lambda h_, W_, b_: reference(h_, W_, b_, t, **opts), h, W, b)
    torch.testing.assert_close(loss, rloss)
    for a, r in zip(g, rg):
        torch.testing.assert_close(a, r)


def test_all_targets_ignored():
    h, W, b, t = make((5, 7), 16, 40)
    t[:] = -100
    loss, g = run(lambda h_, W_, b_: linear_cross_entropy(h_, W_, t, bias=b_), h, W, b)
    assert loss.item() == 0.0 and all(torch.all(x == 0) for x in g)


@pytest.mark.parametrize("need", [(True, False, False), (False, True, False), (False, False, True), (True, True, False)])
def test_only_some_inputs_require_grad(need):
    h, W, b, t = make((19,), 24, 53, torch.float64)
    _, g = run(lambda h_, W_, b_: linear_cross_entropy(h_, W_, t, bias=b_), h, W, b, need=need)
    _, rg = run(lambda h_, W_, b_: reference(h_, W_, b_, t), h, W, b, need=need)
    for a, r in zip(g, rg):
        assert (a is None) == (r is None)
        if a is not None:
            torch.testing.assert_close(a, r)


def test_gradient_accumulation_scaling_and_retain_graph():
    h, W, b, t = make((31,), 16, 70, torch.float64)
    hh = h.clone().requires_grad_(True)
    loss = linear_cross_entropy(hh, W, t, bias=b)
    (loss / 4).backward(retain_graph=True)
    g1 = hh.grad.clone()
    (loss * 3).backward()
    r = reference(h.clone().requires_grad_(True), W, b, t)
    gr = torch.autograd.grad(r, [])[0] if False else None
    hr = h.clone().requires_grad_(True)
    rr = reference(hr, W, b, t)
    (rr / 4).backward(retain_graph=True)
    torch.testing.assert_close(g1, hr.grad)
    (rr * 3).backward()
    torch.testing.assert_close(hh.grad, hr.grad)
    del gr


def test_bf16_inputs():
    h, W, b, t = make((3, 41), 64, 211, torch.bfloat16)
    loss, g = run(lambda h_, W_, b_: linear_cross_entropy(h_, W_, t, bias=b_), h, W, b)
    rloss, rg = run(lambda h_, W_, b_: reference(h_, W_, b_, t), h.double(), W.double(), b.double())
    assert abs(loss.double() - rloss) <= 2e-2 * abs(rloss)
    for a, r in zip(g, rg):
        assert a.dtype == torch.bfloat16
        assert (a.double() - r).abs().max() <= 3e-2 * r.abs().max()


def test_matches_fused_cross_entropy_on_materialised_logits():
    h, W, b, t = make((8, 9), 32, 300)
    a = linear_cross_entropy(h, W, t, bias=b, label_smoothing=0.05)
    c = cross_entropy(F.linear(h, W, b), t, label_smoothing=0.05)
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)


def test_many_tiles():
    # enough rows for several row tiles (the tile height is at least 64 rows)
    h, W, b, t = make((700,), 8, 2000, torch.float64)
    loss, g = run(lambda h_, W_, b_: linear_cross_entropy(h_, W_, t, bias=b_), h, W, b)
    rloss, rg = run(lambda h_, W_, b_: reference(h_, W_, b_, t), h, W, b)
    torch.testing.assert_close(loss, rloss)
    for a, r in zip(g, rg):
        torch.testing.assert_close(a, r)


def test_return_lse():
    h, W, b, t = make((6,), 10, 30, torch.float64)
    hh = h.clone().requires_grad_(True)
    loss, lse = linear_cross_entropy(hh, W, t, bias=b, return_lse=True)
    torch.testing.assert_close(lse, torch.logsumexp(F.linear(h, W, b), -1))
    (loss + lse.square().sum()).backward()
    hr = h.clone().requires_grad_(True)
    z = F.linear(hr, W, b)
    (ref(z, t) + torch.logsumexp(z, -1).square().sum()).backward()
    torch.testing.assert_close(hh.grad, hr.grad)


def test_bad_input_names_the_argument():
    h, W, b, t = make((4,), 8, 10)
    with pytest.raises(ValueError, match="weight must be \\(V, D\\)"):
        linear_cross_entropy(h, W[:, :5], t)
    with pytest.raises(ValueError, match="weight must have hidden's dtype"):
        linear_cross_entropy(h, W.double(), t)
    with pytest.raises(ValueError, match="bias must be \\(V,\\)"):
        linear_cross_entropy(h, W, t, bias=b[:3])
    with pytest.raises(ValueError, match="target must have the shape"):
        linear_cross_entropy(h, W, t[:2])
    with pytest.raises(ValueError, match="target must be int64"):
        linear_cross_entropy(h, W, t.int())
    with pytest.raises(IndexError, match="target must be in \\[0, 10\\)"):
        linear_cross_entropy(h, W, torch.tensor([0, 1, 10, 2]))
    with pytest.raises(ValueError, match="hidden must be float32"):
        linear_cross_entropy(h.long(), W, t)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_opcheck_and_gradcheck(reduction):
    h, W, b, t = make((3, 4), 5, 7, torch.float64)
    args = (h.requires_grad_(), W.requires_grad_(), b.requires_grad_(), t, -100, reduction, 0.1, 1e-3, False)
    torch.library.opcheck(torch.ops.arwrap.linear_cross_entropy.default, args)
    torch.library.opcheck(torch.ops.arwrap.linear_cross_entropy.default, (*args[:-1], True))
    red = {"none": 0, "mean": 1, "sum": 2}[reduction]
    hd, Wd, bd = h.detach(), W.detach(), b.detach()
    if red:
        torch.library.opcheck(torch.ops.arwrap.linear_cross_entropy_forward.default,
                              (hd, Wd, bd, t, -100, red, 0.0, 0.0, [True, True, True]))
    gl = torch.ones(()) if red else torch.ones(3, 4, dtype=torch.float64)
    torch.library.opcheck(torch.ops.arwrap.linear_cross_entropy_backward.default,
                          (gl.double(), None, hd, Wd, bd, t, -100, red, 0.0, 0.0, [True, False, True]))
    fn = lambda h_, W_, b_: linear_cross_entropy(h_, W_, t, bias=b_, reduction=reduction, z_loss_weight=0.01)
    assert torch.autograd.gradcheck(fn, (h, W, b))
    fn2 = lambda h_, W_, b_: linear_cross_entropy(h_, W_, t, bias=b_, reduction=reduction, return_lse=True)
    assert torch.autograd.gradcheck(fn2, (h, W, b))


def test_torch_compile_fullgraph():
    h, W, b, t = make((6, 5), 12, 40)

    def f(h_, W_, b_):
        return linear_cross_entropy(torch.tanh(h_), W_, t, bias=b_)

    c = torch.compile(f, fullgraph=True, backend="aot_eager")
    a, ga = run(c, h, W, b)
    r, gr = run(f, h, W, b)
    torch.testing.assert_close(a, r)
    for x, y in zip(ga, gr):
        torch.testing.assert_close(x, y)


class ScriptedHead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(12, 40)

    def forward(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        loss, lse = torch.ops.arwrap.linear_cross_entropy(h, self.proj.weight, self.proj.bias, t, -100, "mean", 0.0,
                                                          0.0, False)
        return loss


def test_torchscript(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        m = torch.jit.script(ScriptedHead())
        m.save(str(tmp_path / "head.pt"))
        loaded = torch.jit.load(str(tmp_path / "head.pt"))
    h = torch.randn(5, 12)
    t = torch.randint(0, 40, (5,))
    loss = loaded(h, t)
    torch.testing.assert_close(loss, F.cross_entropy(F.linear(h, m.proj.weight, m.proj.bias), t))
    loss.backward()
    assert loaded.proj.weight.grad is not None


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_device_generic_path_used_on_cuda(reduction, dtype):
    """The CUDA kernel of linear_cross_entropy is built from dispatched operators; the same
    code runs here on the CPU (as _..._generic) so it is checked without a GPU."""
    h, W, b, t = make((300,), 24, 700, dtype)
    red = {"none": 0, "mean": 1, "sum": 2}[reduction]
    ld = torch.float64 if dtype == torch.float64 else torch.float32
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    # loss and lse
    loss, lse, *_ = torch.ops.arwrap._linear_cross_entropy_forward_generic(h, W, b, t, -100, red, 0.1, 1e-3,
                                                                          [False, False, False])
    rloss = reference(h, W, b, t, reduction=reduction, label_smoothing=0.1, z_loss_weight=1e-3)
    torch.testing.assert_close(loss.double(), rloss, rtol=tol, atol=tol)
    torch.testing.assert_close(lse.double(), torch.logsumexp(F.linear(h.double(), W.double(), b.double()), -1),
                               rtol=tol, atol=tol)
    # gradients, for an upstream gradient and a gradient through lse
    up = torch.randn(300, dtype=torch.float64) if reduction == "none" else torch.tensor(0.3, dtype=torch.float64)
    glse = torch.randn(300, dtype=torch.float64)
    gh, gw, gb = torch.ops.arwrap._linear_cross_entropy_backward_generic(
        up.to(ld), glse.to(ld), h, W, b, t, -100, red, 0.1, 1e-3, [True, True, True])
    hh, WW, bb = (x.double().requires_grad_(True) for x in (h, W, b))
    z = F.linear(hh, WW, bb)
    r = reference(hh, WW, bb, t, reduction=reduction, label_smoothing=0.1, z_loss_weight=1e-3)
    torch.autograd.backward([r, torch.logsumexp(z, -1)], [up, glse])
    for a, ref_g in zip((gh, gw, gb), (hh.grad, WW.grad, bb.grad)):
        assert (a.double() - ref_g).abs().max() <= tol * 10 * ref_g.abs().max()
    if reduction != "none":
        _, _, fgh, fgw, fgb = torch.ops.arwrap._linear_cross_entropy_forward_generic(
            h, W, b, t, -100, red, 0.1, 1e-3, [True, True, False])
        gh1, gw1, _ = torch.ops.arwrap._linear_cross_entropy_backward_generic(
            torch.ones((), dtype=ld), None, h, W, b, t, -100, red, 0.1, 1e-3, [True, True, False])
        torch.testing.assert_close(fgh, gh1)
        torch.testing.assert_close(fgw, gw1)
        assert fgb.numel() == 0


def test_device_generic_path_all_ignored_and_bf16():
    h, W, b, t = make((70,), 16, 90, torch.bfloat16)
    t[:] = -100
    loss, _, gh, gw, gb = torch.ops.arwrap._linear_cross_entropy_forward_generic(h, W, b, t, -100, 1, 0.0, 0.0,
                                                                                [True, True, True])
    assert loss.item() == 0.0 and torch.all(gh == 0) and torch.all(gw == 0) and gw.dtype == torch.bfloat16


# ---------------------------------------------------------------- on a GPU (from the former tests/test_cuda.py)

CUDA_TOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_cross_entropy_cuda_equals_cpu(dtype, reduction):
    N, D, V = 300, 64, 1009
    h = torch.randn(N, D).to(dtype)
    W = (torch.randn(V, D) / 8).to(dtype)
    b = (torch.randn(V) * 0.1).to(dtype)
    t = torch.randint(0, V, (N,))
    t[::5] = -100
    up = torch.randn(N) if reduction == "none" else torch.tensor(1.3)
    res = {}
    for dev in ("cpu", "cuda"):
        hh, WW, bb = (x.to(dev).clone().requires_grad_(True) for x in (h, W, b))
        loss = arwrap_cpp.linear_cross_entropy(hh, WW, t.to(dev), bias=bb, reduction=reduction)
        loss.backward(up.to(dev))
        res[dev] = [loss.detach().cpu().double()] + [x.grad.cpu().double() for x in (hh, WW, bb)]
    tol = CUDA_TOL[dtype] * 5
    for a, c in zip(res["cuda"], res["cpu"]):
        assert (a - c).abs().max() <= tol * c.abs().max().clamp(min=1e-6)


# ---------------------------------------------------------------- the bf16 weight gradient, float32 output


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


@pytest.mark.cuda
def test_cuda_torch_has_the_low_precision_product_with_float32_output():
    """The fast path of fix 1 on this GPU's torch: bf16 x bf16 -> float32 (addmm.dtype_out
    accumulating into a float32 buffer). If this fails, the kernels fall back to the
    float32 upcast (correct, slower): record it in the results."""
    a = torch.randn(64, 32, device="cuda").bfloat16()
    b = torch.randn(32, 48, device="cuda").bfloat16()
    acc = torch.ones(64, 48, device="cuda")
    torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    torch.testing.assert_close(acc, 1 + a.float() @ b.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [40, 700])
def test_the_thread_count_is_the_callers_after_the_call(rows):
    """The tile products run single-threaded in fixed row blocks (thread-count determinism); the
    one-block case runs inline in the caller's thread: its OpenMP setting must come back."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        h, W, b, t = make((rows,), 24, 300, torch.float32)
        h.requires_grad_(True)
        arwrap_cpp.linear_cross_entropy(h, W, t, bias=b).backward()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

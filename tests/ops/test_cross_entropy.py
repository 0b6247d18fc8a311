"""Fused cross-entropy: against float64, PyTorch and x-transformers' own cross_entropy
(the operator machinery, opcheck, gradcheck, compile and TorchScript: test_cross_entropy_operator.py)."""
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import arwrap_cpp
from arwrap_cpp import cross_entropy
from conftest import DEVICES
from op_references import reference_cross_entropy as ref

ROOT = Path(__file__).resolve().parents[2]
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def make(shape, V, dtype=torch.float32, device="cpu", ignore_frac=0.1, scale=3.0):
    logits = (torch.randn(*shape, V, dtype=torch.float64) * scale).to(dtype).to(device)
    target = torch.randint(0, V, shape, device=device)
    target[torch.rand(shape, device=device) < ignore_frac] = -100
    return logits, target


def grads(fn, logits, upstream=None):
    x = logits.detach().clone().requires_grad_(True)
    out = fn(x)
    out.backward(upstream if upstream is not None else torch.ones_like(out))
    return out.detach(), x.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape,V", [((7, 13), 1009), ((257,), 131), ((3, 5), 1), ((2, 3), 2), ((5,), 4099)])
def test_matches_float64_reference(device, dtype, reduction, shape, V):
    logits, target = make(shape, V, dtype, device)
    up = torch.randn(shape, dtype=torch.float64, device=device) if reduction == "none" else torch.tensor(1.7, dtype=torch.float64, device=device)
    ldt = torch.float64 if dtype == torch.float64 else torch.float32
    loss, g = grads(lambda x: cross_entropy(x, target, reduction=reduction), logits, up.to(ldt))
    rloss, rg = grads(lambda x: ref(x, target, reduction=reduction), logits.double(), up)
    assert loss.dtype == ldt
    tol = TOL[dtype]
    scale = rloss.abs().max().clamp(min=1.0)
    assert (loss.double() - rloss).abs().max() <= tol * scale
    gscale = rg.abs().max().clamp(min=1e-3)
    assert g.dtype == dtype
    assert (g.double() - rg).abs().max() <= tol * gscale * 4


@pytest.mark.parametrize("label_smoothing,z_loss_weight", [(0.1, 0.0), (0.0, 1e-4), (0.3, 1e-2)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_label_smoothing_and_z_loss(label_smoothing, z_loss_weight, reduction):
    logits, target = make((9, 11), 333)
    kw = dict(reduction=reduction, label_smoothing=label_smoothing, z_loss_weight=z_loss_weight)
    up = torch.randn(9, 11, dtype=torch.float64) if reduction == "none" else None
    loss, g = grads(lambda x: cross_entropy(x, target, **kw), logits.double(), up)
    rloss, rg = grads(lambda x: ref(x, target, **kw), logits.double(), up)
    torch.testing.assert_close(loss, rloss, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g, rg, rtol=1e-9, atol=1e-10)
    if z_loss_weight == 0.0:  # PyTorch's own label smoothing agrees
        pt = F.cross_entropy(logits.double().flatten(0, 1), target.flatten(), reduction=reduction,
                             label_smoothing=label_smoothing)
        torch.testing.assert_close(loss.flatten() if reduction == "none" else loss, pt)
    f32loss, f32g = grads(lambda x: cross_entropy(x, target, **kw), logits, up.float() if up is not None else None)
    torch.testing.assert_close(f32loss.double(), rloss, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(f32g.double(), rg, rtol=1e-4, atol=1e-6)


def test_matches_x_transformers_cross_entropy():
    from x_transformers.autoregressive_wrapper import cross_entropy as xt_cross_entropy

    logits, target = make((3, 37), 517)
    ours, g = grads(lambda x: cross_entropy(x, target), logits)
    theirs, tg = grads(lambda x: xt_cross_entropy(rearrange(x, "b n c -> b c n"), target, ignore_index=-100), logits)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g, tg, rtol=1e-4, atol=1e-7)


def test_confident_predictions_keep_precision():
    """Loss below 1e-7 must stay accurate (x-transformers' softplus trick) and so must the
    true-class gradient (p_t - 1 cancels in float32)."""
    V = 32000
    for margin in [12.0, 20.0, 25.0, 30.0]:
        logits = torch.randn(6, V) * 0.5
        target = torch.randint(0, V, (6,))
        logits[torch.arange(6), target] = margin + logits.max()
        loss, g = grads(lambda x: cross_entropy(x, target, reduction="sum"), logits)
        rloss, rg = grads(lambda x: ref(x, target, reduction="sum"), logits.double())
        assert abs(loss.double() - rloss) / rloss < 1e-3, (margin, loss.item(), rloss.item())
        gt, rgt = g[torch.arange(6), target].double(), rg[torch.arange(6), target]
        assert ((gt - rgt).abs() / rgt.abs()).max() < 1e-3
    # and far below float32's epsilon: PyTorch's float32 loss is 0 (or wrong) here
    logits = torch.zeros(2, 1000)
    logits[:, 3] = 25.0
    target = torch.tensor([3, 3])
    loss = cross_entropy(logits, target)
    r = ref(logits, target)
    assert r < 1e-7 and abs(loss.double() - r) / r < 1e-3


def test_all_targets_ignored_gives_zero_not_nan():
    logits, target = make((4, 6), 50)
    target[:] = -100
    for reduction in ["mean", "sum", "none"]:
        loss, g = grads(lambda x: cross_entropy(x, target, reduction=reduction, label_smoothing=0.1, z_loss_weight=1e-4), logits)
        assert torch.all(loss == 0) and torch.all(g == 0)
    # the documented difference: PyTorch gives NaN here
    assert torch.isnan(F.cross_entropy(logits.flatten(0, 1), target.flatten()))


def test_ignore_index_other_than_default():
    logits, target = make((5, 7), 20, ignore_frac=0.0)
    target[0, :3] = 0
    loss = cross_entropy(logits, target, ignore_index=0)
    r = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=0)
    torch.testing.assert_close(loss, r)


def test_non_contiguous_logits_view():
    """The wrapper's logits[:, :-1] view, and a transposed batch."""
    full, _ = make((3, 17), 301)
    target = torch.randint(0, 301, (3, 16))
    view = full[:, :-1]
    assert not view.is_contiguous()
    loss, g = grads(lambda x: cross_entropy(x[:, :-1], target), full)
    rloss, rg = grads(lambda x: ref(x[:, :-1], target), full.double())
    torch.testing.assert_close(loss.double(), rloss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.double(), rg, rtol=1e-4, atol=1e-7)
    assert torch.all(g[:, -1] == 0)
    t2 = full.transpose(0, 1)  # (17, 3, V), leading strides swapped
    tt = torch.randint(0, 301, (17, 3))
    torch.testing.assert_close(cross_entropy(t2, tt), F.cross_entropy(t2.reshape(-1, 301), tt.reshape(-1)))
    # a vocabulary stride != 1 is copied, not rejected
    vs = full.transpose(1, 2)[..., :5].transpose(1, 2)  # (3, 17, 5) with last-dim stride != 1? make one
    w = torch.randn(5, 4).t()  # (4, 5), stride (1, 4)
    torch.testing.assert_close(cross_entropy(w, torch.tensor([0, 1, 2, 3])), F.cross_entropy(w, torch.tensor([0, 1, 2, 3])))
    del vs


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_backward_gives_same_gradient_in_logits_buffer(reduction, dtype):
    _, target = make((6, 9), 777, dtype)
    up = torch.randn(6, 9) if reduction == "none" else torch.tensor(0.37)
    h = torch.randn(6, 9, 16, dtype=dtype, requires_grad=True)
    w = torch.randn(777, 16, dtype=dtype) * 0.2
    # logits produced by a linear layer, as in a model; backward flows through them
    lg = h @ w.t()
    lg_data = lg.detach().clone()
    ptr = lg.data_ptr()
    loss = cross_entropy(lg, target, reduction=reduction, inplace_backward=True)
    loss.backward(up)
    hg_ref = torch.autograd.grad(cross_entropy(h @ w.t(), target, reduction=reduction), h, up)[0]
    atol = 1e-5 if dtype == torch.float32 else 2e-2 * hg_ref.abs().max().item()
    torch.testing.assert_close(h.grad, hg_ref, atol=atol, rtol=1e-3)
    # the logits buffer itself now holds the gradient
    ref_loss, g = grads(lambda x: cross_entropy(x, target, reduction=reduction), lg_data, up)
    assert lg.data_ptr() == ptr
    torch.testing.assert_close(lg.detach(), g)
    torch.testing.assert_close(loss.detach(), ref_loss)


def test_inplace_backward_guards_logits_saved_by_another_node():
    """Logits clobbered in place must not silently corrupt a node that saved them."""
    z = torch.randn(4, 50, requires_grad=True)
    logits = z.exp()  # exp saves its output
    target = torch.randint(0, 50, (4,))
    loss = cross_entropy(logits, target, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_inplace_backward_second_backward_is_refused_not_wrong():
    z = torch.randn(4, 50)
    h = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(50, 8)
    loss = cross_entropy(h @ w.t(), torch.randint(0, 50, (4,)), inplace_backward=True) * 3.0
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already rescaled"):
        loss.backward()
    del z


def test_no_grad_does_not_touch_logits():
    logits, target = make((4, 5), 30)
    keep = logits.clone()
    x = logits.clone().requires_grad_(True)
    with torch.no_grad():
        loss = cross_entropy(x, target, inplace_backward=True)
    torch.testing.assert_close(x.detach(), keep)
    torch.testing.assert_close(loss, F.cross_entropy(keep.flatten(0, 1), target.flatten()))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_return_lse_is_differentiable(reduction):
    logits, target = make((5, 6), 41)
    x = logits.double().requires_grad_(True)
    loss, lse = cross_entropy(x, target, reduction=reduction, return_lse=True)
    torch.testing.assert_close(lse, torch.logsumexp(x, -1))
    (loss.sum() + (lse**2).sum() * 0.3).backward()
    y = logits.double().requires_grad_(True)
    (ref(y, target, reduction=reduction).sum() + (torch.logsumexp(y, -1) ** 2).sum() * 0.3).backward()
    torch.testing.assert_close(x.grad, y.grad)


def test_large_vocabulary():
    logits, target = make((3,), 128256, ignore_frac=0.0)
    loss, g = grads(lambda x: cross_entropy(x, target), logits)
    rloss, rg = grads(lambda x: ref(x, target), logits.double())
    torch.testing.assert_close(loss.double(), rloss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g.double(), rg, rtol=1e-4, atol=1e-9)


def test_bitwise_deterministic_across_thread_counts():
    logits, target = make((64, 33), 2003)
    old = torch.get_num_threads()
    try:
        outs = []
        for n in [1, 2, 3]:
            torch.set_num_threads(n)
            outs.append(grads(lambda x: cross_entropy(x, target, label_smoothing=0.1, z_loss_weight=1e-4), logits))
    finally:
        torch.set_num_threads(old)
    for loss, g in outs[1:]:
        assert torch.equal(loss, outs[0][0]) and torch.equal(g, outs[0][1])


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_other_instruction_sets_agree(isa):
    """The AVX2 and baseline builds of the row kernels (picked at run time) are correct too."""
    code = textwrap.dedent(
        """
        import torch, arwrap_cpp, sys
        sys.path.insert(0, %r)
        from op_references import reference_cross_entropy as ref
        torch.manual_seed(1)
        z = torch.randn(37, 3001) * 4; t = torch.randint(0, 3001, (37,)); t[::5] = -100
        x = z.clone().requires_grad_(True); l = arwrap_cpp.cross_entropy(x, t, label_smoothing=0.1); l.backward()
        y = z.double().requires_grad_(True); r = ref(y, t, label_smoothing=0.1); r.backward()
        assert abs(l.item() - r.item()) < 1e-5, (l.item(), r.item())
        assert (x.grad.double() - y.grad).abs().max() < 1e-7
        print("ok")
        """
        % (str(__import__("pathlib").Path(__file__).parent),)
    )
    import os

    env = dict(os.environ, ARWRAP_CPU_ISA=isa)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize(
    "make_args,error,match",
    [
        (lambda: (torch.randn(3, 5), torch.tensor([0, 1, 5])), IndexError, r"target must be in \[0, 5\)"),
        (lambda: (torch.randn(3, 5), torch.tensor([0, -1, 2])), IndexError, r"target must be in \[0, 5\)"),
        (lambda: (torch.randn(3, 5), torch.tensor([0, 1, 2], dtype=torch.int32)), ValueError, "target must be int64"),
        (lambda: (torch.randint(0, 3, (3, 5)), torch.tensor([0, 1, 2])), ValueError, "logits must be float32"),
        (lambda: (torch.randn(3, 5), torch.tensor([0, 1])), ValueError, "target must have the shape of logits"),
        (lambda: (torch.randn(3, 5), torch.zeros(3, 1, dtype=torch.long)), ValueError,
         "target must have the shape of logits"),
        (lambda: (torch.randn(()), torch.tensor(0)), ValueError, "at least 1 dimension"),
        (lambda: (torch.randn(3, 0), torch.zeros(3, dtype=torch.long)), ValueError, "vocabulary"),
    ],
)
def test_bad_input_names_the_argument(make_args, error, match):
    logits, target = make_args()
    with pytest.raises(error, match=match):
        cross_entropy(logits, target)


def test_bad_options():
    logits, target = make((3,), 5)
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(logits, target, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy(logits, target, label_smoothing=1.5)
    with pytest.raises(ValueError, match="z_loss_weight"):
        cross_entropy(logits, target, z_loss_weight=-1.0)


def test_out_of_range_target_leaves_logits_untouched():
    logits = torch.randn(4, 10)
    keep = logits.clone()
    x = logits.clone().requires_grad_(True)
    lg = x * 1.0
    with pytest.raises(IndexError, match=r"target must be in \[0, 10\)"):
        cross_entropy(lg, torch.tensor([1, 2, 99, 3]), inplace_backward=True)
    torch.testing.assert_close(lg.detach(), keep)


@pytest.mark.cuda
def test_mismatched_devices():
    with pytest.raises(ValueError, match="same device"):
        cross_entropy(torch.randn(3, 5, device="cuda"), torch.tensor([0, 1, 2]))


def test_mismatched_devices_meta():
    with pytest.raises(ValueError, match="same device"):
        cross_entropy(torch.randn(3, 5, device="meta"), torch.tensor([0, 1, 2]))


def test_single_row_and_empty_batch():
    z = torch.randn(11, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(4)
    loss = cross_entropy(z, t)
    torch.testing.assert_close(loss, F.cross_entropy(z, t))
    loss.backward()
    torch.testing.assert_close(z.grad, torch.autograd.grad(F.cross_entropy(z, t), z)[0])
    e = torch.randn(0, 7, requires_grad=True)
    le = cross_entropy(e, torch.zeros(0, dtype=torch.long))
    assert le.item() == 0.0
    le.backward()
    assert e.grad.shape == (0, 7)
    assert cross_entropy(e, torch.zeros(0, dtype=torch.long), reduction="none").shape == (0,)


# ---------------------------------------------------------------- on a GPU (from the former tests/test_cuda.py)

CUDA_TOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("V", [1, 7, 1009, 32000, 128256])
@pytest.mark.parametrize("inplace", [False, True])
def test_cross_entropy_cuda_equals_cpu(dtype, reduction, V, inplace):
    rows = 37 if V < 100000 else 5
    z = (torch.randn(rows, V, dtype=torch.float64) * 3).to(dtype)
    t = torch.randint(0, V, (rows,))
    t[::4] = -100
    up = torch.randn(rows) if reduction == "none" else torch.tensor(0.7)
    ldt = torch.float64 if dtype == torch.float64 else torch.float32
    out = {}
    for dev in ("cpu", "cuda"):
        x = z.to(dev).clone().requires_grad_(True)
        lg = x * 1  # a non-leaf, as in a model
        loss = arwrap_cpp.cross_entropy(lg, t.to(dev), reduction=reduction, label_smoothing=0.05,
                                        z_loss_weight=1e-4, inplace_backward=inplace)
        loss.backward(up.to(dev, ldt))
        out[dev] = (loss.detach().cpu().double(), x.grad.cpu().double())
    r = ref(z.double(), t, reduction=reduction, label_smoothing=0.05, z_loss_weight=1e-4)
    tol = CUDA_TOL[dtype]
    assert (out["cuda"][0] - r).abs().max() <= tol * r.abs().max().clamp(min=1)
    g_scale = out["cpu"][1].abs().max().clamp(min=1e-6)
    assert (out["cuda"][1] - out["cpu"][1]).abs().max() <= 4 * tol * g_scale


@pytest.mark.cuda
def test_cross_entropy_cuda_all_ignored_and_bad_targets(monkeypatch):
    # the host check and its IndexError (the default asserts on the device instead:
    # tests/ops/test_sync_checks.py checks that in a child process)
    monkeypatch.setenv("ARWRAP_SYNC_CHECKS", "1")
    z = torch.randn(4, 10, device="cuda", requires_grad=True)
    loss = arwrap_cpp.cross_entropy(z, torch.full((4,), -100, device="cuda"))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(z.grad == 0)
    with pytest.raises(IndexError, match=r"target must be in \[0, 10\)"):
        arwrap_cpp.cross_entropy(torch.randn(3, 10, device="cuda"), torch.tensor([1, 10, 2], device="cuda"))
    with pytest.raises(ValueError, match="same device"):
        arwrap_cpp.cross_entropy(torch.randn(3, 10, device="cuda"), torch.tensor([1, 2, 3]))


@pytest.mark.cuda
def test_cross_entropy_cuda_64bit_indexing():
    """rows x V > 2^31 elements: 64-bit offsets in the kernel."""
    rows, V = 16800, 128256  # 2.15e9 elements, 4.3 GB in bf16
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs a GPU with 24 GiB or more")
    z = torch.randn(rows, V, device="cuda", dtype=torch.bfloat16)
    t = torch.randint(0, V, (rows,), device="cuda")
    loss = arwrap_cpp.cross_entropy(z, t, reduction="none")
    # reference, one chunk at a time in float32
    r = torch.cat([F.cross_entropy(c.float(), tc, reduction="none") for c, tc in zip(z.split(2048), t.split(2048))])
    torch.testing.assert_close(loss, r, rtol=1e-3, atol=1e-3)
    assert torch.isfinite(loss[-1])


@pytest.mark.cuda
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_cuda_opcheck(reduction):
    z = torch.randn(4, 7, 23, device="cuda", requires_grad=True)
    t = torch.randint(0, 23, (4, 7), device="cuda")
    torch.library.opcheck(torch.ops.arwrap.cross_entropy.default, (z, t, -100, reduction, 0.1, 1e-3, False, False))


# ---------------------------------------------------------------- views, many leading dims, lse, above 2^31 (every device)


def _ce_reference_grads(z, t, up, **kw):
    zr = z.detach().double().cpu().requires_grad_(True)
    loss = ref(zr, t.cpu(), **kw)
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
    r = ref(zr, t.cpu(), reduction=reduction, z_loss_weight=1e-3)
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


@pytest.mark.cuda
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


# ---------------------------------------------------------------- the CUDA row sweep's index arithmetic

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


def test_meta_kernels_check_what_the_real_ones_check():
    """The Meta kernels are the real entries over sweeps that do nothing: the in-place
    variants refuse logits without unit stride, and the backward checks its arguments,
    on fake/meta tensors as on the CPU."""
    for device in ("cpu", "meta"):
        z = torch.randn(4, 10, device=device).t()  # stride(-1) != 1
        t = torch.zeros(10, dtype=torch.long, device=device)
        with pytest.raises(ValueError, match="inplace_backward needs logits with unit stride"):
            torch.ops.arwrap.cross_entropy_forward_grad_(z, t, -100, 1, 0.0, 0.0)
        zc = torch.randn(10, 4, device=device)
        lse = torch.zeros(10, device=device)
        with pytest.raises(ValueError, match="inplace_backward needs logits with unit stride"):
            torch.ops.arwrap.cross_entropy_backward_(torch.ones((), device=device), None, z, t, lse, -100, 1, 0.0, 0.0)
        g = torch.ones(3, device=device)  # a reduced loss takes a scalar upstream gradient
        with pytest.raises(ValueError, match="grad_loss"):
            torch.ops.arwrap.cross_entropy_backward(g, None, zc, t, lse, -100, 1, 0.0, 0.0)

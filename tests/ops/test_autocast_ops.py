"""The fused operators under torch.autocast (CPU bfloat16), as PyTorch's own operators
behave there: linear_cross_entropy runs its GEMMs in the autocast dtype (its inputs
are cast, as at::linear's are) with float32 loss, lse and parameter gradients;
attention_lse keeps float32 (a softmax statistic, as logsumexp); cross_entropy takes
the logits in their dtype and returns float32 statistics, as F.cross_entropy does."""
import pytest
import torch
import torch.nn.functional as F

import arwrap_cpp
from arwrap_cpp import cross_entropy, linear_cross_entropy

AUTOCAST = dict(device_type="cpu", dtype=torch.bfloat16)


def make(n=300, D=64, V=1000, bias=True):
    h = torch.randn(n, D)
    W = torch.randn(V, D) / D**0.5
    b = torch.randn(V) * 0.1 if bias else None
    t = torch.randint(0, V, (n,))
    t[::7] = -100
    return h, W, b, t


def leaves(*xs):
    return [x.detach().clone().requires_grad_() if x is not None else None for x in xs]


@pytest.mark.parametrize("bias", [True, False])
def test_linear_cross_entropy_runs_its_gemms_in_bfloat16(bias):
    """Under autocast: exactly the operator on bf16-rounded inputs (so the products ran
    in bf16), float32 loss, and float32 gradients for the float32 leaves."""
    h, W, b, t = make(bias=bias)
    hh, WW, bb = leaves(h, W, b)
    with torch.autocast(**AUTOCAST):
        loss = linear_cross_entropy(hh, WW, t, bias=bb)
    assert loss.dtype == torch.float32
    loss.backward()
    h2, W2, b2 = leaves(h.bfloat16(), W.bfloat16(), b.bfloat16() if bias else None)
    ref = linear_cross_entropy(h2, W2, t, bias=b2)
    ref.backward()
    assert torch.equal(loss, ref)
    for mine, theirs, leaf in [(hh.grad, h2.grad, hh), (WW.grad, W2.grad, WW)] + ([(bb.grad, b2.grad, bb)] if bias else []):
        assert mine.dtype == leaf.dtype == torch.float32
        assert torch.equal(mine, theirs.float())


def test_linear_cross_entropy_autocast_matches_the_aten_composition_and_float64():
    """Against F.cross_entropy(F.linear(...)) under autocast (PyTorch's own mixed
    precision) and the float64 reference: bf16 tolerance on the loss, cosine > 0.999
    on every gradient."""
    h, W, b, t = make(n=512, D=128, V=3000)
    ours, aten = leaves(h, W, b), leaves(h, W, b)
    with torch.autocast(**AUTOCAST):
        l1 = linear_cross_entropy(ours[0], ours[1], t, bias=ours[2])
        l2 = F.cross_entropy(F.linear(aten[0], aten[1], aten[2]), t)
    l1.backward()
    l2.backward()
    f64 = leaves(h.double(), W.double(), b.double())
    l3 = F.cross_entropy(F.linear(*f64), t)
    l3.backward()
    assert l1.item() == pytest.approx(l2.item(), rel=1e-2)
    assert l1.item() == pytest.approx(l3.item(), rel=1e-2)
    for a, x, r in zip(ours, aten, f64):
        assert F.cosine_similarity(a.grad.double().flatten(), r.grad.flatten(), dim=0) > 0.999
        assert F.cosine_similarity(a.grad.flatten(), x.grad.flatten(), dim=0) > 0.999


def test_linear_cross_entropy_autocast_leaves_float64_alone_and_gradchecks():
    """autocast casts floating point below float64 only: float64 passes through, so
    gradcheck holds inside an autocast region too."""
    h, W, b, t = make(n=12, D=5, V=7)
    args = [x.double().requires_grad_() for x in (h, W, b)]
    with torch.autocast(**AUTOCAST):
        assert linear_cross_entropy(*args[:2], t, bias=args[2]).dtype == torch.float64
        assert torch.autograd.gradcheck(lambda h_, W_, b_: linear_cross_entropy(h_, W_, t, bias=b_), args)


def test_linear_cross_entropy_outside_autocast_unchanged():
    h, W, b, t = make()
    before = linear_cross_entropy(h, W, t, bias=b)
    with torch.autocast(**AUTOCAST):
        pass
    with torch.autocast(device_type="cpu", enabled=False):
        assert torch.equal(linear_cross_entropy(h, W, t, bias=b), before)
    with torch.autocast(**AUTOCAST):
        assert not torch.equal(linear_cross_entropy(h, W, t, bias=b), before)  # bf16 products differ
    assert torch.equal(linear_cross_entropy(h, W, t, bias=b), before)


def test_linear_cross_entropy_autocast_in_torchscript_and_compile():
    """The autocast kernel sits on the dispatcher, so every caller gets it."""
    h, W, b, t = make(n=64, D=32, V=100)
    with torch.autocast(**AUTOCAST):
        eager = torch.ops.arwrap.linear_cross_entropy(h, W, b, t)[0]
    expected = torch.ops.arwrap.linear_cross_entropy(h.bfloat16(), W.bfloat16(), b.bfloat16(), t)[0]
    assert torch.equal(eager, expected)
    compiled = torch.compile(lambda h_, W_, b_: torch.ops.arwrap.linear_cross_entropy(h_, W_, b_, t)[0],
                             fullgraph=True, backend="aot_eager")
    with torch.autocast(**AUTOCAST):
        assert torch.equal(compiled(h, W, b), expected)


def test_cross_entropy_under_autocast_is_f_cross_entropy_under_autocast():
    """bf16 logits (what a bf16 head produces): float32 statistics from the exact
    upcast, the loss F.cross_entropy gives under autocast, gradient in the logits' dtype."""
    logits = (torch.randn(200, 500) * 3).bfloat16()
    t = torch.randint(0, 500, (200,))
    a = logits.clone().requires_grad_()
    r = logits.clone().requires_grad_()
    with torch.autocast(**AUTOCAST):
        mine = cross_entropy(a, t)
        theirs = F.cross_entropy(r, t)
    assert mine.dtype == theirs.dtype == torch.float32
    assert mine.item() == pytest.approx(theirs.item(), rel=1e-6)
    mine.backward()
    theirs.backward()
    assert a.grad.dtype == torch.bfloat16
    assert (a.grad.float() - r.grad.float()).abs().max() <= 2**-8 * r.grad.abs().max()


def test_attention_lse_keeps_float32_under_autocast():
    q, k = torch.randn(2, 3, 17, 8), torch.randn(2, 3, 17, 8)
    ref = torch.ops.arwrap.attention_lse(q, k, None, 0.3, True)
    qq, kk = leaves(q, k)
    with torch.autocast(**AUTOCAST):
        lse = torch.ops.arwrap.attention_lse(qq, kk, None, 0.3, True)
        # q, k as a bf16 product hands them over: cast up, float32 statistics of the bf16 values
        lse_low = torch.ops.arwrap.attention_lse(q.bfloat16(), k.bfloat16(), None, 0.3, True)
    assert lse.dtype == lse_low.dtype == torch.float32
    assert torch.equal(lse, ref)
    assert torch.equal(lse_low, torch.ops.arwrap.attention_lse(q.bfloat16().float(), k.bfloat16().float(), None, 0.3, True))
    lse.sum().backward()
    assert qq.grad.dtype == torch.float32

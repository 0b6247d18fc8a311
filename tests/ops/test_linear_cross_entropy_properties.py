"""Property-based tests (hypothesis) of the fused linear cross-entropy against the float64
reference built from torch.nn.functional, over random shapes, dtypes, ignore patterns,
options and requested gradients (the shared strategies: property_cases.py)."""
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from arwrap_cpp import linear_cross_entropy
from property_cases import (DTYPES, IGNORE, IGNORE_PATTERNS, LCE_TOL, REDUCTIONS, SMOOTHING, Z_LOSS, make_target, profile,
                            reference_loss)


@profile(300)
@given(
    seed=st.integers(0, 2**31 - 1),
    lead=st.sampled_from([(1,), (3,), (64,), (129,), (2, 9)]),
    D=st.integers(1, 48),
    V=st.one_of(st.integers(1, 8), st.integers(9, 3000)),
    dtype=DTYPES,
    bias=st.booleans(),
    pattern=IGNORE_PATTERNS,
    reduction=REDUCTIONS,
    label_smoothing=SMOOTHING,
    z_loss_weight=Z_LOSS,
    need=st.sampled_from([(True, True, True), (True, False, False), (False, True, True), (False, False, True)]),
    return_lse=st.booleans(),
)
def test_linear_cross_entropy_matches_float64_functional(seed, lead, D, V, dtype, bias, pattern, reduction,
                                                         label_smoothing, z_loss_weight, need, return_lse):
    gen = torch.Generator().manual_seed(seed)
    h0 = torch.randn(*lead, D, generator=gen, dtype=torch.float64).to(dtype)
    W0 = (torch.randn(V, D, generator=gen, dtype=torch.float64) * 2 / D**0.5).to(dtype)
    b0 = (torch.randn(V, generator=gen, dtype=torch.float64) * 0.5).to(dtype) if bias else None
    t = make_target(lead, V, pattern, IGNORE, gen)
    kw = dict(ignore_index=IGNORE, reduction=reduction, label_smoothing=label_smoothing, z_loss_weight=z_loss_weight)
    ldt = torch.float64 if dtype == torch.float64 else torch.float32
    if not bias:
        need = (need[0], need[1], False)
    if not any(need):
        need = (True, False, False)

    def leaves(cast):
        h = cast(h0).requires_grad_(need[0])
        W = cast(W0).requires_grad_(need[1])
        b = cast(b0).requires_grad_(need[2]) if b0 is not None else None
        return h, W, b, [x for x in (h, W, b) if x is not None and x.requires_grad]

    h, W, b, ins = leaves(lambda x: x.clone())
    out = linear_cross_entropy(h, W, t, bias=b, return_lse=return_lse, **kw)
    loss = out[0] if return_lse else out
    up = torch.randn(loss.shape, generator=gen, dtype=torch.float64) if reduction == "none" else torch.tensor(0.6, dtype=torch.float64)
    grads = torch.autograd.grad(loss, ins, up.to(ldt))

    h64, W64, b64, ins64 = leaves(lambda x: x.double())
    rloss = reference_loss(F.linear(h64, W64, b64), t, **kw)
    rgrads = torch.autograd.grad(rloss, ins64, up)

    assert loss.dtype == ldt and loss.shape == rloss.shape
    ltol, gtol = LCE_TOL[dtype]
    if int((t != IGNORE).sum()) == 0:
        assert torch.all(loss == 0) and all(torch.all(g == 0) for g in grads)
        return
    # bf16: the logits are bf16 (as in F.linear), and the gradients can cancel (dH = sum_j (p_j - [j = t]) W_j),
    # so the yardstick is PyTorch's own bf16 pipeline's error, plus a small tolerance
    yard_loss, yard_grads = 0.0, [0.0] * len(ins)
    if dtype == torch.bfloat16:
        hb, Wb, bb, insb = leaves(lambda x: x.clone())
        tl = reference_loss(F.linear(hb, Wb, bb).float(), t, **kw)
        tg = torch.autograd.grad(tl, insb, up.float())
        yard_loss = (tl.double() - rloss.detach()).abs().max().item()
        yard_grads = [(a.double() - r).abs().max().item() for a, r in zip(tg, rgrads)]
    err = (loss.double() - rloss.detach()).abs().max().item()
    assert err <= 2 * yard_loss + ltol * max(1.0, rloss.detach().abs().max().item()), (err, yard_loss)
    for x, g, rg, yard in zip(ins, grads, rgrads, yard_grads):
        assert g.dtype == x.dtype and g.shape == x.shape
        gerr = (g.double() - rg).abs().max().item()
        assert gerr <= 2 * yard + gtol * max(rg.abs().max().item(), 1e-6), (gerr, yard)

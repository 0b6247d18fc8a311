"""attention_lse (the attention z-loss's row log-sum-exp): against the full-matrix float64
reference, gradients, opcheck, torch.compile, its C++/Python faces and bad input."""
import pytest
import torch
from torch.library import opcheck

import arwrap_cpp
from conftest import DEVICES
from op_references import reference_attention_lse as reference_lse


def test_python_face_defaults_to_dim_head_scale():
    q = torch.randn(2, 3, 4, 16, dtype=torch.float64)
    k = torch.randn(2, 3, 6, 16, dtype=torch.float64)
    mask = torch.tensor([[True] * 6, [True, False, True, True, False, True]])
    got = arwrap_cpp.attention_lse(q, k, key_mask=mask, causal=True)
    torch.testing.assert_close(got, reference_lse(q, k, mask, 16**-0.5, True))
    torch.testing.assert_close(arwrap_cpp.attention_lse(q, k, scale=0.3), reference_lse(q, k, None, 0.3, False))
    with pytest.raises(ValueError, match="q must be"):
        arwrap_cpp.attention_lse(q[0], k)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("with_mask", [True, False])
def test_attention_lse_reference_gradcheck_opcheck(causal, with_mask):
    torch.manual_seed(0)
    b, h, nq, nk, d = 2, 3, 5, 7, 4
    q = torch.randn(b, h, nq, d, dtype=torch.float64, requires_grad=True)
    k = torch.randn(b, h, nk, d, dtype=torch.float64, requires_grad=True)
    mask = None
    if with_mask:
        mask = torch.rand(b, nk) > 0.3
        mask[:, 0] = True
    lse = torch.ops.arwrap.attention_lse(q, k, mask, 0.7, causal)
    assert torch.allclose(lse, reference_lse(q, k, mask, 0.7, causal))
    g = torch.randn_like(lse)
    dq, dk = torch.autograd.grad(lse, (q, k), g)
    rq, rk = torch.autograd.grad(reference_lse(q, k, mask, 0.7, causal), (q, k), g)
    assert torch.allclose(dq, rq) and torch.allclose(dk, rk)
    assert torch.autograd.gradcheck(lambda a, c: torch.ops.arwrap.attention_lse(a, c, mask, 0.7, causal), (q, k))
    opcheck(torch.ops.arwrap.attention_lse.default, (q.detach().float().requires_grad_(),
                                                      k.detach().float().requires_grad_(), mask, 0.7, causal))


def test_attention_lse_many_rows_in_blocks():
    """Rows beyond one block (the kernel recomputes scores in row blocks), float32 vs float64."""
    torch.manual_seed(1)
    q = torch.randn(1, 1, 3000, 8)
    k = torch.randn(1, 1, 3000, 8)
    lse = torch.ops.arwrap.attention_lse(q, k, None, 0.35, True)
    assert torch.allclose(lse.double(), reference_lse(q.double(), k.double(), None, 0.35, True), atol=1e-4)


def test_attention_lse_bad_input():
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="must agree"):
        torch.ops.arwrap.attention_lse(q, torch.randn(1, 2, 3, 5), None, 1.0, True)
    with pytest.raises(ValueError, match="key_mask"):
        torch.ops.arwrap.attention_lse(q, q, torch.ones(1, 4, dtype=torch.bool), 1.0, True)
    with pytest.raises(ValueError, match="more positions"):
        torch.ops.arwrap.attention_lse(torch.randn(1, 2, 5, 4), q, None, 1.0, True)


def test_attention_lse_bfloat16_accumulates_in_float32():
    torch.manual_seed(2)
    q, k = torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)
    qb, kb = q.bfloat16().requires_grad_(), k.bfloat16().requires_grad_()
    lse = torch.ops.arwrap.attention_lse(qb, kb, None, 0.5, True)
    assert lse.dtype == torch.float32
    ref = reference_lse(qb.detach().double(), kb.detach().double(), None, 0.5, True)
    assert torch.allclose(lse.double(), ref, atol=1e-5)
    dq, dk = torch.autograd.grad(lse.sum(), (qb, kb))
    assert dq.dtype == dk.dtype == torch.bfloat16


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

"""attention_lse (the attention z-loss's row log-sum-exp): against the full-matrix float64
reference, gradients, opcheck, torch.compile, its C++/Python faces and bad input."""
import pytest
import torch
from torch.library import opcheck

import arwrap_cpp
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

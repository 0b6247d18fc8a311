"""attention_lse's tiles over heads and rows, and its low-precision products, on every
device (the "cuda" cases carry the `cuda` marker: tests/conftest.py). They belong beside the
operator's other tests in test_attention_lse.py; they stand here until that file, which
issue 21's change is editing, takes them."""
import pytest
import torch

from conftest import DEVICES
from op_references import reference_attention_lse as reference_lse


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

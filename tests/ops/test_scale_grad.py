"""scale_grad_, the internal operator of the fused backwards' rescale (issue 16 part A,
finding 2), and the fused backward of
cross_entropy and linear_cross_entropy that uses it: in place on the first backward, from
the carried scale on a second one. Parametrised by device: the "cuda" cases carry the `cuda` marker
(tests/conftest.py) and are skipped, with the reason, without a GPU.
"""
import pytest
import torch
import torch.nn.functional as F

import arwrap_cpp
from conftest import DEVICES
from op_references import reference_cross_entropy as ref_ce



@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_scale_grad_scales_unless_one(device, dtype):
    g = torch.randn(5, 37, dtype=dtype, device=device)
    keep = g.clone()
    sd = torch.float64 if dtype == torch.float64 else torch.float32
    torch.ops.arwrap.scale_grad_(g, torch.tensor(1.0, dtype=sd, device=device))
    assert torch.equal(g, keep)
    torch.ops.arwrap.scale_grad_(g, torch.tensor(0.37, dtype=sd, device=device))
    torch.testing.assert_close(g, (keep.double() * 0.37).to(dtype))  # within one rounding of the dtype
    s = torch.randn(9, 40, dtype=dtype, device=device)[::2, 1:]  # strided
    keep = s.clone()
    torch.ops.arwrap.scale_grad_(s, torch.tensor([-2.0], dtype=sd, device=device))
    assert torch.equal(s, (keep * -2).to(dtype))


def test_scale_grad_bad_arguments_name_them():
    with pytest.raises(ValueError, match="scale must be a one-element"):
        torch.ops.arwrap.scale_grad_(torch.randn(3), torch.ones(2))
    with pytest.raises(ValueError, match="scale must be a one-element float32 or float64"):
        torch.ops.arwrap.scale_grad_(torch.randn(3), torch.ones((), dtype=torch.long))
    with pytest.raises(ValueError, match="grad must be floating point"):
        torch.ops.arwrap.scale_grad_(torch.ones(3, dtype=torch.long), torch.ones(()))


def test_scale_grad_opcheck():
    torch.library.opcheck(torch.ops.arwrap.scale_grad_.default, (torch.randn(4, 6), torch.tensor(0.5)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("upstream", [1.0, 0.25])
def test_fused_backward_rescales_once_in_place(device, inplace, upstream):
    """The fused gradient is brought to the upstream gradient in place (no second
    logits-sized buffer), for an upstream of 1 (skipped) and of 0.25, from a device tensor."""
    V = 301
    z = (torch.randn(6, 4, V) * 2).to(device)
    t = torch.randint(0, V, (6, 4), device=device)
    t[0, :2] = -100
    x = z.clone().requires_grad_(True)
    lg = x * 1
    loss = arwrap_cpp.cross_entropy(lg, t, label_smoothing=0.1, z_loss_weight=1e-3, inplace_backward=inplace)
    loss.backward(torch.tensor(upstream, device=device))
    zr = z.double().cpu().requires_grad_(True)
    r = ref_ce(zr, t.cpu(), label_smoothing=0.1, z_loss_weight=1e-3)
    (gr,) = torch.autograd.grad(r * upstream, zr)
    torch.testing.assert_close(x.grad.cpu().double(), gr, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_backward_retain_graph_rescales_from_the_carried_scale(device):
    """A second backward (retain_graph) of the out-of-place fused loss: out of place, from
    the scale the buffer carries after the first; the first result is not changed."""
    V = 97
    z = torch.randn(8, V, device=device)
    t = torch.randint(0, V, (8,), device=device)
    x = z.clone().requires_grad_(True)
    loss = arwrap_cpp.cross_entropy(x * 1, t)
    (g1,) = torch.autograd.grad(loss * 0.5, x, retain_graph=True)
    keep = g1.clone()
    (g2,) = torch.autograd.grad(loss * 3.0, x, retain_graph=True)
    (g3,) = torch.autograd.grad(loss, x)
    zr = z.double().cpu().requires_grad_(True)
    (gr,) = torch.autograd.grad(ref_ce(zr, t.cpu()), zr)
    for g, s in ((g1, 0.5), (g2, 3.0), (g3, 1.0)):
        torch.testing.assert_close(g.cpu().double(), gr * s, rtol=1e-5, atol=1e-7)
    assert torch.equal(g1, keep)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_backward_second_backward_after_zero_upstream_is_refused(device):
    x = torch.randn(4, 11, device=device, requires_grad=True)
    loss = arwrap_cpp.cross_entropy(x * 1, torch.randint(0, 11, (4,), device=device))
    (loss * 0.0).backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="zero upstream gradient"):
        loss.backward()


@pytest.mark.parametrize("device", DEVICES)
def test_inplace_second_backward_after_upstream_one_still_works(device):
    """inplace_backward: a second backward is refused only once the buffer was rescaled."""
    h = torch.randn(4, 8, device=device, requires_grad=True)
    w = torch.randn(50, 8, device=device)
    t = torch.randint(0, 50, (4,), device=device)
    loss = arwrap_cpp.cross_entropy(h @ w.t(), t, inplace_backward=True)
    loss.backward(retain_graph=True)
    g1 = h.grad.clone()
    loss.backward()
    torch.testing.assert_close(h.grad, 2 * g1)


@pytest.mark.parametrize("device", DEVICES)
def test_linear_cross_entropy_fused_rescale(device):
    """The fused linear cross-entropy's saved gradients, rescaled to a device-resident
    upstream (in place on the first backward, from the carried scale on a second)."""
    h, W = torch.randn(40, 16, device=device), torch.randn(70, 16, device=device) / 4
    t = torch.randint(0, 70, (40,), device=device)
    hh = h.clone().requires_grad_(True)
    loss = arwrap_cpp.linear_cross_entropy(hh, W, t)
    (loss / 4).backward(retain_graph=True)
    g1 = hh.grad.clone()
    (loss * 3).backward()
    hr = h.double().cpu().requires_grad_(True)
    (gr,) = torch.autograd.grad(F.cross_entropy(hr @ W.double().cpu().T, t.cpu()), hr)
    torch.testing.assert_close(g1.cpu().double(), gr / 4, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(hh.grad.cpu().double(), gr * (3 + 1 / 4), rtol=1e-4, atol=1e-6)

"""cross_entropy as an operator: opcheck, gradcheck, torch.compile and TorchScript on chosen
cases (correctness cases: test_cross_entropy.py; every sample against the float64 reference:
test_op_samples.py)."""
import pytest
import torch

from arwrap_cpp import cross_entropy
from test_cross_entropy import grads, make


# ------------------------------------------------------------------ operator machinery

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("return_lse", [False, True])
def test_opcheck(reduction, return_lse):
    logits, target = make((4, 7), 23)
    for dtype in [torch.float32, torch.float64]:
        x = logits.to(dtype).requires_grad_(True)
        torch.library.opcheck(torch.ops.arwrap.cross_entropy.default,
                              (x, target, -100, reduction, 0.1, 1e-3, False, return_lse))
    # internal operators
    x = logits.clone()
    red = {"none": 0, "mean": 1, "sum": 2}[reduction]
    torch.library.opcheck(torch.ops.arwrap.cross_entropy_forward.default, (x, target, -100, red, 0.0, 0.0))
    torch.library.opcheck(torch.ops.arwrap.cross_entropy_forward_grad.default, (x, target, -100, red, 0.1, 0.0))
    torch.library.opcheck(torch.ops.arwrap.cross_entropy_forward_grad_.default, (x.clone(), target, -100, red, 0.0, 0.0))
    loss, lse = torch.ops.arwrap.cross_entropy_forward(x, target, -100, red, 0.0, 0.0)
    gl = torch.ones_like(loss)
    torch.library.opcheck(torch.ops.arwrap.cross_entropy_backward.default, (gl, None, x, target, lse, -100, red, 0.0, 0.0))
    torch.library.opcheck(torch.ops.arwrap.cross_entropy_backward_.default, (gl, lse.clone(), x.clone(), target, lse, -100, red, 0.0, 0.0))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", [dict(), dict(label_smoothing=0.2), dict(z_loss_weight=0.05)])
def test_gradcheck(reduction, opts):
    logits, target = make((3, 4), 7)
    x = logits.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: cross_entropy(z, target, reduction=reduction, **opts), (x,))
    assert torch.autograd.gradcheck(
        lambda z: cross_entropy(z, target, reduction=reduction, return_lse=True, **opts), (x,))


def test_torch_compile_fullgraph_forward_backward():
    logits, target = make((4, 9), 101)

    def step(x, t):
        return cross_entropy(x * 2.0, t, label_smoothing=0.1)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    a, ga = grads(lambda x: compiled(x, target), logits)
    b, gb = grads(lambda x: step(x, target), logits)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ga, gb)


@pytest.mark.slow
def test_torch_compile_inductor_dynamic():
    def step(x, t):
        return cross_entropy(torch.tanh(x) * 5.0, t, inplace_backward=True)

    compiled = torch.compile(step, fullgraph=True, dynamic=True)
    for rows in [6, 11]:
        logits, target = make((rows,), 57)
        a, ga = grads(lambda x: compiled(x, target), logits)
        b, gb = grads(lambda x: step(x, target), logits)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(ga, gb)


class ScriptedLoss(torch.nn.Module):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss, lse = torch.ops.arwrap.cross_entropy(logits, target, -100, "mean", 0.0, 1e-4, False, False)
        return loss


def test_torchscript_script_save_load(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        m = torch.jit.script(ScriptedLoss())
        path = tmp_path / "loss.pt"
        m.save(str(path))
        loaded = torch.jit.load(str(path))
    logits, target = make((3, 8), 29)
    a, ga = grads(lambda x: loaded(x, target), logits)
    b, gb = grads(lambda x: cross_entropy(x, target, z_loss_weight=1e-4), logits)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ga, gb)





"""Gradient parity against x-transformers, shared by the wrapper tests (tests/modules)."""
import torch


def assert_grads_match(net, got, ref, rtol=1e-4):
    """Each trainable parameter's gradient in `got` equals `ref`'s (max error relative to the
    reference's largest entry <= rtol); a parameter the reference leaves without a gradient
    has none, or zeros, here."""
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    for name, a, b in zip(names, got, ref):
        if b is None:
            assert a is None or torch.all(a == 0), name
            continue
        scale = b.abs().max().clamp(min=1e-12)
        err = ((a - b).abs().max() / scale).item()
        assert err <= rtol, f"{name}: rel err {err:.2e}"

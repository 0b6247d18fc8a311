"""What the property-based tests (hypothesis) share: the settings profile, the strategies of
the cross-entropy options, ignore patterns and memory layouts, and the float64 reference.

Hypothesis draws the structure (shapes, dtype, options, a seed); the tensors come from
torch with that seed. ``derandomize=True`` makes every run (and CI) try the same
examples; to fuzz locally, ``ARWRAP_HYPOTHESIS_EXAMPLES=2000`` tries more and
``ARWRAP_HYPOTHESIS_RANDOM=1`` draws fresh ones each run. The tests:
test_cross_entropy_properties.py, test_linear_cross_entropy_properties.py (here, per
operator) and tests/modules/test_wrapper_properties.py.
"""
import os

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from op_references import reference_cross_entropy

EXAMPLES = int(os.environ.get("ARWRAP_HYPOTHESIS_EXAMPLES", "0"))
RANDOM = os.environ.get("ARWRAP_HYPOTHESIS_RANDOM", "") not in ("", "0")


def profile(n):
    return settings(max_examples=EXAMPLES or n, deadline=None, derandomize=not RANDOM, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


IGNORE = -100
# loss tolerance (relative to max(1, |ref|)) and gradient tolerance (relative to max |ref grad|)
CE_TOL = {torch.float64: (1e-10, 1e-9), torch.float32: (2e-5, 1e-4), torch.bfloat16: (2e-5, 2e-2)}
CE_ATOL = {torch.float64: 1e-13, torch.float32: 1e-6, torch.bfloat16: 1e-6}
# the linear loss computes its logits tile in the input dtype (bf16 rounding: see the bf16 yardstick in
# test_linear_cross_entropy_properties.py)
LCE_TOL = {torch.float64: (1e-10, 1e-9), torch.float32: (1e-4, 1e-3), torch.bfloat16: (1e-2, 1e-2)}
DTYPES = st.sampled_from([torch.float32, torch.float64, torch.bfloat16])
REDUCTIONS = st.sampled_from(["mean", "sum", "none"])
IGNORE_PATTERNS = st.sampled_from(["none", "some", "all", "one_valid"])
SMOOTHING = st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0])
Z_LOSS = st.sampled_from([0.0, 0.0, 1e-4, 1e-2])


def make_target(shape, V, pattern, ignore_index, gen):
    t = torch.randint(0, V, shape, generator=gen)
    if pattern == "some":
        t[torch.rand(shape, generator=gen) < 0.3] = ignore_index
    elif pattern == "all":
        t[...] = ignore_index
    elif pattern == "one_valid":
        flat = t.view(-1)
        keep = flat[0].item()
        flat[:] = ignore_index
        flat[-1] = keep
    return t


def reference_loss(z64, t, *, ignore_index, reduction, label_smoothing, z_loss_weight):
    """The cross-entropy reference (tests/ops/op_references.py), computed in the input's
    precision: float64 for the reference, float32 for the yardstick of a bf16 pipeline."""
    return reference_cross_entropy(z64, t, ignore_index=ignore_index, reduction=reduction,
                                   label_smoothing=label_smoothing, z_loss_weight=z_loss_weight,
                                   dtype=torch.promote_types(z64.dtype, torch.float32))


def layout(base, kind):
    """The same values in another memory layout (the kernels must accept any strides)."""
    if kind == "contiguous":
        return base
    if kind == "transposed":  # stride(-1) != 1: copied by the kernel
        return base.transpose(-1, 0).contiguous().transpose(-1, 0) if base.dim() > 1 else base
    # rows padded in memory (like logits[:, :-1] of a bigger buffer): stride(-1) == 1
    pad = torch.zeros(*base.shape[:-1], base.shape[-1] + 3, dtype=base.dtype)
    pad[..., : base.shape[-1]] = base
    return pad[..., : base.shape[-1]]

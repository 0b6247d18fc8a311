"""The float32 adds of bf16 values (csrc/ops/low_precision_mm.h): add_bf16, the native net's
residual add of a block's bf16 output under autocast, and add_bf16_, the fused head's and the
q/k/v projections' float32 accumulation of a bf16 product. Both must give ATen's values bit for
bit (the bf16 value widened exactly, one float32 add), for any thread count, and refuse what
they do not take. (The native step under autocast, which uses them, is compared with
x-transformers' under autocast in test_autocast.py.)"""
import pytest
import torch

import arwrap_cpp  # noqa: F401 (loads the extension)
from arwrap_cpp import _C

SHAPES = [(1, 1), (3, 7), (2, 5, 33), (257, 1000), (0, 4), (4, 0)]


@pytest.mark.parametrize("shape", SHAPES)
def test_add_bf16_is_atens_mixed_add(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g) * 1e3
    p = torch.randn(shape, generator=g).bfloat16()
    y = _C._add_bf16(x, p)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert torch.equal(y, x + p)
    assert x.numel() == 0 or y.data_ptr() != x.data_ptr()  # a new tensor, x untouched


@pytest.mark.parametrize("assign", [False, True])
@pytest.mark.parametrize("shape", [s for s in SHAPES if len(s) == 2])
def test_add_bf16_inplace_is_atens(shape, assign):
    g = torch.Generator().manual_seed(7 + sum(shape))
    out = torch.randn(shape, generator=g)
    p = torch.randn(shape, generator=g).bfloat16()
    want = p.float() if assign else out + p
    got = _C._add_bf16_(out.clone(), p, assign)
    assert torch.equal(got, want)


def test_special_values_pass_through():
    x = torch.tensor([[1.0, float("inf"), -float("inf"), float("nan"), 0.0, -0.0, 3.4e38]])
    p = torch.tensor([[float("nan"), 1.0, -1.0, 1.0, -0.0, -0.0, 3.4e38]]).bfloat16()
    torch.testing.assert_close(_C._add_bf16(x, p), x + p, equal_nan=True, rtol=0, atol=0)


def test_same_bits_for_one_and_two_threads():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4096, 257, generator=g)
    p = torch.randn(4096, 257, generator=g).bfloat16()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _C._add_bf16(x, p)
        torch.set_num_threads(2)
        two = _C._add_bf16(x, p)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


@pytest.mark.parametrize("case", ["dtype_x", "dtype_p", "shape", "strided_x", "strided_p"])
def test_bad_input_is_refused(case):
    x, p = torch.randn(4, 6), torch.randn(4, 6).bfloat16()
    if case == "dtype_x":
        x = x.double()
    elif case == "dtype_p":
        p = p.half()
    elif case == "shape":
        p = p[:, :5].contiguous()
    elif case == "strided_x":
        x = torch.randn(6, 4).t()
    else:
        p = torch.randn(6, 4).bfloat16().t()
    with pytest.raises(RuntimeError, match="add_bf16"):
        _C._add_bf16(x, p)

"""The native net's decoding linear (csrc/modules/small_batch_linear.h): y = x W^T + b for a few
rows of x, float32 on the CPU, without autograd. Against a float64 reference on odd shapes, the
same bits for any thread count, when it applies (and at::linear runs instead), and bad input."""
import pytest
import torch

import arwrap_cpp
from arwrap_cpp import _C

MAX_ROWS = 8


def reference(x, w, b):
    y = x.double() @ w.double().t()
    return y + b.double() if b is not None else y


@pytest.mark.parametrize("rows_shape", [(1,), (3,), (MAX_ROWS,), (2, 1), (2, 4), (0,)])
@pytest.mark.parametrize("K, N", [(1, 1), (7, 5), (64, 2051), (513, 33)])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_float64_reference(rows_shape, K, N, bias):
    g = torch.Generator().manual_seed(K * 1000 + N)
    x = torch.randn(*rows_shape, K, generator=g)
    w = torch.randn(N, K, generator=g) / K**0.5
    b = torch.randn(N, generator=g) if bias else None
    y = _C._small_batch_linear(x, w, b)
    assert y.shape == (*rows_shape, N) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), reference(x, w, b), atol=1e-5, rtol=1e-5)


def test_strided_inputs():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(130, 4, generator=g).t()[:, 1:129]  # (4, 128), not contiguous
    w = torch.randn(128, 300, generator=g).t()  # (300, 128), not contiguous
    b = torch.randn(600, generator=g)[::2]
    torch.testing.assert_close(_C._small_batch_linear(x, w, b).double(), reference(x, w, b), atol=1e-5, rtol=1e-5)


def test_same_bits_for_any_thread_count():
    g = torch.Generator().manual_seed(4)
    x, w, b = torch.randn(3, 257, generator=g), torch.randn(4099, 257, generator=g), torch.randn(4099, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _C._small_batch_linear(x, w, b)
        torch.set_num_threads(2)
        two = _C._small_batch_linear(x, w, b)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_applies_only_without_gradient_to_few_float32_rows_outside_autocast():
    x, w = torch.randn(2, 16), torch.randn(8, 16, requires_grad=True)
    assert not _C._small_batch_linear_applies(x, w, None)  # grad wanted: at::linear, with autograd
    with torch.no_grad():
        assert _C._small_batch_linear_applies(x, w, None)
        assert not _C._small_batch_linear_applies(torch.randn(MAX_ROWS + 1, 16), w, None)
        assert not _C._small_batch_linear_applies(x.double(), w.double(), None)
        assert not _C._small_batch_linear_applies(x, w, torch.randn(7))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not _C._small_batch_linear_applies(x, w, None)


@pytest.mark.parametrize("args, what", [
    ((torch.randn(2, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)), "Double"),
    ((torch.randn(MAX_ROWS + 1, 16), torch.randn(8, 16)), "at most 8 rows"),
    ((torch.randn(2, 15), torch.randn(8, 16)), "weight (N, K)"),
])
def test_bad_input_names_what_was_expected(args, what):
    with pytest.raises(ValueError, match="small_batch_linear") as e:
        _C._small_batch_linear(*args, None)
    assert what in str(e.value)


def test_native_net_decodes_with_it_and_matches_the_gradient_path():
    """The eval forward of one token per sequence (no grad: this kernel) equals the same forward
    with grad enabled (at::linear), and greedy generation still gives x-transformers' tokens
    (tests/modules/test_transformer.py)."""
    torch.manual_seed(0)
    net = arwrap_cpp.TransformerWrapper(num_tokens=64, max_seq_len=32,
                                        attn_layers=arwrap_cpp.Decoder(dim=48, depth=2, heads=3, attn_dim_head=16))
    net.eval()
    x = torch.randint(0, 64, (2, 1))
    with torch.no_grad():
        fast = net(x)
    slow = net(x)  # parameters require grad: the at::linear path
    assert slow.requires_grad
    torch.testing.assert_close(fast, slow.detach(), atol=1e-5, rtol=1e-5)


def test_compiled_inference_traces_at_linear_and_matches_eager():
    """Under torch.compile the tensors are fake: the kernel, which reads data, must stay out of
    the trace (at::linear is traced instead) and the compiled result equal the eager one."""
    torch.manual_seed(0)
    net = arwrap_cpp.TransformerWrapper(num_tokens=64, max_seq_len=32,
                                        attn_layers=arwrap_cpp.Decoder(dim=48, depth=2, heads=3, attn_dim_head=16))
    net.eval()
    x = torch.randint(0, 64, (1, 3))
    torch._dynamo.reset()
    with torch.no_grad():
        eager = net(x)
        compiled = torch.compile(net, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)

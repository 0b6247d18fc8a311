"""The CUDA kernels against the CPU kernels (and float64 references), on a GPU.

Skipped, with the reason, on machines without CUDA (our CI); bench/gpu_check.sh runs
them on a lent GPU.
"""
import pytest
import torch
import torch.nn.functional as F

import arwrap_cpp
from conftest import reference_cross_entropy as ref

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and arwrap_cpp.built_with_cuda()),
    reason="needs a CUDA device and libarwrap built with its CUDA kernels",
)

TOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


@pytest.mark.parametrize("keep_last", [False, True])
@pytest.mark.parametrize("mask_token_id", [None, 7])
def test_shift_tokens_cuda_equals_cpu(keep_last, mask_token_id, monkeypatch):
    monkeypatch.setenv("ARWRAP_SYNC_CHECKS", "1")  # the host check's IndexError below
    x = torch.randint(0, 50, (6, 129))
    x[2, 10:20] = -100
    lens = torch.tensor([129, 3, 64, 1, 0, 100])
    noise = torch.randn(6, 129 if keep_last else 128)
    noise[1, 5] = noise[1, 6]  # a tie
    cpu = arwrap_cpp.shift_tokens(x, lens=lens, mask_prob=0.3, mask_token_id=mask_token_id, noise=noise,
                                  keep_last=keep_last)
    gpu = arwrap_cpp.shift_tokens(x.cuda(), lens=lens.cuda(), mask_prob=0.3, mask_token_id=mask_token_id,
                                  noise=noise.cuda(), keep_last=keep_last)
    for a, b in zip(cpu, gpu):
        assert torch.equal(a, b.cpu())
    with pytest.raises(IndexError, match="token ids >= 0"):
        bad = x.clone()
        bad[0, 3] = -5
        arwrap_cpp.shift_tokens(bad.cuda())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("V", [1, 7, 1009, 32000, 128256])
@pytest.mark.parametrize("inplace", [False, True])
def test_cross_entropy_cuda_equals_cpu(dtype, reduction, V, inplace):
    rows = 37 if V < 100000 else 5
    z = (torch.randn(rows, V, dtype=torch.float64) * 3).to(dtype)
    t = torch.randint(0, V, (rows,))
    t[::4] = -100
    up = torch.randn(rows) if reduction == "none" else torch.tensor(0.7)
    ldt = torch.float64 if dtype == torch.float64 else torch.float32
    out = {}
    for dev in ("cpu", "cuda"):
        x = z.to(dev).clone().requires_grad_(True)
        lg = x * 1  # a non-leaf, as in a model
        loss = arwrap_cpp.cross_entropy(lg, t.to(dev), reduction=reduction, label_smoothing=0.05,
                                        z_loss_weight=1e-4, inplace_backward=inplace)
        loss.backward(up.to(dev, ldt))
        out[dev] = (loss.detach().cpu().double(), x.grad.cpu().double())
    r = ref(z.double(), t, reduction=reduction, label_smoothing=0.05, z_loss_weight=1e-4)
    tol = TOL[dtype]
    assert (out["cuda"][0] - r).abs().max() <= tol * r.abs().max().clamp(min=1)
    g_scale = out["cpu"][1].abs().max().clamp(min=1e-6)
    assert (out["cuda"][1] - out["cpu"][1]).abs().max() <= 4 * tol * g_scale


def test_cross_entropy_cuda_all_ignored_and_bad_targets(monkeypatch):
    # the host check and its IndexError (the default asserts on the device instead:
    # tests/ops/test_cuda_preflight.py checks that in a child process)
    monkeypatch.setenv("ARWRAP_SYNC_CHECKS", "1")
    z = torch.randn(4, 10, device="cuda", requires_grad=True)
    loss = arwrap_cpp.cross_entropy(z, torch.full((4,), -100, device="cuda"))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(z.grad == 0)
    with pytest.raises(IndexError, match=r"target must be in \[0, 10\)"):
        arwrap_cpp.cross_entropy(torch.randn(3, 10, device="cuda"), torch.tensor([1, 10, 2], device="cuda"))
    with pytest.raises(ValueError, match="same device"):
        arwrap_cpp.cross_entropy(torch.randn(3, 10, device="cuda"), torch.tensor([1, 2, 3]))


def test_cross_entropy_cuda_64bit_indexing():
    """rows x V > 2^31 elements: 64-bit offsets in the kernel."""
    rows, V = 16800, 128256  # 2.15e9 elements, 4.3 GB in bf16
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs a GPU with 24 GiB or more")
    z = torch.randn(rows, V, device="cuda", dtype=torch.bfloat16)
    t = torch.randint(0, V, (rows,), device="cuda")
    loss = arwrap_cpp.cross_entropy(z, t, reduction="none")
    # reference, one chunk at a time in float32
    r = torch.cat([F.cross_entropy(c.float(), tc, reduction="none") for c, tc in zip(z.split(2048), t.split(2048))])
    torch.testing.assert_close(loss, r, rtol=1e-3, atol=1e-3)
    assert torch.isfinite(loss[-1])


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_cuda_opcheck(reduction):
    z = torch.randn(4, 7, 23, device="cuda", requires_grad=True)
    t = torch.randint(0, 23, (4, 7), device="cuda")
    torch.library.opcheck(torch.ops.arwrap.cross_entropy.default, (z, t, -100, reduction, 0.1, 1e-3, False, False))
    x = torch.randint(0, 9, (3, 8), device="cuda")
    torch.library.opcheck(torch.ops.arwrap.shift_tokens.default,
                          (x, None, torch.randn(3, 7, device="cuda"), -100, 0, 0.3, None, False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_cross_entropy_cuda_equals_cpu(dtype, reduction):
    N, D, V = 300, 64, 1009
    h = torch.randn(N, D).to(dtype)
    W = (torch.randn(V, D) / 8).to(dtype)
    b = (torch.randn(V) * 0.1).to(dtype)
    t = torch.randint(0, V, (N,))
    t[::5] = -100
    up = torch.randn(N) if reduction == "none" else torch.tensor(1.3)
    res = {}
    for dev in ("cpu", "cuda"):
        hh, WW, bb = (x.to(dev).clone().requires_grad_(True) for x in (h, W, b))
        loss = arwrap_cpp.linear_cross_entropy(hh, WW, t.to(dev), bias=bb, reduction=reduction)
        loss.backward(up.to(dev))
        res[dev] = [loss.detach().cpu().double()] + [x.grad.cpu().double() for x in (hh, WW, bb)]
    tol = TOL[dtype] * 5
    for a, c in zip(res["cuda"], res["cpu"]):
        assert (a - c).abs().max() <= tol * c.abs().max().clamp(min=1e-6)


def test_wrapper_on_cuda_matches_x_transformers():
    xt = pytest.importorskip("x_transformers")  # skipped, not an ImportError, without it (bench/wheels brings it)
    XT, Decoder, TransformerWrapper = xt.AutoregressiveWrapper, xt.Decoder, xt.TransformerWrapper

    net = TransformerWrapper(num_tokens=101, max_seq_len=64, attn_layers=Decoder(dim=64, depth=2, heads=4)).cuda()
    x = torch.randint(0, 101, (4, 65), device="cuda")
    torch.manual_seed(0)
    a = XT(net, mask_prob=0.15)(x)
    torch.manual_seed(0)
    b = arwrap_cpp.AutoregressiveWrapper(net, mask_prob=0.15)(x)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    c = arwrap_cpp.AutoregressiveWrapper(net, fused_head=True)(x)
    torch.testing.assert_close(c, XT(net)(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("add_attn_z_loss", [False, True])
def test_native_net_cuda_equals_cpu(add_attn_z_loss):
    """The native net on the GPU (SDPA, attention_lse, the linear cross-entropy's CUDA
    tile loop): loss, gradients and greedy tokens equal the CPU's."""
    torch.manual_seed(0)
    net = arwrap_cpp.TransformerWrapper(
        num_tokens=301, max_seq_len=64, use_abs_pos_emb=False,
        attn_layers=arwrap_cpp.Decoder(dim=64, depth=2, heads=4, attn_dim_head=16, rotary_pos_emb=True))
    x = torch.randint(0, 301, (3, 49))
    x[1, 30:] = -100
    w = arwrap_cpp.AutoregressiveWrapper(net, add_attn_z_loss=add_attn_z_loss)
    loss = w(x)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)
    net.cuda()
    loss_cuda = w(x.cuda())
    loss_cuda.backward()
    assert abs(loss_cuda.item() - loss.item()) < 1e-4
    for n, p in net.named_parameters():
        assert torch.allclose(p.grad.cpu(), grads[n], atol=1e-4, rtol=1e-3), n
    net.eval()
    prompts = torch.randint(0, 301, (2, 4))
    gpu = w.generate(prompts.cuda(), 20, temperature=0.0).cpu()
    net.cpu()
    assert torch.equal(gpu, w.generate(prompts, 20, temperature=0.0))

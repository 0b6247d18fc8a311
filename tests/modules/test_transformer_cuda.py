"""The native network and the wrapper on a GPU (from the former tests/test_cuda.py):
against the CPU and x-transformers. Skipped, with the reason, without CUDA."""
import pytest
import torch

import arwrap_cpp


# ---------------------------------------------------------------- on a GPU (from the former tests/test_cuda.py)



@pytest.mark.cuda
def test_wrapper_on_cuda_matches_x_transformers():
    xt = pytest.importorskip("x_transformers")  # skipped, not an ImportError, without it (bench/wheels brings it)
    XT, Decoder, TransformerWrapper = xt.AutoregressiveWrapper, xt.Decoder, xt.TransformerWrapper

    # x-transformers 2.31.10 runs the net on all seq_len + 1 tokens and drops the last logit, so
    # its positional embedding must cover 65 (the H200 run failed on max_seq_len 64)
    net = TransformerWrapper(num_tokens=101, max_seq_len=65, attn_layers=Decoder(dim=64, depth=2, heads=4)).cuda()
    x = torch.randint(0, 101, (4, 65), device="cuda")
    torch.manual_seed(0)
    a = XT(net, mask_prob=0.15)(x)
    torch.manual_seed(0)
    b = arwrap_cpp.AutoregressiveWrapper(net, mask_prob=0.15)(x)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    c = arwrap_cpp.AutoregressiveWrapper(net, fused_head=True)(x)
    torch.testing.assert_close(c, XT(net)(x), rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
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

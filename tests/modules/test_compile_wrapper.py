"""torch.compile(AutoregressiveWrapper(net), fullgraph=True): the whole training step traces, for
an x-transformers net and for the native net, with the loss and gradients of eager.

Under tracing the Python wrapper runs torch.ops.arwrap.shift_tokens, the net and
torch.ops.arwrap.autoregressive_loss (the function the eager C++ ARWrapper calls after its net).
Models are tiny: compiling on 2 CPU cores takes tens of seconds per graph.
"""
import pytest
import torch
import torch._dynamo
from x_transformers import Decoder, TransformerWrapper
from x_transformers.autoregressive_wrapper import AutoregressiveWrapper as XTWrapper

import arwrap_cpp
from arwrap_cpp import AutoregressiveWrapper

V, SEQ, DIM = 37, 16, 16


def xt_net(**kw):
    attn = dict(dim=DIM, depth=1, heads=2, attn_dim_head=8)
    attn.update(kw.pop("attn", {}))
    return TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(**attn), **kw)


def native_net():
    return arwrap_cpp.TransformerWrapper(num_tokens=V, max_seq_len=SEQ,
                                         attn_layers=arwrap_cpp.Decoder(dim=DIM, depth=1, heads=2, attn_dim_head=8))


def loss_and_grads(model, x, **kw):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = model(x, **kw)
    return loss.detach(), torch.autograd.grad(loss, params)


def assert_same(eager, compiled, rtol=1e-5):
    (le, ge), (lc, gc) = eager, compiled
    torch.testing.assert_close(lc, le, rtol=rtol, atol=1e-6)
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# (net, wrapper, forward) options; each case is one compile (tens of seconds on 2 cores)
CASES = {
    "plain": (dict(), dict(), dict()),
    "lens_and_mask_prob": (dict(), dict(mask_prob=0.25), dict(lens=True, mask_noise=True)),
    "attn_z_loss_and_fused_head": (dict(), dict(add_attn_z_loss=True, fused_head=True), dict()),
}


@pytest.mark.parametrize("case", CASES)
def test_x_transformers_net_fullgraph_matches_eager(case):
    net_kw, wrapper_kw, fwd = CASES[case]
    model = AutoregressiveWrapper(xt_net(**net_kw), **wrapper_kw)
    x = torch.randint(0, V, (2, SEQ))
    kw = {}
    if fwd.get("lens"):
        kw["lens"] = torch.tensor([SEQ, 9])
    if fwd.get("mask_noise"):
        kw["mask_noise"] = torch.randn(2, SEQ)
    eager = loss_and_grads(model, x, **kw)
    compiled = loss_and_grads(torch.compile(model, fullgraph=True), x, **kw)
    assert_same(eager, compiled)
    # and the eager loss is x-transformers' own (same weights; the mask draw injected above
    # is only ours, so compare without it)
    if not fwd.get("mask_noise"):
        ref = XTWrapper(model.net, **{k: v for k, v in wrapper_kw.items() if k != "fused_head"})
        torch.testing.assert_close(ref(x, **kw).detach(), eager[0], rtol=1e-5, atol=1e-6)


def test_x_transformers_net_fullgraph_uses_the_arwrap_operators():
    model = AutoregressiveWrapper(xt_net())
    x = torch.randint(0, V, (2, SEQ))
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.compile(model, fullgraph=True, backend=backend)(x)
    code = "\n".join(g.code for g in graphs)
    # the step before the net and the one after it, the very ones ARWrapper takes
    assert "arwrap.autoregressive_wrapper_inputs" in code and "arwrap.autoregressive_loss" in code


def test_native_net_fullgraph_matches_eager():
    model = AutoregressiveWrapper(native_net())
    x = torch.randint(0, V, (2, SEQ))
    assert_same(loss_and_grads(model, x), loss_and_grads(torch.compile(model, fullgraph=True), x))


def test_looped_net_fullgraph_matches_eager():
    net = xt_net(looped=True, max_looped_steps=3, attn=dict(pre_and_post_norm=True))
    model = AutoregressiveWrapper(net)
    x = torch.randint(0, V, (2, SEQ))
    assert_same(loss_and_grads(model, x), loss_and_grads(torch.compile(model, fullgraph=True), x))


def test_max_autotune_no_cudagraphs_matches_eager():
    model = AutoregressiveWrapper(xt_net())
    x = torch.randint(0, V, (2, SEQ))
    compiled = torch.compile(model, fullgraph=True, mode="max-autotune-no-cudagraphs")
    assert_same(loss_and_grads(model, x), loss_and_grads(compiled, x))


def test_autoregressive_loss_opcheck():
    logits = torch.randn(2, 5, V, requires_grad=True)
    target = torch.randint(0, V, (2, 4))
    target[0, 1] = -100
    torch.library.opcheck(torch.ops.arwrap.autoregressive_loss.default, (logits, target),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


def test_autoregressive_loss_matches_a_float64_reference():
    logits = torch.randn(2, 6, V, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, V, (2, 4))
    target[1, 2] = -100
    loss = torch.ops.arwrap.autoregressive_loss(logits, target, prepend_len=1)
    ref = torch.nn.functional.cross_entropy(logits[:, 1:5].reshape(-1, V), target.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-7)
    g, = torch.autograd.grad(loss, logits)
    gr, = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g, gr, rtol=1e-6, atol=1e-7)


def test_autoregressive_loss_names_bad_shapes():
    with pytest.raises(ValueError, match="output must be"):
        torch.ops.arwrap.autoregressive_loss(torch.randn(2, 3, V), torch.randint(0, V, (2, 4)))
    with pytest.raises(ValueError, match="prepend_len"):
        torch.ops.arwrap.autoregressive_loss(torch.randn(2, 5, V), torch.randint(0, V, (2, 4)), prepend_len=-1)
    with pytest.raises(ValueError, match="target must be"):
        torch.ops.arwrap.autoregressive_loss(torch.randn(2, 5, V), torch.randint(0, V, (8,)))

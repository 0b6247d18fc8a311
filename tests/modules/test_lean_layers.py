"""The feed-forward block with its own backward (csrc/modules/lean_feed_forward.cpp): it keeps
its input and the pre-activation, not the activation's output, and its gradients are the
composition's: against x-transformers' net (Linear, GELU/SiLU or GLU, Linear as ATen ops) in
float64 to rounding, in float32 within 1e-6 relative, under bf16 autocast by cosine; gradcheck
in float64 through the model operator."""
import collections

import pytest
import torch

import arwrap_cpp

from test_transformer import CONFIGS, make_pair, V

# GELU with an inner width of 2.5 dim, SiLU GLU, GELU GLU with rotary and qk-norm
FF_CONFIGS = ["rmsnorm_no_offset_ff_mult", "glu_swish_rmsnorm", "rotary_dim_qk_scale_glu"]


def step(net, wrapper_cls, x, dtype=None):
    for p in net.parameters():
        p.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss = wrapper_cls(net)(x)
    loss.backward()
    return loss.detach().double(), {n: p.grad.double() for n, p in net.named_parameters() if p.grad is not None}


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


@pytest.mark.parametrize("config", FF_CONFIGS)
def test_gradients_are_the_compositions(config):
    from x_transformers import AutoregressiveWrapper as XAR

    xt, ours = make_pair(*CONFIGS[config])
    x = torch.randint(0, V, (3, 17))
    # float64: the net's other kernels agree with x-transformers to ~1e-7 there (float32 tables
    # and accumulators), so a wrong backward (errors of order 1) is what this catches; float32:
    # the feed-forward's own weights within 1e-6, everything within 2e-6 (attention's rounding)
    for dtype, tol, ff_tol in ((torch.float64, 1e-6, 1e-6), (torch.float32, 2e-6, 1e-6)):
        xt.to(dtype), ours.to(dtype)
        ref_loss, ref = step(xt, XAR, x)
        loss, got = step(ours, arwrap_cpp.AutoregressiveWrapper, x)
        assert rel(loss, ref_loss) <= ff_tol, (dtype, loss.item(), ref_loss.item())
        assert got.keys() == ref.keys()
        for name in ref:
            assert rel(got[name], ref[name]) <= (ff_tol if ".ff." in name else tol), (dtype, name)
    xt.float(), ours.float()
    _, ref = step(xt, XAR, x, torch.bfloat16)
    _, got = step(ours, arwrap_cpp.AutoregressiveWrapper, x, torch.bfloat16)
    for name in ref:
        cos = torch.nn.functional.cosine_similarity(got[name].flatten(), ref[name].flatten(), dim=0)
        assert cos > 0.999, (name, cos.item())


@pytest.mark.parametrize("glu", [False, True])
def test_many_chunks_of_rows_give_the_compositions_gradients(glu):
    """A batch of 1200 rows at an inner width of 1024 (4 KiB a row in float32, 8 with GLU) runs the
    block over chunks of 512 rows, the last one short (lean_feed_forward.cpp, chunk_rows): loss and
    gradients are x-transformers' (within 1e-6 relative on the block's weights), and the kept
    graph's backward gives the freed graph's bits."""
    from x_transformers import AutoregressiveWrapper as XAR

    dkw = {"ff_mult": 16, "ff_glu": glu, "ff_swish": glu}
    xt, ours = make_pair({}, dkw, dim=64, depth=1, heads=2, max_seq_len=401)
    x = torch.randint(0, V, (3, 401))
    for dtype, tol in ((torch.float64, 1e-6), (torch.float32, 1e-6)):
        xt.to(dtype), ours.to(dtype)
        ref_loss, ref = step(xt, XAR, x)
        loss, got = step(ours, arwrap_cpp.AutoregressiveWrapper, x)
        assert rel(loss, ref_loss) <= tol
        for name in ref:
            if ".ff." in name:
                assert rel(got[name], ref[name]) <= tol, (dtype, name, rel(got[name], ref[name]))
    params = [p for p in ours.parameters() if p.requires_grad]
    loss = arwrap_cpp.AutoregressiveWrapper(ours)(x)
    kept = torch.autograd.grad(loss, params, retain_graph=True)
    freed = torch.autograd.grad(loss, params)
    assert all(torch.equal(a, b) for a, b in zip(kept, freed))


def saved_per_layer(bf16, keep, dim=32, dim_head=16, **dkw):
    """What one more layer keeps for the backward: the storages (parameters and their casts to the
    products' dtype left out: a few MB of weights, not activations) of the tensors `keep`
    selects, by their last dimension and dtype; a 1-layer net's subtracted from a 2-layer net's."""
    torch.manual_seed(0)
    b, n = 2, 9

    def count(depth):
        net = arwrap_cpp.TransformerWrapper(num_tokens=V, max_seq_len=16, attn_layers=arwrap_cpp.Decoder(
            dim=dim, depth=depth, heads=2, attn_dim_head=dim_head, **dkw))
        params = {p.untyped_storage().data_ptr() for p in net.parameters()}
        shapes = {tuple(p.shape) for p in net.parameters()} | {tuple(p.shape[::-1]) for p in net.parameters()}
        seen = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params and tuple(t.shape) not in shapes and keep(t, b * n):
                seen.setdefault(ptr, (t.shape[-1], t.dtype))
            return t

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = arwrap_cpp.AutoregressiveWrapper(net)(torch.randint(0, V, (b, n + 1)))
        loss.backward()
        return collections.Counter(seen.values())

    return count(2) - count(1)


def ff_saved(glu, bf16):
    """The storages of the feed-forward's inner width (128) a layer keeps."""
    inner = 128
    return saved_per_layer(bf16, lambda t, rows: t.shape[-1] in (inner, 2 * inner) and t.numel() >= rows * inner,
                           ff_glu=glu)


@pytest.mark.parametrize("glu", [False, True])
@pytest.mark.parametrize("bf16", [False, True])
def test_the_block_keeps_only_its_pre_activation(glu, bf16):
    # the composition of ATen ops keeps the pre-activation and the activation's output (and with
    # GLU its halves' products); the block keeps the pre-activation alone, in the products' dtype
    width = 256 if glu else 128
    assert ff_saved(glu, bf16) == {(width, torch.bfloat16 if bf16 else torch.float32): 1}


def gradcheck_layer_weights(dkw, pick, count, move_gammas=False):
    """gradcheck in float64 of the wrapper's loss through the model operator, over the weights
    whose names `pick` selects (`count` of them)."""
    torch.manual_seed(0)
    net = arwrap_cpp.TransformerWrapper(num_tokens=11, max_seq_len=8, attn_layers=arwrap_cpp.Decoder(
        dim=8, depth=1, heads=2, attn_dim_head=4, ff_mult=1, **dkw)).double()
    if move_gammas:  # gammas away from 1, so a wrong gamma gradient shows
        with torch.no_grad():
            for name, p in net.named_parameters():
                if "norm" in name:
                    p.add_(torch.randn_like(p) * 0.3)
    x = torch.randint(0, 11, (2, 6))
    weights = [w.detach().requires_grad_() for w in net.weights()]
    picked = [i for i, n in enumerate(net._param_names) if pick(n)]
    assert len(picked) == count, net._param_names

    def loss_of(*ws):
        full = list(weights)
        for i, w in zip(picked, ws):
            full[i] = w
        return torch.ops.arwrap.autoregressive_wrapper_loss(x, full, net.config, True, -100, 0, 0.0, None, True)[0]

    assert torch.autograd.gradcheck(loss_of, [weights[i] for i in picked])


@pytest.mark.parametrize("dkw", [{}, {"ff_glu": True, "ff_swish": True}])
def test_gradcheck_float64_through_the_model_operator(dkw):
    gradcheck_layer_weights(dkw, lambda n: ".ff." in n, 4)


def layer_saved(bf16, **dkw):
    """Every activation a layer keeps (3-D and 4-D: not the rotary tables or autocast's bf16 copies
    of weights), dim 32, dim_head 24."""
    return saved_per_layer(bf16, lambda t, rows: t.dim() >= 3 and t.numel() >= rows * 16, dim_head=24, **dkw)


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("dkw", [{}, {"rotary_pos_emb": True, "use_rmsnorm": True}])
def test_a_layer_keeps_its_two_inputs_qkv_the_attention_output_and_the_pre_activation(bf16, dkw):
    # the composition also keeps each norm's normalised and scaled outputs (four dim-wide tensors);
    # the layer keeps the residual stream before each block (float32, the norms' dtype), q, k, v
    # and the attention output (the attention operator's, which the out projection reads as a
    # view, in the products' dtype), and the feed-forward's pre-activation
    low = torch.bfloat16 if bf16 else torch.float32
    assert layer_saved(bf16, **dkw) == {(32, torch.float32): 2, (24, low): 4, (128, low): 1}


@pytest.mark.parametrize("dkw", [{}, {"use_rmsnorm": True, "rotary_pos_emb": True},
                                 {"attn_qk_norm": True, "ff_glu": True}])
def test_gradcheck_float64_every_layer_weight(dkw):
    # the norms' gammas (recomputed in the projections' and the feed-forward's backward), q, k,
    # v, out and the feed-forward
    gradcheck_layer_weights(dkw, lambda n: n.startswith("attn_layers.layers."), 10, move_gammas=True)


def test_create_graph_through_the_lean_blocks_is_refused_not_wrong(monkeypatch):
    # their backward recomputes on detached leaves: a second derivative through it would be
    # silently wrong, so it is refused by name; the plain composition (ARWRAP_LEAN_LAYERS=0)
    # is twice differentiable and matches the lean first derivative
    torch.manual_seed(0)
    net = arwrap_cpp.TransformerWrapper(num_tokens=11, max_seq_len=8, attn_layers=arwrap_cpp.Decoder(
        dim=8, depth=1, heads=2, attn_dim_head=4)).double()
    x = torch.randint(0, 11, (2, 6))
    params = list(net.parameters())
    loss = arwrap_cpp.AutoregressiveWrapper(net)(x)
    with pytest.raises(RuntimeError, match="not twice differentiable.*ARWRAP_LEAN_LAYERS=0"):
        torch.autograd.grad(loss, params, create_graph=True)
    lean = torch.autograd.grad(arwrap_cpp.AutoregressiveWrapper(net)(x), params)
    monkeypatch.setenv("ARWRAP_LEAN_LAYERS", "0")
    grads = torch.autograd.grad(arwrap_cpp.AutoregressiveWrapper(net)(x), params, create_graph=True)
    for a, b in zip(grads, lean):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert grads[0].requires_grad


@pytest.mark.parametrize("config", FF_CONFIGS)
def test_retain_graph_gives_the_same_gradients_as_a_graph_freed_after_one_backward(config):
    # where the graph is freed, the feed-forward's backward writes d pre-activation over its saved
    # pre-activation (one pass with the activation's recomputation) and the attention writes dq,
    # dk, dv over its saved q, k, v; with retain_graph they keep them and run out of place: the
    # same bits either way, and a second backward still right
    _, net = make_pair(*CONFIGS[config])
    x = torch.randint(0, V, (3, 17))
    params = [p for p in net.parameters() if p.requires_grad]
    loss = arwrap_cpp.AutoregressiveWrapper(net)(x)
    kept = torch.autograd.grad(loss, params, retain_graph=True)
    again = torch.autograd.grad(loss, params)
    freed = torch.autograd.grad(arwrap_cpp.AutoregressiveWrapper(net)(x), params)
    for a, b, c in zip(kept, again, freed):
        assert torch.equal(a, b) and torch.equal(a, c)

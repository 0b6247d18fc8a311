"""Decoder(checkpoint_layers=True) (C++ DecoderOptions::checkpoint_layers, csrc/modules/layer_checkpoint.cpp):
each layer keeps only its input and recomputes itself in the backward. The loss, every gradient
and the random state after the step are those of the plain net, bit for bit in float32, on every
configuration the parity tests use, with dropout, for 1 and 2 threads; under bf16 autocast the
same to bf16's precision; what the forward keeps for the backward is the layer inputs."""
import pytest
import torch

import arwrap_cpp
from arwrap_cpp import checkpoint as ckpt

from test_transformer import CONFIGS, DIM, SEQ, V

AUX = {  # name: (TransformerWrapper kwargs, Decoder kwargs, AutoregressiveWrapper kwargs, forward kwargs)
    "attn_z_loss": ({}, {}, {"add_attn_z_loss": True}, {}),
    "z_loss_rotary_prepend": ({"use_abs_pos_emb": False}, {"rotary_pos_emb": True}, {"add_attn_z_loss": True},
                              {"prepend_embeds": "randn"}),
    "lens": ({}, {}, {}, {"lens": torch.tensor([33, 10, 2])}),
    "continuous_head": ({"add_continuous_pred_head": True}, {}, {}, {}),
    "dropout": ({"emb_dropout": 0.1}, {"attn_dropout": 0.2, "ff_dropout": 0.3, "rotary_pos_emb": True}, {}, {}),
    "dropout_z_loss_glu": ({}, {"attn_dropout": 0.1, "ff_dropout": 0.1, "ff_glu": True},
                           {"add_attn_z_loss": True}, {}),
}
CASES = {**{k: (w, d, {}, {}) for k, (w, d) in CONFIGS.items()}, **AUX}


def step(case, checkpoint_layers, autocast=False, depth=2):
    """One training step of a fresh net (seed 0) on fixed tokens: (loss, gradients by name, the
    next random draw after the step)."""
    wkw, dkw, akw, fkw = CASES[case]
    torch.manual_seed(0)
    net = arwrap_cpp.TransformerWrapper(
        num_tokens=V, max_seq_len=SEQ,
        attn_layers=arwrap_cpp.Decoder(dim=DIM, depth=depth, heads=3, attn_dim_head=16,
                                       checkpoint_layers=checkpoint_layers, **dkw), **wkw)
    with torch.no_grad():  # non-trivial norm gains, as test_transformer gives them
        for p in net.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.2)
    wrapper = arwrap_cpp.AutoregressiveWrapper(net, **akw)
    x = torch.randint(0, V, (3, 33))
    fkw = {k: (torch.randn(3, 4, DIM) if v == "randn" else v) for k, v in fkw.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = wrapper(x, **fkw)
    loss.backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    return loss.detach(), grads, torch.rand(4)


def assert_same_bits(a, b):
    assert torch.equal(a[0], b[0]), (a[0].item(), b[0].item())
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        assert (a[1][name] is None) == (b[1][name] is None), name
        if a[1][name] is not None:
            assert torch.equal(a[1][name], b[1][name]), f"{name}: {(a[1][name] - b[1][name]).abs().max().item():.3e}"
    assert torch.equal(a[2], b[2]), "the random state after the step differs"


@pytest.mark.parametrize("case", list(CASES))
def test_same_loss_and_gradients_bit_for_bit_in_float32(case):
    plain = step(case, False)
    assert any(g is not None and g.abs().max() > 0 for g in plain[1].values())
    assert_same_bits(step(case, True), plain)


@pytest.mark.parametrize("threads", [1, 2])
def test_deterministic_for_one_and_two_threads(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        first = step("dropout_z_loss_glu", True)
        assert_same_bits(step("dropout_z_loss_glu", True), first)
        assert_same_bits(step("dropout_z_loss_glu", False), first)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("case", ["rotary_dim_qk_scale_glu", "z_loss_rotary_prepend"])
def test_bf16_autocast_matches_the_plain_step(case):
    plain, ours = step(case, False, autocast=True), step(case, True, autocast=True)
    assert_same_bits(ours, plain)  # the same kernels on the same values (no dropout here)


def chunked_step(checkpoint_layers, frozen=(), autocast=False):
    """One step of a net whose blocks run over several chunks of rows (1200 rows at an inner width
    of 1024: chunks of 512, the last one short; csrc/modules/layers.h, chunk_rows): (loss,
    gradients by name); the parameters whose names contain a word of `frozen` take no gradient."""
    torch.manual_seed(0)
    net = arwrap_cpp.TransformerWrapper(num_tokens=V, max_seq_len=401, attn_layers=arwrap_cpp.Decoder(
        dim=64, depth=2, heads=2, attn_dim_head=32, ff_mult=16, ff_glu=True, rotary_pos_emb=True,
        checkpoint_layers=checkpoint_layers), use_abs_pos_emb=False)
    for name, p in net.named_parameters():
        p.requires_grad_(not any(f in name for f in frozen))
    x = torch.randint(0, V, (3, 401), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = arwrap_cpp.AutoregressiveWrapper(net, add_attn_z_loss=True)(x)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in net.named_parameters()}, torch.zeros(())


@pytest.mark.parametrize("frozen", [(), (".ff.",), (".to_q.", ".to_k.", ".to_v.", ".to_out.", "token_emb")],
                         ids=["all", "ff_frozen", "attention_and_embedding_frozen"])
def test_many_chunks_of_rows_bit_for_bit(frozen):
    """The recomputation runs the feed-forward's backward straight from the layer's input and the
    attention block's output, a chunk of rows at a time (layer_checkpoint.cpp): the plain net's
    bits over several chunks too, with either block's weights frozen."""
    plain = chunked_step(False, frozen)
    assert sum(g is None for g in plain[1].values()) == (0 if not frozen else sum(
        any(f in n for f in frozen) for n in plain[1]))
    assert_same_bits(chunked_step(True, frozen), plain)


def test_many_chunks_of_rows_bf16_bit_for_bit():
    """Under bf16 autocast too: the recomputation casts the layer output's float32 gradient a chunk
    at a time where the plain net's residual casts it whole, and the feed-forward's second bias
    sums either in float32 over the same chunks (arwrap-train's resume test runs this)."""
    plain = chunked_step(False, autocast=True)
    assert_same_bits(chunked_step(True, autocast=True), plain)


def saved_bytes(checkpoint_layers, depth):
    """Bytes the forward keeps for the backward that are not parameters (saved_tensors_hooks,
    docs/mixed_precision.md), counting a storage once."""
    torch.manual_seed(0)
    net = arwrap_cpp.TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=arwrap_cpp.Decoder(
        dim=DIM, depth=depth, heads=3, attn_dim_head=16, rotary_pos_emb=True, checkpoint_layers=checkpoint_layers))
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    x = torch.randint(0, V, (4, SEQ))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = arwrap_cpp.AutoregressiveWrapper(net)(x)
    loss.backward()
    return sum(seen.values())


def test_the_forward_keeps_only_the_layer_inputs():
    # per layer: the plain net keeps its activations, the checkpointed one its input (b, n, dim)
    # in float32, and no more
    plain = saved_bytes(False, 3) - saved_bytes(False, 2)
    ours = saved_bytes(True, 3) - saved_bytes(True, 2)
    layer_input = 4 * (SEQ - 1) * DIM * 4
    assert ours == layer_input, (ours, layer_input)
    assert plain > 10 * ours, (plain, ours)


def test_retained_graph_runs_twice_and_double_backward_is_refused():
    torch.manual_seed(0)
    net = arwrap_cpp.TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=arwrap_cpp.Decoder(
        dim=DIM, depth=1, heads=3, attn_dim_head=16, checkpoint_layers=True))
    x = torch.randint(0, V, (2, 9))
    loss = arwrap_cpp.AutoregressiveWrapper(net)(x)
    loss.backward(retain_graph=True)
    once = [p.grad.clone() for p in net.parameters()]
    loss.backward()
    for p, g in zip(net.parameters(), once):
        torch.testing.assert_close(p.grad, 2 * g)
    with pytest.raises(RuntimeError, match="backward"):
        loss.backward()
    loss = arwrap_cpp.AutoregressiveWrapper(net)(x)
    with pytest.raises(RuntimeError, match="not twice differentiable"):
        torch.autograd.grad(loss, list(net.parameters()), create_graph=True)


def test_no_recomputation_without_a_backward():
    # eval / no_grad / generation: the plain layers (nothing to recompute), the same outputs
    torch.manual_seed(0)
    plain = arwrap_cpp.TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=arwrap_cpp.Decoder(
        dim=DIM, depth=2, heads=3, attn_dim_head=16))
    ours = arwrap_cpp.TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=arwrap_cpp.Decoder(
        dim=DIM, depth=2, heads=3, attn_dim_head=16, checkpoint_layers=True))
    ours.load_state_dict(plain.state_dict())
    x = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        out = ours(x)
        assert out.grad_fn is None and torch.equal(out, plain(x))
    assert torch.equal(ours.generate(x[:, :3], 5, temperature=0.0), plain.generate(x[:, :3], 5, temperature=0.0))


def test_the_option_is_ours_and_travels_in_the_configuration():
    net = arwrap_cpp.TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=arwrap_cpp.Decoder(
        dim=DIM, depth=1, checkpoint_layers=True))
    assert "checkpoint_layers=true" in net.config
    wrapper, decoder = ckpt.parse_config(net.config)
    assert decoder["checkpoint_layers"] is True
    assert type(ckpt.build_model(net.config)).__module__.startswith("arwrap_cpp")
    xt = ckpt.build_model(net.config, kind="x_transformers")  # x-transformers has no such option: left out
    assert sorted(xt.state_dict()) == sorted(net.state_dict())
    with pytest.raises(ValueError, match="checkpoint_layers must be a bool"):
        arwrap_cpp.Decoder(dim=DIM, depth=1, checkpoint_layers=1)

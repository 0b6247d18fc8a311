"""The native net (arwrap_cpp.TransformerWrapper / Decoder, C++ arwrap::transformer_forward)
against x-transformers 2.31.10 on the same weights: logits, wrapper loss and gradients,
auxiliary losses and greedy generation (the attention_lse operator: tests/ops)."""
import warnings

import pytest
import torch
from torch.library import opcheck
from x_transformers import AutoregressiveWrapper as XAR
from x_transformers import Decoder as XDecoder
from x_transformers import TransformerWrapper as XTransformerWrapper

import arwrap_cpp

warnings.filterwarnings("ignore", message=".*rotary embedding dimension.*")

V, SEQ, DIM = 97, 40, 48
CONFIGS = {  # name: (TransformerWrapper kwargs, Decoder kwargs)
    "default": ({}, {}),
    "rotary_no_abs": ({"use_abs_pos_emb": False}, {"rotary_pos_emb": True}),
    "glu_swish_rmsnorm": ({}, {"ff_glu": True, "ff_swish": True, "use_rmsnorm": True}),
    "qk_norm": ({}, {"attn_qk_norm": True}),
    "tied": ({"tie_embedding": True}, {}),
    # beyond the five: the other options, with non-default values
    "rmsnorm_no_offset_ff_mult": ({}, {"use_rmsnorm": True, "norm_add_unit_offset": False, "ff_mult": 2.5}),
    "rotary_dim_qk_scale_glu": ({"use_abs_pos_emb": False},
                                {"rotary_pos_emb": True, "rotary_emb_dim": 8, "attn_qk_norm": True,
                                 "attn_qk_norm_scale": 5, "ff_glu": True}),
}


def make_pair(wkw=None, dkw=None, seed=0, dim=DIM, depth=2, heads=3, dim_head=16, max_seq_len=SEQ, xt_only=None):
    """An x-transformers net and ours with its weights (xt_only: Decoder arguments for
    x-transformers' alone, such as attn_flash)."""
    wkw, dkw = dict(wkw or {}), dict(dkw or {})
    torch.manual_seed(seed)
    xt = XTransformerWrapper(num_tokens=V, max_seq_len=max_seq_len,
                             attn_layers=XDecoder(dim=dim, depth=depth, heads=heads, attn_dim_head=dim_head, **dkw,
                                                  **(xt_only or {})),
                             **wkw)
    ours = arwrap_cpp.TransformerWrapper(
        num_tokens=V, max_seq_len=max_seq_len,
        attn_layers=arwrap_cpp.Decoder(dim=dim, depth=depth, heads=heads, attn_dim_head=dim_head, **dkw), **wkw)
    with torch.no_grad():  # give the norms non-trivial values (x-transformers initialises them to 0)
        for p in xt.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.2)
    ours.load_state_dict(xt.state_dict(), strict=True)
    return xt, ours


def grad_diff(xt, ours):
    mine = dict(ours.named_parameters())
    worst = 0.0
    for name, p in xt.named_parameters():
        if p.grad is None:
            assert mine[name].grad is None or mine[name].grad.abs().max() == 0, name
            continue
        assert mine[name].grad is not None, name
        worst = max(worst, (p.grad - mine[name].grad).abs().max().item())
    return worst


@pytest.mark.parametrize("config", list(CONFIGS))
def test_logits_match_x_transformers_both_ways(config):
    wkw, dkw = CONFIGS[config]
    xt, ours = make_pair(wkw, dkw)
    xt.eval(), ours.eval()
    x = torch.randint(0, V, (3, 33))
    ref = xt(x)
    assert (ours(x) - ref).abs().max().item() < 1e-5
    assert sorted(ours.state_dict()) == sorted(xt.state_dict())
    # and back: our weights (after a change) load into x-transformers
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    xt.load_state_dict(ours.state_dict(), strict=True)
    assert (xt(x) - ours(x)).abs().max().item() < 1e-5


@pytest.mark.parametrize("config", list(CONFIGS))
def test_wrapper_loss_and_gradients_match(config):
    wkw, dkw = CONFIGS[config]
    xt, ours = make_pair(wkw, dkw)
    x = torch.randint(0, V, (3, 33))
    x[0, 20:] = -100  # ignored tail
    ref = XAR(xt)(x)
    loss = arwrap_cpp.AutoregressiveWrapper(ours)(x)
    assert abs(loss.item() - ref.item()) < 1e-4
    ref.backward(), loss.backward()
    assert grad_diff(xt, ours) < 1e-4


@pytest.mark.parametrize("case", ["attn_z_loss", "continuous_head", "prepend_embeds", "z_loss_rotary_prepend", "lens"])
def test_auxiliary_losses_match(case):
    wkw, dkw, akw, fkw = {}, {}, {}, {}
    b = 3
    if case == "attn_z_loss":
        akw = {"add_attn_z_loss": True}
    elif case == "continuous_head":
        wkw = {"add_continuous_pred_head": True}
    elif case == "prepend_embeds":
        fkw = {"prepend_embeds": torch.randn(b, 4, DIM)}
    elif case == "z_loss_rotary_prepend":
        wkw, dkw = {"use_abs_pos_emb": False}, {"rotary_pos_emb": True}
        akw, fkw = {"add_attn_z_loss": True}, {"prepend_embeds": torch.randn(b, 4, DIM)}
    elif case == "lens":
        fkw = {"lens": torch.tensor([33, 10, 2])}
    xt, ours = make_pair(wkw, dkw)
    x = torch.randint(0, V, (b, 33))
    ref = XAR(xt, **akw)(x, **fkw)
    loss = arwrap_cpp.AutoregressiveWrapper(ours, **akw)(x, **fkw)
    assert abs(loss.item() - ref.item()) < 1e-4
    ref.backward(), loss.backward()
    assert grad_diff(xt, ours) < 1e-4


def test_attention_z_loss_is_x_transformers_definition():
    """z-loss alone (the net's output), against x-transformers' calc_z_loss on the same weights."""
    xt, ours = make_pair()
    x = torch.randint(0, V, (2, 30))
    _, inter = xt(x, return_intermediates=True, return_attn_z_loss=True)
    _, mine = ours(x, return_attn_z_loss=True)
    assert torch.allclose(mine.attn_z_loss, inter.attn_z_loss, rtol=1e-5, atol=1e-7)


def test_mask_prob_same_seed_same_loss():
    xt, ours = make_pair()
    torch.manual_seed(5)
    x = torch.randint(0, V, (3, 33))
    torch.manual_seed(1)
    ref = XAR(xt, mask_prob=0.3)(x)
    torch.manual_seed(1)
    loss = arwrap_cpp.AutoregressiveWrapper(ours, mask_prob=0.3)(x)
    assert abs(loss.item() - ref.item()) < 1e-4
    ref.backward(), loss.backward()
    assert grad_diff(xt, ours) < 1e-4


@pytest.mark.parametrize("config", ["rotary_no_abs", "default"])
def test_greedy_generation_cache_and_x_transformers_agree(config):
    wkw, dkw = CONFIGS[config]
    xt, ours = make_pair(wkw, dkw)
    xt.eval(), ours.eval()
    prompts = torch.randint(0, V, (2, 5))
    ours_w, xt_w = arwrap_cpp.AutoregressiveWrapper(ours), XAR(xt)
    n = SEQ - 5  # up to max_seq_len: with and without the cache the same computation
    cached = ours_w.generate(prompts, n, temperature=0.0, cache_kv=True)
    assert cached.shape == (2, n)
    assert torch.equal(cached, ours_w.generate(prompts, n, temperature=0.0, cache_kv=False))
    assert torch.equal(cached, xt_w.generate(prompts, n, temperature=0.0, cache_kv=True))
    if config == "rotary_no_abs":
        # past max_seq_len the window slides; the cache keeps keys computed with the older
        # context, recomputing does not, so each is compared with x-transformers' same mode
        for cache_kv in (True, False):
            assert torch.equal(ours_w.generate(prompts, 60, temperature=0.0, cache_kv=cache_kv),
                               xt_w.generate(prompts, 60, temperature=0.0, cache_kv=cache_kv))
    # eos: the rest of a row becomes pad_value, as in x-transformers
    eos = int(cached[0, 3])
    assert torch.equal(ours_w.generate(prompts, n, temperature=0.0, eos_token=eos),
                       xt_w.generate(prompts, n, temperature=0.0, eos_token=eos))
    # a 1-D prompt gives a 1-D answer
    assert torch.equal(ours_w.generate(prompts[0], 6, temperature=0.0), cached[0, :6])


def test_absolute_positions_cannot_cache_past_max_seq_len():
    _, ours = make_pair()
    with pytest.raises(ValueError, match="max_seq_len"):
        arwrap_cpp.AutoregressiveWrapper(ours).generate(torch.zeros(1, 5, dtype=torch.long), SEQ, temperature=0.0)
    # without the cache the window slides, as in x-transformers
    out = arwrap_cpp.AutoregressiveWrapper(ours).generate(torch.zeros(1, 5, dtype=torch.long), SEQ,
                                                           temperature=0.0, cache_kv=False)
    assert out.shape == (1, SEQ)


@pytest.mark.parametrize("fn,kwargs", [("top_k", {}), ("top_k", {"k": 1}), ("top_p", {"thres": 0.5}),
                                       ("min_p", {"min_p": 0.2})])
def test_sampling_filters(fn, kwargs):
    _, ours = make_pair(*CONFIGS["rotary_no_abs"])
    w = arwrap_cpp.AutoregressiveWrapper(ours)
    prompts = torch.randint(0, V, (3, 4))
    a = w.generate(prompts, 12, filter_logits_fn=fn, filter_kwargs=kwargs, generator=torch.Generator().manual_seed(3))
    b = w.generate(prompts, 12, filter_logits_fn=fn, filter_kwargs=kwargs, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (3, 12) and 0 <= a.min() and a.max() < V
    if kwargs.get("k") == 1:  # top-1 sampling is greedy
        assert torch.equal(a, w.generate(prompts, 12, temperature=0.0))
    with pytest.raises(ValueError, match="filter_kwargs"):
        w.generate(prompts, 2, filter_logits_fn=fn, filter_kwargs={"bogus": 1})


def test_unsupported_options_are_refused():
    with pytest.raises(ValueError, match="cross_attend"):
        arwrap_cpp.Decoder(dim=32, depth=1, cross_attend=True)
    with pytest.raises(ValueError, match="causal"):
        arwrap_cpp.Decoder(dim=32, depth=1, causal=False)
    with pytest.raises(ValueError, match="num_memory_tokens"):
        arwrap_cpp.TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=arwrap_cpp.Decoder(dim=32, depth=1),
                                      num_memory_tokens=2)
    with pytest.raises(ValueError, match="attn_layers"):
        arwrap_cpp.TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=XDecoder(dim=32, depth=1))
    with pytest.raises(ValueError, match="depth must be positive"):
        arwrap_cpp.TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=arwrap_cpp.Decoder(dim=32, depth=0))
    with pytest.raises(ValueError, match="attn_dropout"):
        arwrap_cpp.TransformerWrapper(num_tokens=10, max_seq_len=8,
                                      attn_layers=arwrap_cpp.Decoder(dim=32, depth=1, attn_dropout=1.5))


def test_bad_input_to_the_net():
    _, ours = make_pair()
    with pytest.raises(IndexError, match="num_tokens"):
        ours(torch.full((1, 3), V))
    with pytest.raises(IndexError, match="num_tokens"):
        ours(torch.full((1, 3), -1))
    with pytest.raises(ValueError, match="max_seq_len"):
        ours(torch.zeros(1, SEQ + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="2-D int64"):
        ours(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="2-D int64"):
        ours(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="prepend_embeds"):
        ours(torch.zeros(2, 3, dtype=torch.long), prepend_embeds=torch.zeros(2, 1, DIM + 1))
    with pytest.raises(ValueError, match="mask"):
        ours(torch.zeros(2, 3, dtype=torch.long), mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="unsupported argument"):
        ours(torch.zeros(2, 3, dtype=torch.long), mems=[])
    with pytest.raises(IndexError, match="vocabulary"):
        arwrap_cpp.AutoregressiveWrapper(ours)(torch.full((2, 5), V))


def test_module_behaves_like_a_torch_module():
    torch.manual_seed(0)
    net = arwrap_cpp.TransformerWrapper(num_tokens=V, max_seq_len=SEQ, emb_dropout=0.5,
                                        attn_layers=arwrap_cpp.Decoder(dim=32, depth=1, heads=2, attn_dim_head=16))
    w = arwrap_cpp.AutoregressiveWrapper(net)
    x = torch.randint(0, V, (4, 17))
    # dropout in train mode only
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    # Python optimizers see the parameters
    opt = torch.optim.Adam(w.parameters(), lr=1e-2)
    first = w(x).item()
    for _ in range(5):
        opt.zero_grad()
        w(x).backward()
        opt.step()
    assert w(x).item() < first
    # .to() a dtype and back
    net64 = net.to(torch.float64)
    assert net64(x).dtype == torch.float64
    assert w(x).dtype == torch.float64
    net.to(torch.float32)
    # return_outputs gives the logits
    loss, (logits, cache) = w(x, return_outputs=True)
    assert logits.shape == (4, 16, V) and cache is None
    assert torch.allclose(logits, net(x[:, :-1]), atol=1e-6)


def test_native_net_under_x_transformers_wrapper():
    """The module answers x-transformers' calls, so its own AutoregressiveWrapper runs it too."""
    xt, ours = make_pair()
    x = torch.randint(0, V, (2, 21))
    assert abs(XAR(ours, add_attn_z_loss=True)(x).item() - XAR(xt, add_attn_z_loss=True)(x).item()) < 1e-4


def test_torchscript_export_in_python(tmp_path):
    _, ours = make_pair()
    w = arwrap_cpp.AutoregressiveWrapper(ours)
    x = torch.randint(0, V, (2, 21))
    scripted = w.to_torchscript(tmp_path / "m.pt")
    assert abs(scripted(x).item() - w(x).item()) < 1e-6
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    assert abs(loaded(x).item() - w(x).item()) < 1e-6
    assert torch.allclose(loaded.logits(x), ours(x), atol=1e-6)
    assert len(list(loaded.parameters())) == len(ours.weights())


# ---------------------------------------------------------------- the model-level operators

STATIC = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_static")


def tiny_net(**kw):
    torch.manual_seed(0)
    return arwrap_cpp.TransformerWrapper(num_tokens=11, max_seq_len=8,
                                         attn_layers=arwrap_cpp.Decoder(dim=16, depth=1, heads=2, attn_dim_head=8, **kw))


def test_model_operators_opcheck():
    """Schema, autograd registration, fake tensors and static AOT tracing. (Dynamic shapes
    under torch.compile are not supported by these model-level operators: the C++
    forward reads concrete sizes.)"""
    net = tiny_net(rotary_pos_emb=True)
    x = torch.randint(0, 11, (2, 7))
    opcheck(torch.ops.arwrap.transformer_wrapper_forward.default, (x[:, :6], net.weights(), net.config, False),
            test_utils=STATIC)
    opcheck(torch.ops.arwrap.transformer_wrapper_forward.default,
            (x[:, :6], net.weights(), net.config, False, None, None, False, True, False), test_utils=STATIC)
    opcheck(torch.ops.arwrap.autoregressive_wrapper_loss.default, (x, net.weights(), net.config, False),
            test_utils=STATIC)


def test_model_operators_gradcheck_float64():
    net = tiny_net(ff_glu=True, attn_qk_norm=True).double()
    x = torch.randint(0, 11, (2, 6))
    weights = [w.detach().requires_grad_() for w in net.weights()]
    picked = [2, 3, 6]  # attention norm, to_q, ff norm: a few, to keep it quick

    def loss_of(*ws):
        full = list(weights)
        for i, w in zip(picked, ws):
            full[i] = w
        return torch.ops.arwrap.autoregressive_wrapper_loss(x, full, net.config, False, -100, 0, 0.0, None, True)[0]

    assert torch.autograd.gradcheck(loss_of, [weights[i] for i in picked])


def test_config_string_is_validated():
    with pytest.raises(ValueError, match="unknown option 'bogus'"):
        arwrap_cpp._C.transformer_config("num_tokens=5,max_seq_len=4,dim=8,depth=1,bogus=1")
    with pytest.raises(ValueError, match="'depth' is missing"):
        arwrap_cpp._C.transformer_config("num_tokens=5,max_seq_len=4,dim=8")
    with pytest.raises(ValueError, match="heads must be an integer"):
        arwrap_cpp._C.transformer_config("num_tokens=5,max_seq_len=4,dim=8,depth=1,heads=x")
    net = tiny_net()
    with pytest.raises(ValueError, match="expected .* weights"):
        torch.ops.arwrap.transformer_wrapper_forward(torch.zeros(1, 2, dtype=torch.long), net.weights()[:-1],
                                                     net.config, False)
    with pytest.raises(ValueError, match="must have shape"):
        torch.ops.arwrap.transformer_wrapper_forward(torch.zeros(1, 2, dtype=torch.long), net.weights()[::-1],
                                                     net.config, False)


def test_bfloat16_net_trains_and_generates():
    """Weights in bfloat16: SDPA, the fused head and the z-loss's attention_lse (which
    accumulates in float32) give the float32 loss to bfloat16 precision, and gradients
    come back in bfloat16."""
    net = tiny_net(rotary_pos_emb=True)
    w = arwrap_cpp.AutoregressiveWrapper(net, add_attn_z_loss=True)
    x = torch.randint(0, 11, (3, 8))
    ref = w(x).item()
    net.to(torch.bfloat16)
    loss = w(x)
    loss.backward()
    assert loss.dtype == torch.float32 and abs(loss.item() - ref) < 2e-2 * abs(ref)
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in net.parameters())
    assert w.generate(x[:, :3], 4, temperature=0.0).shape == (3, 4)


def test_native_net_fuses_its_head_without_being_asked(recwarn):
    """The native wrapper always computes the loss from the final embeddings with the
    fused linear cross-entropy; fused_head=True is accepted silently (no fallback warning)."""
    net = tiny_net()
    x = torch.randint(0, 11, (2, 8))
    plain = arwrap_cpp.AutoregressiveWrapper(net)(x)
    fused = arwrap_cpp.AutoregressiveWrapper(net, fused_head=True)(x)
    assert not [w for w in recwarn if "fused_head" in str(w.message)]
    assert "LinearCrossEntropy" in plain.grad_fn.name() and "LinearCrossEntropy" in fused.grad_fn.name()
    assert torch.equal(plain, fused)

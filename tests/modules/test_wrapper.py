"""arwrap_cpp.AutoregressiveWrapper against x-transformers' own AutoregressiveWrapper (2.31.10)."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from x_transformers import AutoregressiveWrapper as XTWrapper
from x_transformers import Decoder, TransformerWrapper

from arwrap_cpp import AutoregressiveWrapper
from parity import assert_grads_match
from scripted_net import TinyScriptedDecoder, scripted_decoder

V, SEQ, DIM = 61, 33, 32


def make_net(**kw):
    attn = dict(dim=DIM, depth=2, heads=2)
    attn.update(kw.pop("attn", {}))
    return TransformerWrapper(num_tokens=kw.pop("num_tokens", V), max_seq_len=kw.pop("max_seq_len", SEQ),
                              attn_layers=Decoder(**attn), **kw)


def tokens(b=3, n1=SEQ, vocab=V):
    return torch.randint(0, vocab, (b, n1))


def loss_and_grads(wrapper, x, seed=0, **kw):
    params = [p for p in wrapper.parameters() if p.requires_grad]
    torch.manual_seed(seed)
    out = wrapper(x, **kw)
    loss = out[0] if isinstance(out, tuple) else out
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return out, loss.detach(), grads


def assert_parity(net, x, wrapper_kw=None, seed=0, **fwd_kw):
    wrapper_kw = wrapper_kw or {}
    xt = XTWrapper(net, **wrapper_kw)
    ours = AutoregressiveWrapper(net, **wrapper_kw)
    _, lx, gx = loss_and_grads(xt, x, seed, **fwd_kw)
    _, lo, go = loss_and_grads(ours, x, seed, **fwd_kw)
    assert torch.isfinite(lx), "reference loss is not finite"
    assert abs(lo.item() - lx.item()) <= 1e-5 * abs(lx.item()), (lo.item(), lx.item())
    assert_grads_match(net, go, gx)
    return lo, lx


def test_plain():
    assert_parity(make_net(), tokens())


def test_lens():
    x = tokens(4)
    assert_parity(make_net(), x, lens=torch.tensor([SEQ, 5, 17, 2]))


def test_ignore_index_inside_the_data():
    x = tokens(3)
    x[0, 4:9] = -100
    x[2, -3:] = -100
    assert_parity(make_net(), x)
    y = tokens(3)
    y[1, :6] = 0  # a custom ignore_index that is also a token id
    assert_parity(make_net(), y, wrapper_kw=dict(ignore_index=0, pad_value=5))


def test_prepend_embeds_and_prepend_mask():
    x = tokens(2)
    pe = torch.randn(2, 4, DIM)
    pm = torch.tensor([[True, True, False, True], [False, True, True, True]])
    assert_parity(make_net(), x, prepend_embeds=pe, prepend_mask=pm)
    assert_parity(make_net(), x, prepend_embeds=pe)


def test_add_attn_z_loss_equals_the_nets_own_z_loss():
    """The loss with add_attn_z_loss is the cross-entropy plus the net's attention z-loss,
    computed by the net itself on the same tokens (x-transformers 2.31 feeds all n + 1)."""
    net, x = make_net(), tokens()
    lo, lx = assert_parity(net, x, wrapper_kw=dict(add_attn_z_loss=True))
    plain = AutoregressiveWrapper(net)(x)
    _, intermediates = net(x, return_intermediates=True, return_attn_z_loss=True)
    z = intermediates.attn_z_loss
    assert z.item() > 0
    torch.testing.assert_close(lo - plain.detach(), z.detach(), rtol=1e-4, atol=1e-7)


def test_add_continuous_pred_head():
    assert_parity(make_net(add_continuous_pred_head=True), tokens(), wrapper_kw=dict(next_embed_loss_weight=0.3))


def test_return_outputs():
    net = make_net()
    x = tokens()
    (lx, (logits_x, cache_x)) = XTWrapper(net)(x, return_outputs=True)
    (lo, (logits_o, cache_o)) = AutoregressiveWrapper(net)(x, return_outputs=True)
    torch.testing.assert_close(lo, lx, rtol=1e-5, atol=1e-6)
    assert logits_o.shape == logits_x.shape == (3, SEQ - 1, V)
    torch.testing.assert_close(logits_o, logits_x, rtol=1e-5, atol=1e-5)
    assert cache_o is not None and hasattr(cache_o, "attn_intermediates")
    # the logits are the caller's: backward must not clobber them
    keep = logits_o.detach().clone()
    lo.backward()
    torch.testing.assert_close(logits_o.detach(), keep)


def test_without_return_outputs_the_gradient_reuses_the_logits_buffer():
    """No logits-sized gradient buffer is allocated: the net's output is written in place."""
    net = make_net()
    seen = {}

    def hook(module, inputs, output):
        seen["logits"] = output

    net.to_logits.register_forward_hook(hook)
    x = tokens()
    loss = AutoregressiveWrapper(net)(x)
    before = seen["logits"]._version
    loss.backward()
    assert seen["logits"]._version > 0 or before > 0


@pytest.mark.parametrize("mask_prob", [0.15, 0.4])
def test_mask_prob_same_draw_same_loss(mask_prob):
    net = make_net()
    x = tokens(4)
    assert_parity(net, x, wrapper_kw=dict(mask_prob=mask_prob), seed=11)
    # and the draw is injectable: the default draw is torch.randn((b, n + 1))
    torch.manual_seed(5)
    noise = torch.randn(4, SEQ)
    torch.manual_seed(5)
    a = XTWrapper(net, mask_prob=mask_prob)(x)
    b = AutoregressiveWrapper(net, mask_prob=mask_prob)(x, mask_noise=noise)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_mask_statistics_seen_by_the_net():
    seen = []
    net = make_net()
    net.attn_layers.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs.get("self_attn_kv_mask")),
                                              with_kwargs=True)
    x = tokens(64, 41)
    AutoregressiveWrapper(make_net(max_seq_len=64), mask_prob=0.25)  # constructs fine
    w = AutoregressiveWrapper(make_net(max_seq_len=64), mask_prob=0.25)
    w.net.attn_layers.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs.get("self_attn_kv_mask")), with_kwargs=True)
    w(x)
    mask = seen[-1]
    assert mask is not None and mask.shape == (64, 40)
    # x-transformers draws over the 41 positions: k = min(int(41 * 0.25), 40) = 10, one of
    # which may fall on the last position (not fed): 9 or 10 masked among the first 40
    masked = (~mask).sum(-1)
    assert torch.all((masked == 10) | (masked == 9))
    assert torch.all(mask[:, 0])


def test_mask_token_id_replaces_tokens():
    seen = {}
    net = make_net(num_tokens=V + 1)
    orig = net.forward

    def spy(x, **kw):
        seen["x"], seen["kw"] = x.clone(), kw
        return orig(x, **kw)

    net.forward = spy
    x = tokens(4)
    AutoregressiveWrapper(net, mask_prob=0.3, mask_token_id=V)(x)
    assert "self_attn_kv_mask" not in seen["kw"]
    replaced = seen["x"] == V
    assert torch.all(replaced.sum(-1) >= int(SEQ * 0.3) - 1)


def test_mixture_of_softmax_output_is_log_prob():
    net = make_net(mixture_of_softmax=True)
    assert net.output_is_log_prob
    x = tokens()
    x[1, 3] = -100
    assert_parity(net, x)


def test_gradient_accumulation_loop_of_train_enwik8():
    """The loop of x-transformers' examples/enwik8_simple/train.py: accumulate, clip 0.5, Adam."""
    torch.manual_seed(0)
    base = make_net()
    nets = {"xt": base, "ours": copy.deepcopy(base)}
    wrappers = {"xt": XTWrapper(nets["xt"]), "ours": AutoregressiveWrapper(nets["ours"])}
    optims = {k: torch.optim.Adam(w.parameters(), lr=1e-3) for k, w in wrappers.items()}
    batches = [tokens(2) for _ in range(3 * 4)]
    losses = {k: [] for k in wrappers}
    for name, model in wrappers.items():
        it = iter(batches)
        for _ in range(3):
            model.train()
            for __ in range(4):
                loss = model(next(it))
                (loss / 4).backward()
                losses[name].append(loss.item())
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            optims[name].step()
            optims[name].zero_grad()
    for a, b in zip(losses["ours"], losses["xt"]):
        assert abs(a - b) <= 1e-5 * abs(b)
    for (n, pa), pb in zip(nets["ours"].named_parameters(), nets["xt"].parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6, msg=n)


def test_documented_usage_training_step():
    """x-transformers' documented example, as written (smaller dims): max_seq_len=1024 with
    tokens (4, 1025) fails in x-transformers 2.31 (it feeds 1025 tokens) and works here,
    with a finite loss that falls over a few steps on the batch."""
    model = TransformerWrapper(num_tokens=256, max_seq_len=1024,
                               attn_layers=Decoder(dim=64, depth=2, heads=4))
    model = AutoregressiveWrapper(model)
    optim = torch.optim.Adam(model.parameters(), lr=3e-4)
    x = torch.randint(0, 256, (4, 1025))
    losses = []
    for _ in range(4):
        loss = model(x)
        loss.backward()
        optim.step()
        optim.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0] - 0.05, losses
    with pytest.raises(AssertionError, match="sequence length of 1025 but your absolute positional embedding has a "
                                             "max sequence length of 1024"):
        XTWrapper(model.net)(x)


def test_documented_usage_gradient_accumulation_and_generate():
    model = AutoregressiveWrapper(TransformerWrapper(num_tokens=256, max_seq_len=64,
                                                     attn_layers=Decoder(dim=32, depth=1, heads=2)))
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = torch.randint(0, 256, (8, 65))
    losses = []
    for i in range(4):
        model.train()
        total = 0.0
        for chunk in data.chunk(4):
            loss = model(chunk)
            (loss / 4).backward()
            total += loss.item() / 4
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optim.step()
        optim.zero_grad()
        losses.append(total)
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], losses
    model.eval()
    sample = model.generate(data[:1, :8], 5, temperature=0.0)
    assert sample.shape == (1, 5) and sample.dtype == torch.long
    assert 0 <= sample.min() and sample.max() < 256
    # greedy decoding: the first generated token is the net's argmax after the prompt
    with torch.no_grad():
        first = model.net(data[:1, :8])[:, -1].argmax(-1)
    assert sample[0, 0] == first[0]


def test_all_targets_ignored_is_zero_not_nan():
    net = make_net()
    x = tokens(2)
    loss = AutoregressiveWrapper(net)(x, lens=torch.tensor([1, 1]))
    assert loss.item() == 0.0
    loss.backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert any(g is not None for g in grads.values())
    for name, g in grads.items():  # the README's promise: zero gradients, not NaN
        assert g is None or torch.count_nonzero(g) == 0, name


# ------------------------------------------------------------------ bad input

def test_bad_input_names_the_argument():
    w = AutoregressiveWrapper(make_net())
    with pytest.raises(ValueError, match="x must be 2-D"):
        w(torch.randint(0, V, (SEQ,)))
    with pytest.raises(ValueError, match="x must be int64"):
        w(torch.rand(2, SEQ))
    with pytest.raises(ValueError, match="seq_len \\+ 1 >= 2"):
        w(torch.randint(0, V, (2, 1)))
    with pytest.raises(ValueError, match="lens must be in"):
        w(tokens(2), lens=torch.tensor([3, SEQ + 1]))
    with pytest.raises(ValueError, match="lens must have shape"):
        w(tokens(2), lens=torch.tensor([3]))
    with pytest.raises(IndexError, match=r"x holds token id 61 at x\[1, 2\], outside the net's vocabulary \[0, 61\)"):
        x = tokens(2)
        x[1, 2] = V
        w(x)
    with pytest.raises(IndexError, match="token ids >= 0"):
        x = tokens(2)
        x[0, 1] = -3
        w(x)
    for p in [-0.1, 1.0]:
        with pytest.raises(ValueError, match="mask_prob must be in"):
            AutoregressiveWrapper(make_net(), mask_prob=p)
    with pytest.raises(TypeError, match="net must be an nn.Module"):
        AutoregressiveWrapper(lambda x: x)
    with pytest.raises(ValueError, match="mask_noise|noise must have shape"):
        AutoregressiveWrapper(make_net(), mask_prob=0.2)(tokens(2), mask_noise=torch.randn(2, 3))


# ------------------------------------------------------------------ TorchScript net

def test_torchscript_net_in_the_cpp_wrapper_matches_eager():
    scripted = scripted_decoder()
    eager = TinyScriptedDecoder()
    eager.load_state_dict(scripted.state_dict())
    x = torch.randint(0, 40, (3, 20))
    ours = AutoregressiveWrapper(scripted)  # runs wholly in C++ (TorchScriptNet)
    loss = ours(x)
    ref = F.cross_entropy(eager(x[:, :-1]).transpose(1, 2), x[:, 1:])
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert scripted.to_logits.weight.grad is not None
    with pytest.raises(IndexError, match="outside the net's vocabulary"):
        ours(torch.full((1, 5), 45))
    # mask_prob reaches the scripted net's key mask
    AutoregressiveWrapper(scripted, mask_prob=0.3)(x)


# ------------------------------------------------------------------ fused head

@pytest.mark.parametrize("net_kw", [dict(), dict(tie_embedding=True)])
@pytest.mark.parametrize("wrapper_kw", [dict(), dict(add_attn_z_loss=True), dict(mask_prob=0.2)])
def test_fused_head_matches_x_transformers(net_kw, wrapper_kw):
    net = make_net(**net_kw)
    x = tokens(3)
    x[0, 3] = -100
    xt = XTWrapper(net, **wrapper_kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning on a supported net
        ours = AutoregressiveWrapper(net, fused_head=True, **wrapper_kw)
        _, lo, go = loss_and_grads(ours, x, 4)
    _, lx, gx = loss_and_grads(xt, x, 4)
    assert abs(lo.item() - lx.item()) <= 1e-5 * abs(lx.item())
    for (name, _), a, b in zip(net.named_parameters(), go, gx):
        if b is None:
            continue
        assert ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)) <= 1e-4, name


def test_fused_head_never_materialises_the_logits():
    net = make_net()
    calls = []
    net.to_logits.register_forward_hook(lambda *a: calls.append(1))
    AutoregressiveWrapper(net, fused_head=True)(tokens()).backward()
    assert calls == []
    AutoregressiveWrapper(net)(tokens())
    assert calls == [1]


def test_fused_head_falls_back_with_a_warning():
    with pytest.warns(UserWarning, match="falls back to the logits: the net uses a mixture of softmaxes"):
        w = AutoregressiveWrapper(make_net(mixture_of_softmax=True), fused_head=True)
    x = tokens()
    torch.testing.assert_close(w(x), XTWrapper(w.net)(x), rtol=1e-5, atol=1e-6)
    w2 = AutoregressiveWrapper(make_net(), fused_head=True)
    with pytest.warns(UserWarning, match="return_outputs=True needs the logits"):
        loss, (logits, _) = w2(x, return_outputs=True)
    assert logits.shape == (3, SEQ - 1, V)


def test_the_cpp_wrapper_is_built_once_and_rebuilt_when_an_option_changes():
    """_C.ARWrapper is built on the first forward and kept; changing an option it holds
    rebuilds it; a deepcopy builds its own (the net's keyword arguments still reach the net)."""
    import copy

    net = TransformerWrapper(num_tokens=32, max_seq_len=16, attn_layers=Decoder(dim=16, depth=1, heads=2))
    model = AutoregressiveWrapper(net)
    x = torch.randint(0, 32, (2, 9))
    first = model(x)
    core = model._core_cache[1]
    assert torch.equal(model(x), first) and model._core_cache[1] is core
    model.ignore_index = 5
    model(x)
    assert model._core_cache[1] is not core
    twin = copy.deepcopy(model)
    assert twin._core_cache is None
    torch.testing.assert_close(twin(x), model(x))
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_argument'"):
        model(x, no_such_argument=1)
    assert model._call_kwargs == {}

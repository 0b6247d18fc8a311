"""arwrap_cpp.AutoregressiveWrapper as a drop-in for x-transformers 2.31.10's: generate and
beam_search on x-transformers nets, both ways of swapping it in, and looped nets.

The behaviour tests run against both wrappers (``WRAPPERS``); the parity tests compare ours
with x-transformers' on the same weights and the same random draws.
"""
import copy

import pytest
import torch
import x_transformers
import x_transformers.autoregressive_wrapper as xt_module
from x_transformers import Decoder, TransformerWrapper
from x_transformers.autoregressive_wrapper import AutoregressiveWrapper as XTWrapper

import arwrap_cpp
from arwrap_cpp import AutoregressiveWrapper
from parity import assert_grads_match

V, SEQ, DIM = 29, 24, 16
WRAPPERS = {"x-transformers": XTWrapper, "arwrap_cpp": AutoregressiveWrapper}


def make_net(rotary=False, **kw):
    attn = dict(dim=DIM, depth=1, heads=2, attn_dim_head=8, rotary_pos_emb=rotary)
    attn.update(kw.pop("attn", {}))
    if rotary:
        kw.setdefault("use_abs_pos_emb", False)
    return TransformerWrapper(num_tokens=V, max_seq_len=kw.pop("max_seq_len", SEQ), attn_layers=Decoder(**attn), **kw)


def same_draws(fn, seed=0):
    torch.manual_seed(seed)
    return fn()


# ------------------------------------------------------------------ behaviour, both wrappers

@pytest.mark.parametrize("which", WRAPPERS)
def test_generate_returns_only_the_new_tokens(which):
    wrapper = WRAPPERS[which](make_net())
    prompts = torch.randint(0, V, (2, 5))
    out = wrapper.generate(prompts, 7)
    assert out.shape == (2, 7) and out.dtype == torch.long
    assert int(out.min()) >= 0 and int(out.max()) < V
    assert wrapper.generate(prompts[0], 3).shape == (3,)  # a prompt without a batch dimension


@pytest.mark.parametrize("which", WRAPPERS)
def test_generate_pads_everything_after_eos(which):
    net = make_net()
    wrapper = WRAPPERS[which](net, pad_value=V - 1)
    with torch.no_grad():  # all-zero logits: greedy decoding picks token 0 everywhere
        net.to_logits.weight.zero_()
    out = wrapper.generate(torch.randint(0, V, (2, 4)), 6, eos_token=3, temperature=0.0)
    # argmax of all-zero logits is token 0; eos never comes: nothing is padded
    assert (out == 0).all()
    out = wrapper.generate(torch.randint(0, V, (2, 4)), 6, eos_token=0, temperature=0.0)
    assert out.shape[1] == 1 and (out[:, 0] == 0).all()  # every row hit eos at once: stopped early


@pytest.mark.parametrize("which", WRAPPERS)
def test_generate_restores_training_mode(which):
    wrapper = WRAPPERS[which](make_net())
    wrapper.train()
    wrapper.generate(torch.randint(0, V, (1, 3)), 2)
    assert wrapper.training and wrapper.net.training


@pytest.mark.parametrize("which", WRAPPERS)
def test_greedy_beam_search_best_beam_scores_at_least_greedy_decoding(which):
    wrapper = WRAPPERS[which](make_net())
    prompts = torch.randint(0, V, (2, 4))
    beams, scores = wrapper.beam_search(prompts, 5, beams=3, return_beams_and_scores=True)
    assert beams.shape == (3, 2, 5) and scores.shape == (3, 2)
    assert (scores[:-1] >= scores[1:]).all(), "beams must come best first"
    greedy = wrapper.generate(prompts, 5, temperature=0.0)
    with torch.no_grad():
        logp = wrapper.net(torch.cat([prompts, greedy], 1)).log_softmax(-1)[:, 3:-1]
        greedy_score = logp.gather(-1, greedy.unsqueeze(-1)).sum((1, 2))
    assert (scores[0] >= greedy_score - 1e-5).all()
    assert torch.equal(wrapper.beam_search(prompts, 5, beams=3), beams[0])


# ------------------------------------------------------------------ both ways of swapping it in

def test_swap_by_assigning_the_package_name(monkeypatch):
    """x_transformers.AutoregressiveWrapper = arwrap_cpp.AutoregressiveWrapper: generate must still
    reach x-transformers' code, not recurse into ours."""
    net = make_net()
    prompts = torch.randint(0, V, (2, 4))
    expected = same_draws(lambda: XTWrapper(net).generate(prompts, 6))
    monkeypatch.setattr(x_transformers, "AutoregressiveWrapper", AutoregressiveWrapper)
    wrapper = x_transformers.AutoregressiveWrapper(net)
    assert isinstance(wrapper, AutoregressiveWrapper)
    assert torch.equal(same_draws(lambda: wrapper.generate(prompts, 6)), expected)
    assert torch.equal(same_draws(lambda: wrapper.beam_search(prompts, 3, beams=2)),
                       same_draws(lambda: XTWrapper(net).beam_search(prompts, 3, beams=2)))


def test_swap_by_assigning_the_defining_module_name(monkeypatch):
    """Even x_transformers.autoregressive_wrapper.AutoregressiveWrapper replaced: generate runs a
    private copy of x-transformers' module, with the same draws."""
    net = make_net()
    prompts = torch.randint(0, V, (2, 4))
    expected = same_draws(lambda: XTWrapper(net).generate(prompts, 6))
    monkeypatch.setattr(arwrap_cpp.bridge, "_xt_class", None)  # forget the class found earlier
    monkeypatch.setattr(x_transformers, "AutoregressiveWrapper", AutoregressiveWrapper)
    monkeypatch.setattr(xt_module, "AutoregressiveWrapper", AutoregressiveWrapper)
    wrapper = xt_module.AutoregressiveWrapper(net)
    assert torch.equal(same_draws(lambda: wrapper.generate(prompts, 6)), expected)
    found = arwrap_cpp.bridge.x_transformers_wrapper()
    assert found is not AutoregressiveWrapper and found.__module__ == "x_transformers.autoregressive_wrapper"
    monkeypatch.setattr(arwrap_cpp.bridge, "_xt_class", None)


def test_swap_by_import_in_a_training_script():
    """The tests' way: `from arwrap_cpp import AutoregressiveWrapper` in a script written for
    x-transformers (train, then sample)."""
    net = make_net()
    model = AutoregressiveWrapper(net)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randint(0, V, (4, SEQ + 1))
    first = None
    for _ in range(5):
        loss = model(x[:, :SEQ])
        loss.backward()
        opt.step()
        opt.zero_grad()
        first = loss.item() if first is None else first
    assert loss.item() < first
    sample = model.generate(x[:1, :3], 4, temperature=0.0)
    assert sample.shape == (1, 4)


# ------------------------------------------------------------------ generate parity, every option

GENERATE_CASES = {
    "top_k": dict(filter_logits_fn="top_k", filter_kwargs=dict(k=3)),
    "top_p": dict(filter_logits_fn="top_p", filter_kwargs=dict(thres=0.8)),
    "top_a": dict(filter_logits_fn="top_a", filter_kwargs=dict(min_p_ratio=0.05)),
    "min_p": dict(filter_logits_fn="min_p", filter_kwargs=dict(min_p=0.2)),
    "function": dict(filter_logits_fn=xt_module.top_p),
    "greedy": dict(temperature=0.0),
    "temperature": dict(temperature=0.7),
    "eos": dict(eos_token=2),
    "no_cache": dict(cache_kv=False),
    "prompt_lens": dict(prompt_lens=torch.tensor([4, 2])),
}


@pytest.mark.parametrize("case", GENERATE_CASES)
def test_generate_matches_x_transformers(case):
    net = make_net()
    prompts = torch.randint(0, V, (2, 4))
    kw = GENERATE_CASES[case]
    expected = same_draws(lambda: XTWrapper(net).generate(prompts, 8, **kw))
    assert torch.equal(same_draws(lambda: AutoregressiveWrapper(net).generate(prompts, 8, **kw)), expected)


def test_generate_prompts_as_a_list_of_different_lengths():
    net = make_net()
    prompts = [torch.randint(0, V, (5,)), torch.randint(0, V, (2,))]
    expected = same_draws(lambda: XTWrapper(net).generate(prompts, 6))
    assert torch.equal(same_draws(lambda: AutoregressiveWrapper(net).generate(prompts, 6)), expected)


def test_generate_past_max_seq_len_without_restriction_and_with_it():
    net = make_net(rotary=True, max_seq_len=8)
    prompts = torch.randint(0, V, (2, 6))
    for kw in (dict(restrict_to_max_seq_len=True), dict(restrict_to_max_seq_len=False, cache_kv=False)):
        expected = same_draws(lambda: XTWrapper(net).generate(prompts, 7, **kw))
        assert torch.equal(same_draws(lambda: AutoregressiveWrapper(net).generate(prompts, 7, **kw)), expected), kw


@pytest.mark.parametrize("amateur_as", ["net", "ours", "x-transformers", "two"])
def test_contrastive_decoding_with_amateur_models(amateur_as):
    expert, amateur = make_net(), make_net()
    prompts = torch.randint(0, V, (2, 3))
    ref_amateur = amateur if amateur_as != "two" else (amateur, copy.deepcopy(amateur))
    ref_kwargs = dict(beta=0.5, alpha=0.1) if amateur_as != "two" else (dict(beta=0.5, alpha=0.1), dict(beta=0.2,
                                                                                                       alpha=0.3))
    ours_amateur = {"net": amateur, "ours": AutoregressiveWrapper(amateur), "x-transformers": XTWrapper(amateur),
                    "two": ref_amateur}[amateur_as]
    expected = same_draws(lambda: XTWrapper(expert).generate(prompts, 5, amateur_model=ref_amateur,
                                                             contrastive_decode_kwargs=ref_kwargs))
    got = same_draws(lambda: AutoregressiveWrapper(expert).generate(prompts, 5, amateur_model=ours_amateur,
                                                                    contrastive_decode_kwargs=ref_kwargs))
    assert torch.equal(got, expected)


def test_generate_return_intermediates_gives_the_cache():
    out, cache = AutoregressiveWrapper(make_net()).generate(torch.randint(0, V, (1, 3)), 2, return_intermediates=True)
    assert out.shape == (1, 2) and hasattr(cache, "attn_intermediates")


# ------------------------------------------------------------------ beam search parity

@pytest.mark.parametrize("kw", [dict(), dict(beams=1), dict(cache_kv=False), dict(prompt_lens=torch.tensor([4, 3])),
                                dict(stochastic=True), dict(stochastic=True, filter_logits_fn="top_k",
                                                            filter_kwargs=dict(k=4), temperature=0.8)],
                         ids=["default", "one_beam", "no_cache", "prompt_lens", "stochastic", "stochastic_top_k"])
def test_beam_search_matches_x_transformers(kw):
    net = make_net()
    prompts = torch.randint(0, V, (2, 4))
    eb, es = same_draws(lambda: XTWrapper(net).beam_search(prompts, 6, return_beams_and_scores=True, **kw))
    ob, os_ = same_draws(lambda: AutoregressiveWrapper(net).beam_search(prompts, 6, return_beams_and_scores=True,
                                                                         **kw))
    assert torch.equal(ob, eb)
    torch.testing.assert_close(os_, es)


# ------------------------------------------------------------------ named errors for bad values

@pytest.mark.parametrize("call, match", [
    (lambda w, p: w.generate(p, -1), "seq_len"),
    (lambda w, p: w.generate(p, 2, temperature=-1.0), "temperature"),
    (lambda w, p: w.generate(p, 2, filter_logits_fn="top_z"), "filter_logits_fn"),
    (lambda w, p: w.generate(p, 2, filter_kwargs=[3]), "filter_kwargs"),
    (lambda w, p: w.beam_search(p, 2, beams=0), "beams"),
    (lambda w, p: w.beam_search(p, 2, eos_token=1), "eos_token"),
    (lambda w, p: w.beam_search(p, -2), "seq_len"),
])
def test_bad_generate_arguments_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call(AutoregressiveWrapper(make_net()), torch.randint(0, V, (2, 3)))


# ------------------------------------------------------------------ looped nets

def looped_net(steps=3):
    return make_net(looped=True, max_looped_steps=steps, attn=dict(pre_and_post_norm=True))


def loss_and_grads(wrapper, x, **kw):
    params = [p for p in wrapper.net.parameters() if p.requires_grad]
    loss = wrapper(x, **kw)
    loss = loss[0] if isinstance(loss, tuple) else loss
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), grads


LOOPED_CASES = {
    "defaults": (dict(), dict()),
    "looped_args": (dict(looped_loss_threshold_exit=0.2, looped_loss_slope=7.0, looped_exit_loss_weight=0.3), dict()),
    "lens": (dict(), dict(lens=torch.tensor([SEQ, 10]))),
    "ignore_index": (dict(ignore_index=-1), dict()),
    "two_loops": (dict(), dict()),
    "return_outputs": (dict(), dict(return_outputs=True)),
}


@pytest.mark.parametrize("case", LOOPED_CASES)
def test_looped_net_loss_and_gradients_match_x_transformers(case):
    wrapper_kw, fwd = LOOPED_CASES[case]
    net = looped_net(2 if case == "two_loops" else 3)
    x = torch.randint(0, V, (2, SEQ))
    if case == "ignore_index":
        x[0, 5:9] = -1
    lx, gx = loss_and_grads(XTWrapper(net, **wrapper_kw), x, **fwd)
    lo, go = loss_and_grads(AutoregressiveWrapper(net, **wrapper_kw), x, **fwd)
    assert torch.isfinite(lx)
    torch.testing.assert_close(lo, lx, rtol=1e-5, atol=1e-6)
    assert_grads_match(net, go, gx)


def test_looped_net_exit_gate_gets_a_gradient():
    net = looped_net()
    loss = AutoregressiveWrapper(net)(torch.randint(0, V, (2, SEQ)))
    loss.backward()
    assert net.exit_gate.weight.grad is not None and net.exit_gate.weight.grad.abs().sum() > 0


def test_looped_net_generates_like_x_transformers():
    net = looped_net()
    prompt = torch.randint(0, V, (1, 4))
    expected = same_draws(lambda: XTWrapper(net).generate(prompt, 4))
    assert torch.equal(same_draws(lambda: AutoregressiveWrapper(net).generate(prompt, 4)), expected)

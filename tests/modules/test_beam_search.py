"""The native net's generate (every x-transformers 2.31.10 option) and beam_search, in C++
(arwrap::generate, arwrap::beam_search), against x-transformers' own code on the same weights:
the same tokens where the draw is the same (same seed), the same beams and scores.
"""
import pytest
import torch
from x_transformers import Decoder as XDecoder
from x_transformers import TransformerWrapper as XTransformerWrapper
from x_transformers.autoregressive_wrapper import AutoregressiveWrapper as XTWrapper

import arwrap_cpp
from arwrap_cpp import AutoregressiveWrapper

V, SEQ, DIM = 31, 20, 24


def make_pair(seed=0, rotary=False, max_seq_len=SEQ, depth=2):
    """An x-transformers net and the native net with its weights."""
    dkw = dict(dim=DIM, depth=depth, heads=2, attn_dim_head=12)
    wkw = {}
    if rotary:
        dkw["rotary_pos_emb"] = True
        wkw["use_abs_pos_emb"] = False
    torch.manual_seed(seed)
    xt = XTransformerWrapper(num_tokens=V, max_seq_len=max_seq_len, attn_layers=XDecoder(**dkw), **wkw)
    ours = arwrap_cpp.TransformerWrapper(num_tokens=V, max_seq_len=max_seq_len, attn_layers=arwrap_cpp.Decoder(**dkw),
                                         **wkw)
    with torch.no_grad():  # non-trivial norms (x-transformers initialises them to 0) and sharper logits
        for p in xt.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.2)
        xt.to_logits.weight.mul_(4)
    ours.load_state_dict(xt.state_dict(), strict=True)
    return xt, ours


def same_draws(fn, seed=1):
    torch.manual_seed(seed)
    return fn()


# ------------------------------------------------------------------ generate, every option

GENERATE_CASES = {
    "top_k": dict(filter_logits_fn="top_k", filter_kwargs=dict(k=4)),
    "top_k_frac": dict(filter_kwargs=dict(frac_num_tokens=0.3)),
    "top_p": dict(filter_logits_fn="top_p", filter_kwargs=dict(thres=0.7)),
    "top_a": dict(filter_logits_fn="top_a", filter_kwargs=dict(min_p_pow=1.5, min_p_ratio=0.1)),
    "min_p": dict(filter_logits_fn="min_p", filter_kwargs=dict(min_p=0.2)),
    "greedy": dict(temperature=0.0),
    "temperature": dict(temperature=0.6),
    "eos": dict(eos_token=3, temperature=0.0),
    "no_cache": dict(cache_kv=False),
    "prompt_lens": dict(prompt_lens=torch.tensor([5, 2, 4])),
    "prompt_lens_greedy_no_cache": dict(prompt_lens=torch.tensor([5, 2, 4]), temperature=0.0, cache_kv=False),
}


@pytest.mark.parametrize("case", GENERATE_CASES)
def test_generate_matches_x_transformers(case):
    xt, ours = make_pair()
    prompts = torch.randint(0, V, (3, 5))
    kw = GENERATE_CASES[case]
    expected = same_draws(lambda: XTWrapper(xt).generate(prompts, 8, **kw))
    got = same_draws(lambda: AutoregressiveWrapper(ours).generate(prompts, 8, **kw))
    assert torch.equal(got, expected)


def test_generate_prompts_as_a_list_of_different_lengths():
    xt, ours = make_pair()
    prompts = [torch.randint(0, V, (6,)), torch.randint(0, V, (2,)), torch.randint(0, V, (4,))]
    for kw in (dict(temperature=0.0), dict()):
        expected = same_draws(lambda: XTWrapper(xt).generate(prompts, 7, **kw))
        assert torch.equal(same_draws(lambda: AutoregressiveWrapper(ours).generate(prompts, 7, **kw)), expected), kw


@pytest.mark.parametrize("kw", [dict(restrict_to_max_seq_len=True), dict(restrict_to_max_seq_len=True, cache_kv=False),
                                dict(restrict_to_max_seq_len=False, cache_kv=False),
                                dict(restrict_to_max_seq_len=False)],
                         ids=["restrict", "restrict_no_cache", "unrestricted_no_cache", "unrestricted"])
def test_generate_past_max_seq_len(kw):
    xt, ours = make_pair(rotary=True, max_seq_len=8)
    prompts = torch.randint(0, V, (2, 6))
    expected = same_draws(lambda: XTWrapper(xt).generate(prompts, 9, temperature=0.0, **kw))
    assert torch.equal(same_draws(lambda: AutoregressiveWrapper(ours).generate(prompts, 9, temperature=0.0, **kw)),
                       expected)


@pytest.mark.parametrize("n_amateurs", [1, 2])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_contrastive_decoding_with_native_amateurs(n_amateurs, temperature):
    xt, ours = make_pair(seed=0)
    amateurs = [make_pair(seed=10 + i, depth=1) for i in range(n_amateurs)]
    cdk = [dict(alpha=0.1, beta=0.5), dict(alpha=0.2, beta=0.3)][:n_amateurs]
    prompts = torch.randint(0, V, (2, 4))
    xt_am = tuple(a for a, _ in amateurs) if n_amateurs > 1 else amateurs[0][0]
    our_am = tuple(AutoregressiveWrapper(o) for _, o in amateurs) if n_amateurs > 1 else amateurs[0][1]
    kw_xt = tuple(cdk) if n_amateurs > 1 else cdk[0]
    expected = same_draws(lambda: XTWrapper(xt).generate(prompts, 6, temperature=temperature, amateur_model=xt_am,
                                                         contrastive_decode_kwargs=kw_xt))
    got = same_draws(lambda: AutoregressiveWrapper(ours).generate(prompts, 6, temperature=temperature,
                                                                  amateur_model=our_am,
                                                                  contrastive_decode_kwargs=kw_xt))
    assert torch.equal(got, expected)


def test_generate_takes_x_transformers_filter_functions_and_a_generator():
    from x_transformers.autoregressive_wrapper import top_p
    xt, ours = make_pair()
    prompts = torch.randint(0, V, (2, 3))
    expected = same_draws(lambda: XTWrapper(xt).generate(prompts, 5, filter_logits_fn=top_p))
    assert torch.equal(same_draws(lambda: AutoregressiveWrapper(ours).generate(prompts, 5, filter_logits_fn=top_p)),
                       expected)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    w = AutoregressiveWrapper(ours)
    assert torch.equal(w.generate(prompts, 5, generator=g1), w.generate(prompts, 5, generator=g2))


# ------------------------------------------------------------------ beam search

BEAM_CASES = {
    "default": dict(),
    "one_beam": dict(beams=1),
    "six_beams": dict(beams=6),
    "no_cache": dict(cache_kv=False),
    "prompt_lens": dict(prompt_lens=torch.tensor([5, 3, 1])),
    "stochastic": dict(stochastic=True),
    "stochastic_top_k_temperature": dict(stochastic=True, filter_logits_fn="top_k", filter_kwargs=dict(k=5),
                                         temperature=0.7),
    "stochastic_at_temperature_0_is_greedy": dict(stochastic=True, temperature=0.0),
}


@pytest.mark.parametrize("case", BEAM_CASES)
def test_beam_search_matches_x_transformers(case):
    xt, ours = make_pair()
    prompts = torch.randint(0, V, (3, 5))
    kw = BEAM_CASES[case]
    eb, es = same_draws(lambda: XTWrapper(xt).beam_search(prompts, 7, return_beams_and_scores=True, **kw))
    ob, os_ = same_draws(lambda: AutoregressiveWrapper(ours).beam_search(prompts, 7, return_beams_and_scores=True,
                                                                          **kw))
    assert ob.shape == eb.shape and os_.shape == es.shape
    assert torch.equal(ob, eb)
    torch.testing.assert_close(os_, es, rtol=1e-5, atol=1e-5)
    best = same_draws(lambda: AutoregressiveWrapper(ours).beam_search(prompts, 7, **kw))
    assert torch.equal(best, eb[0])


def test_beam_search_past_max_seq_len_with_rotary_cache():
    xt, ours = make_pair(rotary=True, max_seq_len=8)
    prompts = torch.randint(0, V, (2, 6))
    eb, es = XTWrapper(xt).beam_search(prompts, 6, beams=3, return_beams_and_scores=True)
    ob, os_ = AutoregressiveWrapper(ours).beam_search(prompts, 6, beams=3, return_beams_and_scores=True)
    assert torch.equal(ob, eb)
    torch.testing.assert_close(os_, es, rtol=1e-5, atol=1e-5)


def test_beam_scores_are_the_log_probabilities_of_the_beams():
    """Independent of x-transformers: a beam's score is the sum of the net's log-probabilities of
    its tokens, and the best beam scores at least as well as greedy decoding."""
    _, ours = make_pair()
    w = AutoregressiveWrapper(ours)
    prompts = torch.randint(0, V, (2, 4))
    beams, scores = w.beam_search(prompts, 5, beams=4, return_beams_and_scores=True)
    with torch.no_grad():
        for k in range(4):
            seq = torch.cat([prompts, beams[k]], 1)
            logp = ours(seq).double().log_softmax(-1)[:, 3:-1].gather(-1, beams[k].unsqueeze(-1)).sum((1, 2))
            torch.testing.assert_close(scores[k].double(), logp, rtol=1e-4, atol=1e-4)
        greedy = w.generate(prompts, 5, temperature=0.0)
        g = ours(torch.cat([prompts, greedy], 1)).log_softmax(-1)[:, 3:-1].gather(-1, greedy.unsqueeze(-1)).sum((1, 2))
    assert (scores[0] >= g - 1e-5).all()


def test_beam_search_of_a_prompt_without_batch_dimension():
    """A 1-D prompt gives (beams, seq_len) and (beams,) (arwrap::beam_search squeezes the batch)."""
    _, ours = make_pair()
    w = AutoregressiveWrapper(ours)
    prompt = torch.randint(0, V, (4,))
    beams, scores = w.beam_search(prompt, 3, beams=2, return_beams_and_scores=True)
    assert beams.shape == (2, 3) and scores.shape == (2,)
    assert torch.equal(w.beam_search(prompt, 3, beams=2), beams[0])


# ------------------------------------------------------------------ named errors

@pytest.mark.parametrize("call, match", [
    (lambda w, p: w.generate(p, 2, filter_logits_fn=lambda t: t), "filter_logits_fn"),
    (lambda w, p: w.generate(p, 2, filter_logits_fn="top_k", filter_kwargs=dict(thres=0.5)), "filter_kwargs"),
    (lambda w, p: w.generate(p, 2, return_intermediates=True), "return_intermediates"),
    (lambda w, p: w.generate(p, 2, prompt_lens=torch.tensor([9, 1])), "prompt_lens"),
    (lambda w, p: w.generate(p, 2, prompt_lens=torch.tensor([1])), "prompt_lens"),
    (lambda w, p: w.generate([p[0], p[1]], 2, prompt_lens=torch.tensor([1, 1])), "prompt_lens"),
    (lambda w, p: w.generate([], 2), "prompts"),
    (lambda w, p: w.generate(p, 2, amateur_model=torch.nn.Linear(2, 2)), "amateur_model"),
    (lambda w, p: w.generate(p, 2, amateur_model=make_pair()[1], contrastive_decode_kwargs=dict(gamma=1)),
     "contrastive_decode_kwargs"),
    (lambda w, p: w.generate(p, 2, amateur_model=make_pair()[1], contrastive_decode_kwargs=dict(alpha=0.0)), "alpha"),
    (lambda w, p: w.beam_search(p, 2, beams=0), "beams"),
    (lambda w, p: w.beam_search(p, 2, eos_token=1), "eos_token"),
    (lambda w, p: w.beam_search(p, 2, filter_logits_fn="top_q"), "filter_logits_fn"),
    (lambda w, p: w.beam_search(p, 2, temperature=-0.5), "temperature"),
    (lambda w, p: w.beam_search(p, 2, unknown=1), "unknown"),
])
def test_bad_arguments_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call(AutoregressiveWrapper(make_pair()[1]), torch.randint(0, V, (2, 3)))


# ------------------------------------------------------------------ the net's own generation

def test_net_generate_is_the_wrappers_with_prompt_lens_and_amateurs():
    """arwrap_cpp.TransformerWrapper.generate is the whole of generation (the wrapper calls it):
    prompt_lens and contrastive decoding against a native amateur give the wrapper's tokens."""
    _, ours = make_pair(seed=0)
    _, amateur = make_pair(seed=1)
    prompts = torch.randint(0, V, (3, 5))
    kw = dict(prompt_lens=torch.tensor([5, 2, 4]), amateur_model=AutoregressiveWrapper(amateur),
              contrastive_decode_kwargs=dict(alpha=0.2, beta=0.4))
    expected = same_draws(lambda: AutoregressiveWrapper(ours).generate(prompts, 6, **kw))
    assert torch.equal(same_draws(lambda: ours.generate(prompts, 6, **kw)), expected)
    best = same_draws(lambda: AutoregressiveWrapper(ours).beam_search(prompts, 4, beams=3))
    assert torch.equal(same_draws(lambda: ours.beam_search(prompts, 4, beams=3)), best)


@pytest.mark.parametrize("call, where", [
    (lambda w, p: w.generate(p, 2, filter_kwargs={"k": 1.5}), "AutoregressiveWrapper.generate"),
    (lambda w, p: w.beam_search(p, 2, filter_logits_fn="top_k", filter_kwargs={"k": 1.5}),
     "AutoregressiveWrapper.beam_search"),
    (lambda w, p: w.net.generate(p, 2, filter_kwargs={"k": 1.5}), "TransformerWrapper.generate"),
    (lambda w, p: w.net.beam_search(p, 2, filter_logits_fn="top_k", filter_kwargs={"k": 1.5}),
     "TransformerWrapper.beam_search"),
])
def test_sampling_errors_name_the_calling_function(call, where):
    _, ours = make_pair()
    with pytest.raises(ValueError, match=rf"^{where}: filter_kwargs k must be an int, got 1.5"):
        call(AutoregressiveWrapper(ours), torch.randint(0, V, (2, 3)))

"""torch.export of the native net's inference forward (arwrap_cpp.export): the logits, and one
decoding step with the key/value cache, with a dynamic batch, sequence and cache length, over
the parity configurations of test_transformer.py, against x-transformers' logits and our own
generate. Our operators stay in the graph as torch.ops.arwrap.* (their Meta kernels keep the
sizes symbolic). Export only traces (no compiler): the AOTInductor package is
tests/integration/test_deploy.py's."""
import pytest
import torch
from test_transformer import CONFIGS, V, make_pair

import arwrap_cpp
from arwrap_cpp import export


def graph_ops(ep):
    return {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_exported_logits_match_x_transformers_at_other_sizes(config):
    xt, ours = make_pair(*CONFIGS[config])
    xt.eval()
    ep = export.export_logits(ours)
    assert graph_ops(ep) == {"arwrap.transformer_wrapper_logits.default"}
    run = ep.module()
    for shape in [(3, 33), (1, 1), (5, 7)]:  # not the example's (2, 8): the sizes stayed dynamic
        x = torch.randint(0, V, shape)
        with torch.no_grad():
            got = run(x)
            ref = xt(x)
        assert got.shape == (*shape, V)
        assert (got - ref).abs().max().item() < 1e-5, shape


@pytest.mark.parametrize("config", list(CONFIGS))
def test_exported_decoding_step_gives_generate_greedy_tokens(config):
    _, ours = make_pair(*CONFIGS[config])
    ours.eval()
    ep = export.export_decode(ours)
    assert graph_ops(ep) == {"arwrap.transformer_wrapper_decode.default", "<built-in function getitem>"}
    prompts = torch.randint(0, V, (3, 6))
    n = 8  # within the window (max_seq_len 40), so absolute positions may cache too
    step = ep.module()
    with torch.no_grad():
        got = export.greedy_decode(step, ours, prompts, n)
    assert torch.equal(got, ours.generate(prompts, n, temperature=0.0))
    # the prompt's step (empty cache) gives the net's own logits, and caches every position
    k, v = ours.empty_cache(3)
    with torch.no_grad():
        logits, k, v = step(prompts, k, v, torch.tensor(0))
        assert (logits - ours(prompts)).abs().max().item() < 1e-5
    d = ours.attn_layers
    assert k.shape == v.shape == (d.depth, 3, d.heads, 6, d.config["attn_dim_head"])


def test_exported_decoding_slides_the_window_as_generate_does():
    """Past max_seq_len the cache drops its oldest keys and the offset counts them (rotary
    positions stay absolute): the same tokens as generate's sliding window."""
    _, ours = make_pair(*CONFIGS["rotary_no_abs"], max_seq_len=8)
    ours.eval()
    step = export.export_decode(ours).module()
    prompts = torch.randint(0, V, (2, 5))
    with torch.no_grad():
        got = export.greedy_decode(step, ours, prompts, 12)
    assert torch.equal(got, ours.generate(prompts, 12, temperature=0.0))
    # a prompt longer than the window: generate crops it the same way
    long = torch.randint(0, V, (1, ours.max_seq_len + 7))
    with torch.no_grad():
        assert torch.equal(export.greedy_decode(step, ours, long, 5), ours.generate(long, 5, temperature=0.0))


def test_eval_forward_takes_the_inference_operator_only_without_autograd():
    """Training, or eval with gradients wanted, keeps the differentiable forward; eval without
    them (and under torch.export) the inference operator, with the same logits."""
    _, ours = make_pair()
    x = torch.randint(0, V, (2, 9))
    ours.eval()
    with_grad = ours(x)
    assert with_grad.requires_grad  # backward still works in eval mode
    with torch.no_grad():
        torch.testing.assert_close(ours(x), with_grad.detach(), rtol=0, atol=0)


def test_inference_operators_name_bad_caches():
    _, ours = make_pair()
    x = torch.randint(0, V, (2, 3))
    k, v = ours.empty_cache(2)
    with pytest.raises(ValueError, match="k_cache must be"):
        ours.decode(x, k[:, :1], v)
    with pytest.raises(ValueError, match="v_cache must be"):
        ours.decode(x, k, v[..., :3])
    with pytest.raises(ValueError, match="offset must be a 0-dim int64"):
        ours.decode(x, k, v, torch.tensor([0]))
    with pytest.raises(ValueError, match="tokens must be 2-D int64"):
        ours.decode(x.float(), k, v)
    # the checks are the Meta kernel's too
    with pytest.raises(ValueError, match="k_cache must be"):
        torch.ops.arwrap.transformer_wrapper_decode(x.to("meta"), [w.to("meta") for w in ours.weights()],
                                                    ours.config, k[:, :1].to("meta"), v.to("meta"),
                                                    torch.tensor(0, device="meta"))


def test_inference_operators_opcheck():
    _, ours = make_pair(*CONFIGS["rotary_no_abs"])
    w = [p.detach() for p in ours.weights()]
    x = torch.randint(0, V, (2, 4))
    k, v = ours.empty_cache(2)
    with torch.no_grad():
        _, k, v = ours.decode(x, k, v)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.arwrap.transformer_wrapper_logits.default, (x, w, ours.config, False),
                          test_utils=utils)
    torch.library.opcheck(torch.ops.arwrap.transformer_wrapper_decode.default,
                          (x[:, :1], w, ours.config, k, v, torch.tensor(0)), test_utils=utils)


def test_export_refuses_other_nets():
    xt, _ = make_pair()
    with pytest.raises(ValueError, match="arwrap_cpp.TransformerWrapper"):
        export.export_logits(xt)

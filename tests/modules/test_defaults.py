"""Every default written once, in C++: Python's defaults, the bindings' keywords and the
operator schemas' defaults are those of the options structs' tables (option_fields.h)."""
import inspect

import torch

import arwrap_cpp
from arwrap_cpp import _C
from arwrap_cpp.options import IGNORE_INDEX, defaults


def signature_defaults(fn):
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not inspect._empty}


def schema_defaults(op):
    return {a.name: a.default_value for a in op._schema.arguments if a.has_default_value()}


def test_wrapper_defaults_are_the_cpp_table():
    table = defaults(_C.wrapper_fields())
    assert table["ignore_index"] == IGNORE_INDEX == -100 and table["looped_loss_slope"] == 50.0
    got = signature_defaults(arwrap_cpp.AutoregressiveWrapper.__init__)
    assert {k: got[k] for k in table} == table


def test_schema_defaults_are_the_cpp_tables():
    loss = schema_defaults(torch.ops.arwrap.autoregressive_loss.default)
    table = defaults(_C.autoregressive_loss_fields())
    assert {k: loss[k] for k in table} == table
    step = schema_defaults(torch.ops.arwrap.autoregressive_wrapper_loss.default)
    wrapper = defaults(_C.wrapper_fields())
    for k in ("ignore_index", "pad_value", "mask_prob", "mask_token_id", "add_attn_z_loss", "next_embed_loss_weight"):
        assert step[k] == wrapper[k], k
    for op in ("cross_entropy", "linear_cross_entropy", "shift_tokens"):
        assert schema_defaults(getattr(torch.ops.arwrap, op).default)["ignore_index"] == IGNORE_INDEX, op


def test_generation_defaults_are_the_cpp_tables():
    gen, beam = defaults(_C.generate_fields()), defaults(_C.beam_search_fields())
    assert gen["top_p"] == 0.9 and gen["top_a_ratio"] == 0.02 and gen["top_k"] is None
    for fn in (arwrap_cpp.TransformerWrapper.generate, arwrap_cpp.AutoregressiveWrapper.generate):
        got = signature_defaults(fn)
        for k in ("temperature", "filter_logits_fn", "cache_kv", "restrict_to_max_seq_len"):
            assert got[k] == gen[k], (fn, k)
    for fn in (arwrap_cpp.TransformerWrapper.beam_search, arwrap_cpp.AutoregressiveWrapper.beam_search):
        got = signature_defaults(fn)
        assert got["beams"] == beam["beams"] and got["stochastic"] == beam["stochastic"]
    assert beam["filter_logits_fn"] == "none"

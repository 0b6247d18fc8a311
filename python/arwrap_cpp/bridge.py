"""The one bridge to x-transformers: its ``generate`` and ``beam_search`` for any Python net
(an x-transformers net, or any other) under arwrap_cpp.AutoregressiveWrapper.

x-transformers' own code is reached through its defining module
``x_transformers.autoregressive_wrapper``, never through ``x_transformers.AutoregressiveWrapper``:
users swap a drop-in in by assigning that name (``x_transformers.AutoregressiveWrapper =
arwrap_cpp.AutoregressiveWrapper``), and a generate that looked it up there would call itself
until Python's recursion limit. When the defining module's own name was replaced too, a private
copy of that module is loaded from its file (not registered in ``sys.modules``), so the code
that runs is still x-transformers'. The native net runs both in C++ instead
(``arwrap_cpp.TransformerWrapper.generate`` / ``.beam_search``).
"""
from __future__ import annotations

import importlib
import importlib.util

from . import sampling
from .sampling import XT_MODULE

_xt_class = None


def x_transformers_wrapper():
    """x-transformers' own ``AutoregressiveWrapper`` class, from its defining module."""
    global _xt_class
    if _xt_class is not None:
        return _xt_class
    try:
        module = importlib.import_module(XT_MODULE)
    except ImportError as e:
        raise RuntimeError("arwrap_cpp.AutoregressiveWrapper: generate and beam_search on a Python net use "
                           "x-transformers' code: pip install x-transformers") from e
    cls = module.__dict__.get("AutoregressiveWrapper")
    # arwrap_cpp's wrapper (and any subclass of it) carries _arwrap_dropin
    if not (isinstance(cls, type) and cls.__module__ == XT_MODULE and not getattr(cls, "_arwrap_dropin", False)):
        # x_transformers.autoregressive_wrapper.AutoregressiveWrapper was replaced: run the
        # module's code again, privately, for the original class
        spec = importlib.util.find_spec(XT_MODULE)
        private = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(private)
        cls = private.AutoregressiveWrapper
    _xt_class = cls
    return cls


def _filters(kw: dict, filter_logits_fn, filter_kwargs) -> dict:
    """x-transformers' own defaults stand where the caller gave nothing."""
    if filter_logits_fn is not None:
        kw["filter_logits_fn"] = filter_logits_fn
    if filter_kwargs is not None:
        kw["filter_kwargs"] = filter_kwargs
    return kw


def generate(wrapper, prompts, seq_len, *, eos_token, temperature, prompt_lens, filter_logits_fn,
             restrict_to_max_seq_len, amateur_model, filter_kwargs, contrastive_decode_kwargs, cache_kv,
             return_intermediates, **kwargs):
    where = "AutoregressiveWrapper.generate"
    sampling.check_common(where, seq_len, temperature, filter_logits_fn, filter_kwargs)
    kw = _filters(dict(eos_token=eos_token, temperature=temperature, prompt_lens=prompt_lens,
                       restrict_to_max_seq_len=restrict_to_max_seq_len, cache_kv=cache_kv,
                       return_intermediates=return_intermediates, **kwargs), filter_logits_fn, filter_kwargs)
    if contrastive_decode_kwargs is not None:
        kw["contrastive_decode_kwargs"] = contrastive_decode_kwargs
    if amateur_model is not None:
        # x-transformers unwraps amateur wrappers by its own class only
        kw["amateur_model"] = tuple(sampling.unwrap(m) for m in amateur_model) \
            if isinstance(amateur_model, (tuple, list)) else sampling.unwrap(amateur_model)
    return x_transformers_wrapper().generate(wrapper, prompts, seq_len, **kw)


def beam_search(wrapper, prompts, seq_len, *, beams, return_beams_and_scores, eos_token, temperature, stochastic,
                prompt_lens, filter_logits_fn, restrict_to_max_seq_len, filter_kwargs, cache_kv, **kwargs):
    where = "AutoregressiveWrapper.beam_search"
    sampling.check_common(where, seq_len, temperature, filter_logits_fn, filter_kwargs)
    sampling.check_beam_search(where, beams, eos_token)
    kw = _filters(dict(beams=beams, return_beams_and_scores=return_beams_and_scores, temperature=temperature,
                       stochastic=stochastic, prompt_lens=prompt_lens,
                       restrict_to_max_seq_len=restrict_to_max_seq_len, cache_kv=cache_kv, **kwargs),
                  filter_logits_fn, filter_kwargs)
    return x_transformers_wrapper().beam_search(wrapper, prompts, seq_len, **kw)

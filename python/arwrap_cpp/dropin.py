"""What makes arwrap_cpp.AutoregressiveWrapper a complete drop-in for x-transformers 2.31.10's:
``generate`` and ``beam_search`` for every kind of net.

* An x-transformers net (or any other Python net) runs x-transformers' own ``generate`` /
  ``beam_search``, reached through its defining module ``x_transformers.autoregressive_wrapper``.
  Never through ``x_transformers.AutoregressiveWrapper``: users swap a drop-in in by assigning
  that name (``x_transformers.AutoregressiveWrapper = arwrap_cpp.AutoregressiveWrapper``), and a
  generate that looked it up there would call itself until Python's recursion limit. When the
  defining module's own name was replaced too, a private copy of that module is loaded from its
  file (not registered in ``sys.modules``), so the code that runs is still x-transformers'.
* The native net (``arwrap_cpp.TransformerWrapper``) runs both in C++ (``arwrap::generate``,
  ``arwrap::beam_search``) with the key/value cache.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Optional

import torch
from torch import Tensor, nn

from . import _C

XT_MODULE = "x_transformers.autoregressive_wrapper"
_xt_class = None

# x-transformers' named logit filters and their keyword arguments (filter_kwargs)
FILTERS = {
    "top_k": ("frac_num_tokens", "k"),
    "top_p": ("thres",),
    "top_a": ("min_p_pow", "min_p_ratio"),
    "min_p": ("min_p",),
}


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
    from .wrapper import AutoregressiveWrapper
    cls = module.__dict__.get("AutoregressiveWrapper")
    if not (isinstance(cls, type) and cls.__module__ == XT_MODULE and not issubclass(cls, AutoregressiveWrapper)):
        # x_transformers.autoregressive_wrapper.AutoregressiveWrapper was replaced: run the
        # module's code again, privately, for the original class
        spec = importlib.util.find_spec(XT_MODULE)
        private = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(private)
        cls = private.AutoregressiveWrapper
    _xt_class = cls
    return cls


def _unwrap(model):
    """A wrapper (ours or x-transformers') given as an amateur model -> its net."""
    from .wrapper import AutoregressiveWrapper
    if isinstance(model, AutoregressiveWrapper) or (isinstance(model, nn.Module) and hasattr(model, "net") and
                                                    type(model).__name__ == "AutoregressiveWrapper"):
        return model.net
    return model


def _filter_name(fn):
    """'top_k' for 'top_k' or x-transformers' top_k function; None for anything else."""
    if fn is None:
        return "none"
    if isinstance(fn, str):
        return fn
    name = getattr(fn, "__name__", None)
    if name == "identity":
        return "none"
    if name in FILTERS and getattr(fn, "__module__", None) == XT_MODULE:
        return name
    return None


def _check_common(where: str, seq_len, temperature, filter_logits_fn, filter_kwargs):
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 0:
        raise ValueError(f"{where}: seq_len must be >= 0 (an int), got {seq_len!r}")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature >= 0:
        raise ValueError(f"{where}: temperature must be a number >= 0, got {temperature!r}")
    if isinstance(filter_logits_fn, str) and filter_logits_fn not in FILTERS:
        raise ValueError(f"{where}: filter_logits_fn must be one of {sorted(FILTERS)} or a callable, "
                         f"got {filter_logits_fn!r}")
    if filter_kwargs is not None and not isinstance(filter_kwargs, dict):
        raise ValueError(f"{where}: filter_kwargs must be a dict, got {type(filter_kwargs).__name__}")


def _prompts_to_tensor(where: str, prompts, prompt_lens):
    """x-transformers' list-of-prompts form -> (padded prompts, prompt_lens)."""
    if isinstance(prompts, (list, tuple)):
        if len(prompts) == 0:
            raise ValueError(f"{where}: prompts must not be an empty list")
        if prompt_lens is not None:
            raise ValueError(f"{where}: prompt_lens is derived from a list of prompts; do not pass both")
        if not all(isinstance(t, Tensor) and t.dim() == 1 for t in prompts):
            raise ValueError(f"{where}: a list of prompts must hold 1-D tensors of token ids")
        prompt_lens = torch.tensor([t.shape[0] for t in prompts], device=prompts[0].device)
        prompts = nn.utils.rnn.pad_sequence(list(prompts), batch_first=True)
    if not isinstance(prompts, Tensor):
        raise ValueError(f"{where}: prompts must be a Tensor of token ids or a list of them, "
                         f"got {type(prompts).__name__}")
    if prompt_lens is not None:
        if not isinstance(prompt_lens, Tensor) or prompt_lens.dim() != 1 or prompts.dim() != 2 or \
                prompt_lens.shape[0] != prompts.shape[0]:
            shape = tuple(prompt_lens.shape) if isinstance(prompt_lens, Tensor) else type(prompt_lens).__name__
            raise ValueError(f"{where}: prompt_lens must be a 1-D tensor with one length per prompt "
                             f"(batch={prompts.shape[0] if prompts.dim() == 2 else 'none'}), got {shape}")
        if bool((prompt_lens < 1).any()) or bool((prompt_lens > prompts.shape[-1]).any()):
            raise ValueError(f"{where}: prompt_lens must be in [1, {prompts.shape[-1]}], got {prompt_lens.tolist()}")
    return prompts, prompt_lens


# ------------------------------------------------------------------ x-transformers nets

def generate_x_transformers(wrapper, prompts, seq_len, *, eos_token, temperature, prompt_lens, filter_logits_fn,
                            restrict_to_max_seq_len, amateur_model, filter_kwargs, contrastive_decode_kwargs,
                            cache_kv, return_intermediates, **kwargs):
    where = "AutoregressiveWrapper.generate"
    _check_common(where, seq_len, temperature, filter_logits_fn, filter_kwargs)
    xt = x_transformers_wrapper()
    kw = dict(eos_token=eos_token, temperature=temperature, prompt_lens=prompt_lens,
              restrict_to_max_seq_len=restrict_to_max_seq_len, cache_kv=cache_kv,
              return_intermediates=return_intermediates, **kwargs)
    if filter_logits_fn is not None:
        kw["filter_logits_fn"] = filter_logits_fn
    if filter_kwargs is not None:
        kw["filter_kwargs"] = filter_kwargs
    if contrastive_decode_kwargs is not None:
        kw["contrastive_decode_kwargs"] = contrastive_decode_kwargs
    if amateur_model is not None:
        # x-transformers unwraps amateur wrappers by its own class only
        kw["amateur_model"] = tuple(_unwrap(m) for m in amateur_model) if isinstance(amateur_model, (tuple, list)) \
            else _unwrap(amateur_model)
    return xt.generate(wrapper, prompts, seq_len, **kw)


def beam_search(wrapper, prompts, seq_len, *, beams, return_beams_and_scores, eos_token, temperature, stochastic,
                prompt_lens, filter_logits_fn, restrict_to_max_seq_len, filter_kwargs, cache_kv, **kwargs):
    where = "AutoregressiveWrapper.beam_search"
    _check_common(where, seq_len, temperature, filter_logits_fn, filter_kwargs)
    if isinstance(beams, bool) or not isinstance(beams, int) or beams < 1:
        raise ValueError(f"{where}: beams must be an int >= 1, got {beams!r}")
    if eos_token is not None:
        # x-transformers 2.31.10 asserts the same ('eos token not supported yet')
        raise ValueError(f"{where}: eos_token is not supported by x-transformers 2.31.10's beam_search, "
                         f"got eos_token={eos_token!r}")
    if wrapper._native:
        return beam_search_native(wrapper, prompts, seq_len, beams=beams,
                                  return_beams_and_scores=return_beams_and_scores, temperature=temperature,
                                  stochastic=stochastic, prompt_lens=prompt_lens, filter_logits_fn=filter_logits_fn,
                                  restrict_to_max_seq_len=restrict_to_max_seq_len, filter_kwargs=filter_kwargs,
                                  cache_kv=cache_kv, **kwargs)
    xt = x_transformers_wrapper()
    kw = dict(beams=beams, return_beams_and_scores=return_beams_and_scores, temperature=temperature,
              stochastic=stochastic, prompt_lens=prompt_lens, restrict_to_max_seq_len=restrict_to_max_seq_len,
              cache_kv=cache_kv, **kwargs)
    if filter_logits_fn is not None:
        kw["filter_logits_fn"] = filter_logits_fn
    if filter_kwargs is not None:
        kw["filter_kwargs"] = filter_kwargs
    return xt.beam_search(wrapper, prompts, seq_len, **kw)


# ------------------------------------------------------------------ the native net, in C++

def _native_filter(where, filter_logits_fn, filter_kwargs, default="top_k"):
    fn = _filter_name(default if filter_logits_fn is None else filter_logits_fn)
    if fn is None:
        raise ValueError(f"{where}: the native net runs generation in C++, so filter_logits_fn must be one of "
                         f"{sorted(FILTERS)} (a name, or x-transformers' function of that name), "
                         f"got {filter_logits_fn!r}")
    fk = dict(filter_kwargs or {})
    allowed = set(FILTERS.get(fn, ()))
    if set(fk) - allowed:
        raise ValueError(f"{where}: filter_kwargs {sorted(set(fk) - allowed)} do not apply to {fn} "
                         f"(it takes {sorted(allowed)})")
    return fn, fk


def _sampling_options(fn, fk):
    """The C++ GenerateOptions fields, as a dict for _C."""
    k = fk.get("k")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int)):
        raise ValueError(f"generate: filter_kwargs k must be an int, got {k!r}")
    return dict(filter_logits_fn=fn, top_k=k, top_k_frac=float(fk.get("frac_num_tokens", 0.1)),
                top_p=float(fk.get("thres", 0.9)), min_p=float(fk.get("min_p", 0.1)),
                top_a_pow=float(fk.get("min_p_pow", 2.0)), top_a_ratio=float(fk.get("min_p_ratio", 0.02)))


def generate_native(wrapper, prompts, seq_len, *, eos_token, temperature, prompt_lens, filter_logits_fn,
                    restrict_to_max_seq_len, amateur_model, filter_kwargs, contrastive_decode_kwargs, cache_kv,
                    return_intermediates, generator: Optional[torch.Generator] = None, **kwargs):
    from .transformer import TransformerWrapper
    where = "AutoregressiveWrapper.generate"
    if kwargs:
        raise ValueError(f"{where}: the native net takes no extra keyword arguments, got {sorted(kwargs)}")
    if return_intermediates:
        raise ValueError(f"{where}: return_intermediates=True returns x-transformers' LayerIntermediates cache, "
                         "which the native net (whose cache lives in C++) does not have")
    _check_common(where, seq_len, temperature, filter_logits_fn, filter_kwargs)
    prompts, prompt_lens = _prompts_to_tensor(where, prompts, prompt_lens)
    amateurs, cd = [], []
    if amateur_model is not None:
        models = list(amateur_model) if isinstance(amateur_model, (tuple, list)) else [amateur_model]
        cdk = contrastive_decode_kwargs if contrastive_decode_kwargs is not None else dict(beta=0.5, alpha=0.1)
        cdk = list(cdk) if isinstance(cdk, (tuple, list)) else [cdk] * 1
        if len(cdk) != len(models):
            raise ValueError(f"{where}: contrastive_decode_kwargs must hold one dict per amateur model "
                             f"({len(models)}), got {len(cdk)}")
        for m, kw in zip(models, cdk):
            m = _unwrap(m)
            if not isinstance(m, TransformerWrapper):
                raise ValueError(f"{where}: with the native net, amateur_model must be native nets "
                                 f"(arwrap_cpp.TransformerWrapper) too, got {type(m).__name__}")
            if m.num_tokens != wrapper.net.num_tokens:
                raise ValueError(f"{where}: amateur_model has num_tokens={m.num_tokens}, the expert "
                                 f"{wrapper.net.num_tokens}: their logits must have the same size")
            if set(kw) - {"alpha", "beta"}:
                raise ValueError(f"{where}: contrastive_decode_kwargs takes alpha and beta, got {sorted(kw)}")
            amateurs.append(m)
            cd.append((float(kw.get("alpha", 0.1)), float(kw.get("beta", 0.5))))
        filter_logits_fn = "none"  # x-transformers turns the filter off for contrastive decoding
    fn, fk = _native_filter(where, filter_logits_fn, filter_kwargs)
    net = wrapper.net
    nets = [net] + amateurs
    states = [m.training for m in nets]
    for m in nets:
        m.eval()
    try:
        return _C.generate(net.config, net.weights(), prompts, int(seq_len), float(temperature),
                           eos_token=eos_token, pad_value=int(wrapper.pad_value), cache_kv=bool(cache_kv),
                           prompt_lens=prompt_lens, restrict_to_max_seq_len=bool(restrict_to_max_seq_len),
                           amateur_configs=[m.config for m in amateurs],
                           amateur_weights=[m.weights() for m in amateurs],
                           contrastive_alpha=[a for a, _ in cd], contrastive_beta=[b for _, b in cd],
                           generator=generator, **_sampling_options(fn, fk))
    finally:
        for m, s in zip(nets, states):
            m.train(s)


def beam_search_native(wrapper, prompts, seq_len, *, beams, return_beams_and_scores, temperature, stochastic,
                       prompt_lens, filter_logits_fn, restrict_to_max_seq_len, filter_kwargs, cache_kv,
                       generator: Optional[torch.Generator] = None, **kwargs):
    where = "AutoregressiveWrapper.beam_search"
    if kwargs:
        raise ValueError(f"{where}: the native net takes no extra keyword arguments, got {sorted(kwargs)}")
    if not isinstance(prompts, Tensor):
        raise ValueError(f"{where}: prompts must be a Tensor of token ids, got {type(prompts).__name__}")
    _, prompt_lens = _prompts_to_tensor(where, prompts, prompt_lens)
    fn, fk = _native_filter(where, filter_logits_fn, filter_kwargs, default="none")
    net = wrapper.net
    was_training = net.training
    net.eval()
    try:
        out, scores = _C.beam_search(net.config, net.weights(), prompts, int(seq_len), int(beams),
                                     float(temperature), bool(stochastic), pad_value=int(wrapper.pad_value),
                                     cache_kv=bool(cache_kv), prompt_lens=prompt_lens,
                                     restrict_to_max_seq_len=bool(restrict_to_max_seq_len), generator=generator,
                                     **_sampling_options(fn, fk))
    finally:
        net.train(was_training)
    # C++ returns (batch, beams, seq_len) / (batch, beams), best first, like x-transformers before its rearrange
    if prompts.dim() == 1:  # C++ gives (beams, seq_len), (beams)
        if not return_beams_and_scores:
            return out[0]
        return out, scores
    if not return_beams_and_scores:
        return out[:, 0]
    return out.transpose(0, 1).contiguous(), scores.transpose(0, 1).contiguous()

"""Generation's arguments, checked and turned into the C++ sampling options: the lowest layer
of the package above _C (it imports nothing else of arwrap_cpp).

x-transformers' ``generate`` and ``beam_search`` take a logit filter (a name, or one of
x-transformers' own filter functions) with its ``filter_kwargs``, a temperature, prompts as a
tensor or a list of tensors, and amateur models for contrastive decoding. The native net
(transformer.py) runs generation in C++, so it needs them as the fields of
``arwrap::GenerateOptions``; x-transformers nets (bridge.py) need only the common checks.
Every error names the calling function (``where``) and the argument.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import _C

# The module that defines x-transformers' logit filters (top_k, top_p, ...) and its wrapper.
XT_MODULE = "x_transformers.autoregressive_wrapper"

# x-transformers' named logit filters and their keyword arguments (filter_kwargs)
FILTERS = {
    "top_k": ("frac_num_tokens", "k"),
    "top_p": ("thres",),
    "top_a": ("min_p_pow", "min_p_ratio"),
    "min_p": ("min_p",),
}

# The C++ GenerateOptions defaults, from its one table (_C.generate_fields(): name, type, default)
GENERATE_DEFAULTS = {name: default for name, _, default in _C.generate_fields()}
# which GenerateOptions field each filter_kwargs key sets
FILTER_KWARG_FIELDS = {"k": "top_k", "frac_num_tokens": "top_k_frac", "thres": "top_p", "min_p": "min_p",
                       "min_p_pow": "top_a_pow", "min_p_ratio": "top_a_ratio"}
# x-transformers' contrastive decoding defaults (contrastive_decode_kwargs)
CONTRASTIVE_DEFAULTS = dict(beta=0.5, alpha=0.1)


def filter_name(fn):
    """'top_k' for 'top_k' or x-transformers' top_k function; 'none' for None or identity;
    None for anything else."""
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


def check_common(where: str, seq_len, temperature, filter_logits_fn, filter_kwargs) -> None:
    """The checks generate and beam_search make for every kind of net."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 0:
        raise ValueError(f"{where}: seq_len must be >= 0 (an int), got {seq_len!r}")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature >= 0:
        raise ValueError(f"{where}: temperature must be a number >= 0, got {temperature!r}")
    if isinstance(filter_logits_fn, str) and filter_logits_fn not in FILTERS:
        raise ValueError(f"{where}: filter_logits_fn must be one of {sorted(FILTERS)} or a callable, "
                         f"got {filter_logits_fn!r}")
    if filter_kwargs is not None and not isinstance(filter_kwargs, dict):
        raise ValueError(f"{where}: filter_kwargs must be a dict, got {type(filter_kwargs).__name__}")


def check_beam_search(where: str, beams, eos_token) -> None:
    """What beam_search adds to check_common, for every kind of net."""
    if isinstance(beams, bool) or not isinstance(beams, int) or beams < 1:
        raise ValueError(f"{where}: beams must be an int >= 1, got {beams!r}")
    if eos_token is not None:
        # x-transformers 2.31.10 asserts the same ('eos token not supported yet')
        raise ValueError(f"{where}: eos_token is not supported by x-transformers 2.31.10's beam_search, "
                         f"got eos_token={eos_token!r}")


def prompts_to_tensor(where: str, prompts, prompt_lens):
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


def unwrap(model):
    """A wrapper (arwrap_cpp's or x-transformers', both named AutoregressiveWrapper) given as
    an amateur model -> its net; anything else as it is."""
    if isinstance(model, nn.Module) and isinstance(getattr(model, "net", None), nn.Module) and \
            type(model).__name__ == "AutoregressiveWrapper":
        return model.net
    return model


def amateurs_and_weights(where: str, amateur_model, contrastive_decode_kwargs):
    """amateur_model (one model or several, wrappers unwrapped) and contrastive_decode_kwargs
    (one dict, or one per amateur) -> [(amateur, alpha, beta)]."""
    if amateur_model is None:
        return []
    models = list(amateur_model) if isinstance(amateur_model, (tuple, list)) else [amateur_model]
    cdk = contrastive_decode_kwargs if contrastive_decode_kwargs is not None else CONTRASTIVE_DEFAULTS
    cdk = list(cdk) if isinstance(cdk, (tuple, list)) else [cdk]
    if len(cdk) != len(models):
        raise ValueError(f"{where}: contrastive_decode_kwargs must hold one dict per amateur model "
                         f"({len(models)}), got {len(cdk)}")
    out = []
    for m, kw in zip(models, cdk):
        if set(kw) - set(CONTRASTIVE_DEFAULTS):
            raise ValueError(f"{where}: contrastive_decode_kwargs takes alpha and beta, got {sorted(kw)}")
        kw = {**CONTRASTIVE_DEFAULTS, **kw}
        out.append((unwrap(m), float(kw["alpha"]), float(kw["beta"])))
    return out


def native_filter(where: str, filter_logits_fn, filter_kwargs, default="top_k"):
    """The filter as a name the C++ generation knows, with its checked filter_kwargs."""
    fn = filter_name(default if filter_logits_fn is None else filter_logits_fn)
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


def sampling_options(where: str, fn: str, fk: dict) -> dict:
    """The C++ GenerateOptions sampling fields, as keywords for _C.generate / _C.beam_search:
    filter_kwargs given, GenerateOptions' defaults for the rest."""
    k = fk.get("k")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int)):
        raise ValueError(f"{where}: filter_kwargs k must be an int, got {k!r}")
    options = dict(filter_logits_fn=fn, top_k=k)
    for key, field in FILTER_KWARG_FIELDS.items():
        if key != "k":
            options[field] = float(fk.get(key, GENERATE_DEFAULTS[field]))
    return options

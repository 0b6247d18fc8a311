"""arwrap_cpp.TransformerWrapper / arwrap_cpp.Decoder: the native net.

Constructed with x-transformers' arguments (the decoder-only subset most LMs use),
with x-transformers' parameter names and shapes, so ``load_state_dict`` works both
ways. The forward is the C++ ``arwrap::transformer_forward`` (through
``torch.ops.arwrap.transformer_wrapper_forward``): attention via
``scaled_dot_product_attention``, the attention z-loss via ``attention_lse``.
The parameter names come from C++ too (``_C.transformer_parameters``): one source.
In eval mode without autograd, and under ``torch.export``, the forward is the inference
operator ``torch.ops.arwrap.transformer_wrapper_logits`` instead (no autograd, sizes kept
symbolic for export); ``decode`` is one step with the key/value cache
(``transformer_wrapper_decode``). ``arwrap_cpp.export`` exports and compiles them.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor, nn

from . import _C, sampling
from .options import defaults

GENERATE_DEFAULTS = defaults(_C.generate_fields())
BEAM_SEARCH_DEFAULTS = defaults(_C.beam_search_fields())


@contextlib.contextmanager
def _eval(nets):
    """The nets in eval mode for the block (generation runs no dropout), then as they were."""
    states = [m.training for m in nets]
    for m in nets:
        m.eval()
    try:
        yield
    finally:
        for m, s in zip(nets, states):
            m.train(s)


def _field_value(key: str, typ: str, text: str):
    """A configuration-string value as Python's x-transformers argument."""
    if typ == "bool":
        return text == "true"
    if typ == "float":
        return float(text)
    value = int(text)
    return None if key == "rotary_emb_dim" and value == 0 else value  # 0 stands for x-transformers' None


# The configuration's fields, from C++ (the one table): (key, type, is a Decoder option, default or "")
_FIELDS = [tuple(f) for f in _C.transformer_fields()]
# x-transformers' Decoder / TransformerWrapper arguments we implement, with their defaults
DECODER_DEFAULTS = {k: _field_value(k, t, d) for k, t, dec, d in _FIELDS if dec and d != ""}
WRAPPER_DEFAULTS = {k: _field_value(k, t, d) for k, t, dec, d in _FIELDS if not dec and d != ""}
# Decoder options that are ours alone: how the native net runs, not what it computes
# (x_transformers.Decoder has no such argument)
NATIVE_ONLY_DECODER_OPTIONS = ("checkpoint_layers",)


def parse_config(config: str) -> tuple[dict, dict]:
    """The configuration string as ``(TransformerWrapper kwargs, Decoder kwargs)``, in
    the names x-transformers and arwrap_cpp share (``rotary_emb_dim=0`` becomes ``None``)."""
    config = _C.transformer_config(config)  # ValueError on unknown keys / bad values; canonical order
    kinds = {k: (t, dec) for k, t, dec, _ in _FIELDS}
    wrapper, decoder = {}, {}
    for item in config.split(","):
        key, _, text = item.partition("=")
        typ, is_decoder = kinds[key]
        (decoder if is_decoder else wrapper)[key] = _field_value(key, typ, text)
    return wrapper, decoder


def _refuse(where: str, unknown, supported) -> None:
    if unknown:
        raise ValueError(
            f"arwrap_cpp.{where}: unsupported x-transformers option(s) {sorted(unknown)}; the native net implements "
            f"{sorted(supported)} (use x_transformers.{where} with arwrap_cpp.AutoregressiveWrapper for the others)"
        )


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


class _Node(nn.Module):
    """A container that only gives its children x-transformers' names (``layers.0.1.to_q``)."""

    def __getitem__(self, i):
        return getattr(self, str(i))


def _build(root: nn.Module, names, shapes, prefix: str, strip: bool = False) -> None:
    """Creates the parameters ``names`` (shapes ``shapes``) that start with ``prefix`` under
    ``root`` (without the prefix in their path when ``strip``)."""
    for name, shape in zip(names, shapes):
        if not name.startswith(prefix):
            continue
        *path, leaf = (name[len(prefix):] if strip else name).split(".")
        mod = root
        for part in path:
            child = mod._modules.get(part)
            if child is None:
                child = _Node()
                mod.add_module(part, child)
            mod = child
        mod.register_parameter(leaf, nn.Parameter(torch.empty(shape)))


class Decoder(nn.Module):
    """``x_transformers.Decoder`` (causal pre-norm attention layers), the supported subset:

    ``dim``, ``depth``, ``heads=8``, ``attn_dim_head=64``, ``ff_mult=4``, ``ff_glu``,
    ``ff_swish``, ``rotary_pos_emb``, ``rotary_emb_dim``, ``use_rmsnorm``,
    ``attn_qk_norm`` (+ ``attn_qk_norm_scale=10``), ``attn_dropout``, ``ff_dropout``,
    ``norm_add_unit_offset=True``.
    Any other option raises ``ValueError``: never silently ignored.

    One option is ours (x-transformers has none like it): ``checkpoint_layers=False``. With
    ``True``, in a forward that records gradients each layer keeps only its input and runs
    itself again in the backward (activation checkpointing, as ``torch.utils.checkpoint``
    would, in C++): the same loss and gradients (bit for bit in float32 and, tested without
    dropout, under bf16 autocast; dropout replays its random state), less memory, about one more
    forward of the attention blocks per step. Not twice differentiable.
    """

    def __init__(self, *, dim: int, depth: int, **kwargs):
        super().__init__()
        if "causal" in kwargs:
            raise ValueError("arwrap_cpp.Decoder: cannot set causality on a decoder (it is always causal)")
        _refuse("Decoder", set(kwargs) - set(DECODER_DEFAULTS), {"dim", "depth", *DECODER_DEFAULTS})
        cfg = {**DECODER_DEFAULTS, **kwargs}
        for key, value in cfg.items():
            if isinstance(DECODER_DEFAULTS[key], bool) and not isinstance(value, bool):
                raise ValueError(f"arwrap_cpp.Decoder: {key} must be a bool, got {value!r}")
        self.dim, self.depth = int(dim), int(depth)
        self.config = {"dim": self.dim, "depth": self.depth, **cfg}
        self.heads = cfg["heads"]
        self.causal = True
        # the layers are created by TransformerWrapper, which knows the whole configuration

    def _config_items(self):
        items = dict(self.config)
        items["rotary_emb_dim"] = items["rotary_emb_dim"] or 0
        return items


class _Intermediates:
    """What ``return_intermediates=True`` returns beside the logits (x-transformers' LayerIntermediates subset)."""

    def __init__(self, attn_z_loss: Optional[Tensor] = None):
        self.attn_z_loss = attn_z_loss


class TransformerWrapper(nn.Module):
    """``x_transformers.TransformerWrapper(num_tokens, max_seq_len, attn_layers=Decoder(...))``, native.

    Supported arguments: ``num_tokens``, ``max_seq_len``, ``attn_layers`` (an
    ``arwrap_cpp.Decoder``), ``emb_dropout``, ``use_abs_pos_emb``, ``tie_embedding``,
    ``add_continuous_pred_head``, ``attn_z_loss_weight``; the rest raise ``ValueError``.

    ``forward(x, return_embeddings=False, return_intermediates=False, prepend_embeds=None,
    self_attn_kv_mask=None, return_attn_z_loss=False, return_next_embed_pred=False)``
    returns what x-transformers' does for these arguments, so the module also runs
    under x-transformers' own ``AutoregressiveWrapper``.
    """

    def __init__(self, *, num_tokens: int, max_seq_len: int, attn_layers: Decoder, **kwargs):
        super().__init__()
        if not isinstance(attn_layers, Decoder):
            raise ValueError(f"arwrap_cpp.TransformerWrapper: attn_layers must be an arwrap_cpp.Decoder, got "
                             f"{type(attn_layers).__name__}")
        _refuse("TransformerWrapper", set(kwargs) - set(WRAPPER_DEFAULTS),
                {"num_tokens", "max_seq_len", "attn_layers", *WRAPPER_DEFAULTS})
        cfg = {**WRAPPER_DEFAULTS, **kwargs}
        self.num_tokens, self.max_seq_len = int(num_tokens), int(max_seq_len)
        self.emb_dropout = float(cfg["emb_dropout"])
        self.use_abs_pos_emb = bool(cfg["use_abs_pos_emb"])
        self.tie_embedding = bool(cfg["tie_embedding"])
        self.add_continuous_pred_head = bool(cfg["add_continuous_pred_head"])
        self.attn_z_loss_weight = float(cfg["attn_z_loss_weight"])
        items = {"num_tokens": self.num_tokens, "max_seq_len": self.max_seq_len, **attn_layers._config_items(),
                 **{k: cfg[k] for k in WRAPPER_DEFAULTS}}
        # parsed, validated and printed by C++ (ValueError naming a bad value)
        self.config: str = _C.transformer_config(",".join(f"{k}={_fmt(v)}" for k, v in items.items()))
        names, shapes, rotary_dim = _C.transformer_parameters(self.config)
        self._param_names = list(names)
        self.output_is_log_prob = False
        self.looped = False
        self.can_cache_kv = True
        self.can_cache_kv_outside_max_seq_len = not self.use_abs_pos_emb
        if self.tie_embedding:
            self.tie_embedding_scale = attn_layers.dim ** -0.5

        _build(self, names, shapes, prefix="token_emb.")
        _build(self, names, shapes, prefix="pos_emb.")
        self.attn_layers = attn_layers
        _build(attn_layers, names, shapes, prefix="attn_layers.", strip=True)
        if rotary_dim > 0:
            rotary = _Node()
            rotary.register_buffer("inv_freq", _C.transformer_rotary_inv_freq(self.config))
            attn_layers.add_module("rotary_pos_emb", rotary)
        _build(self, names, shapes, prefix="to_logits.")
        _build(self, names, shapes, prefix="to_next_embed_pred.")
        _C.transformer_init_parameters(self.config, self.weights())  # as x-transformers initialises them

    # the parameters in the order the C++ forward takes them
    def weights(self) -> list:
        params = dict(self.named_parameters())
        return [params[n] for n in self._param_names]

    def forward(
        self,
        x: Tensor,
        return_embeddings: bool = False,
        return_intermediates: bool = False,
        mask: Optional[Tensor] = None,
        prepend_embeds: Optional[Tensor] = None,
        self_attn_kv_mask: Optional[Tensor] = None,
        return_attn_z_loss: bool = False,
        return_next_embed_pred: bool = False,
        **kwargs,
    ):
        kwargs.pop("looped_pred_all_logits", None)  # what x-transformers' wrapper passes; we have no loops
        if mask is not None:
            raise ValueError("arwrap_cpp.TransformerWrapper: mask (padding of the input) is not supported; "
                             "pad with ignored targets (lens / ignore_index in the wrapper) instead")
        if kwargs:
            raise ValueError(f"arwrap_cpp.TransformerWrapper.forward: unsupported argument(s) {sorted(kwargs)}")
        if (not self.training and prepend_embeds is None and self_attn_kv_mask is None and not return_intermediates
                and not return_attn_z_loss and not return_next_embed_pred
                and (not torch.is_grad_enabled() or torch.compiler.is_exporting())):
            # inference: the operator torch.export keeps with dynamic shapes (no autograd)
            return torch.ops.arwrap.transformer_wrapper_logits(x, self.weights(), self.config, bool(return_embeddings))
        out, z, nxt, init = torch.ops.arwrap.transformer_wrapper_forward(
            x, self.weights(), self.config, self.training, prepend_embeds, self_attn_kv_mask,
            bool(return_embeddings), bool(return_attn_z_loss), bool(return_next_embed_pred))
        result = (out, (nxt, init)) if return_next_embed_pred else out
        if return_intermediates or return_attn_z_loss:
            return result, _Intermediates(z if return_attn_z_loss else None)
        return result

    def decode(self, tokens: Tensor, k_cache: Tensor, v_cache: Tensor, offset: Optional[Tensor] = None):
        """One decoding step against the key/value cache, for inference (no autograd; eval mode):
        ``(logits (batch, n, num_tokens), k_cache, v_cache)`` after the ``n`` new ``tokens``.
        The caches hold every layer's keys (values), ``(depth, batch, heads, cached, dim_head)``;
        start from :meth:`empty_cache` (``cached = 0``: the prompt's step). ``offset`` (0-dim
        int64, default 0) is the absolute position of the first cached key, for a caller that
        drops the oldest positions as the window slides. ``torch.export`` keeps this call as the
        operator ``torch.ops.arwrap.transformer_wrapper_decode`` with dynamic sizes."""
        if offset is None:
            offset = torch.zeros((), dtype=torch.long)
        return torch.ops.arwrap.transformer_wrapper_decode(tokens, self.weights(), self.config, k_cache, v_cache,
                                                           offset)

    def empty_cache(self, batch: int = 1) -> tuple[Tensor, Tensor]:
        """The key/value caches :meth:`decode` starts from: ``(depth, batch, heads, 0, dim_head)``
        each, in the weights' dtype and device."""
        d = self.attn_layers
        w = self.token_emb.emb.weight
        shape = (d.depth, int(batch), d.heads, 0, d.config["attn_dim_head"])
        return w.new_zeros(shape), w.new_zeros(shape)

    def generate(self, prompts, seq_len: int, eos_token: Optional[int] = None,
                 temperature: float = GENERATE_DEFAULTS["temperature"],
                 filter_logits_fn=GENERATE_DEFAULTS["filter_logits_fn"], filter_kwargs: Optional[dict] = None,
                 cache_kv: bool = GENERATE_DEFAULTS["cache_kv"], pad_value: int = GENERATE_DEFAULTS["pad_value"],
                 generator: Optional[torch.Generator] = None, *, prompt_lens: Optional[Tensor] = None,
                 restrict_to_max_seq_len: bool = GENERATE_DEFAULTS["restrict_to_max_seq_len"], amateur_model=None,
                 contrastive_decode_kwargs=None, where: str = "TransformerWrapper.generate") -> Tensor:
        """x-transformers' ``AutoregressiveWrapper.generate`` for this net, in C++ (``arwrap::generate``,
        with the key/value cache): the ``seq_len`` tokens after ``prompts`` (a tensor, or a list of
        1-D tensors), with ``prompt_lens``, ``eos_token``, the logit filters, and contrastive
        decoding against native amateur nets. ``arwrap_cpp.AutoregressiveWrapper.generate`` calls
        this (``where`` names the caller in errors)."""
        sampling.check_common(where, seq_len, temperature, filter_logits_fn, filter_kwargs)
        prompts, prompt_lens = sampling.prompts_to_tensor(where, prompts, prompt_lens)
        amateurs = sampling.amateurs_and_weights(where, amateur_model, contrastive_decode_kwargs)
        for m, _, _ in amateurs:
            if not isinstance(m, TransformerWrapper):
                raise ValueError(f"{where}: with the native net, amateur_model must be native nets "
                                 f"(arwrap_cpp.TransformerWrapper) too, got {type(m).__name__}")
            if m.num_tokens != self.num_tokens:
                raise ValueError(f"{where}: amateur_model has num_tokens={m.num_tokens}, the expert "
                                 f"{self.num_tokens}: their logits must have the same size")
        if amateurs:
            filter_logits_fn = "none"  # x-transformers turns the filter off for contrastive decoding
        fn, fk = sampling.native_filter(where, filter_logits_fn, filter_kwargs)
        nets = [self] + [m for m, _, _ in amateurs]
        with _eval(nets):
            return _C.generate(self.config, self.weights(), prompts, int(seq_len), float(temperature),
                               eos_token=eos_token, pad_value=int(pad_value), cache_kv=bool(cache_kv),
                               prompt_lens=prompt_lens, restrict_to_max_seq_len=bool(restrict_to_max_seq_len),
                               amateur_configs=[m.config for m, _, _ in amateurs],
                               amateur_weights=[m.weights() for m, _, _ in amateurs],
                               contrastive_alpha=[a for _, a, _ in amateurs],
                               contrastive_beta=[b for _, _, b in amateurs],
                               generator=generator, **sampling.sampling_options(where, fn, fk))

    def beam_search(self, prompts: Tensor, seq_len: int, beams: int = BEAM_SEARCH_DEFAULTS["beams"],
                    return_beams_and_scores: bool = False, eos_token: Optional[int] = None,
                    temperature: float = GENERATE_DEFAULTS["temperature"],
                    stochastic: bool = BEAM_SEARCH_DEFAULTS["stochastic"], prompt_lens: Optional[Tensor] = None,
                    filter_logits_fn=None,
                    restrict_to_max_seq_len: bool = GENERATE_DEFAULTS["restrict_to_max_seq_len"],
                    filter_kwargs: Optional[dict] = None, cache_kv: bool = GENERATE_DEFAULTS["cache_kv"], *,
                    pad_value: int = GENERATE_DEFAULTS["pad_value"], generator: Optional[torch.Generator] = None,
                    where: str = "TransformerWrapper.beam_search"):
        """x-transformers' ``AutoregressiveWrapper.beam_search`` for this net, in C++
        (``arwrap::beam_search``, with the key/value cache). Returns the best beam
        ``(batch, seq_len)``, or ``(beams (beams, batch, seq_len), scores (beams, batch))`` with
        ``return_beams_and_scores`` (``(beams, seq_len)``, ``(beams,)`` for a 1-D prompt)."""
        sampling.check_common(where, seq_len, temperature, filter_logits_fn, filter_kwargs)
        sampling.check_beam_search(where, beams, eos_token)
        if not isinstance(prompts, Tensor):
            raise ValueError(f"{where}: prompts must be a Tensor of token ids, got {type(prompts).__name__}")
        _, prompt_lens = sampling.prompts_to_tensor(where, prompts, prompt_lens)
        fn, fk = sampling.native_filter(where, filter_logits_fn, filter_kwargs,
                                        default=BEAM_SEARCH_DEFAULTS["filter_logits_fn"])
        with _eval([self]):
            out, scores = _C.beam_search(self.config, self.weights(), prompts, int(seq_len), int(beams),
                                         float(temperature), bool(stochastic), pad_value=int(pad_value),
                                         cache_kv=bool(cache_kv), prompt_lens=prompt_lens,
                                         restrict_to_max_seq_len=bool(restrict_to_max_seq_len), generator=generator,
                                         **sampling.sampling_options(where, fn, fk))
        # C++ returns (batch, beams, seq_len) / (batch, beams), best first, like x-transformers before its rearrange
        if prompts.dim() == 1:  # C++ gives (beams, seq_len), (beams)
            return (out, scores) if return_beams_and_scores else out[0]
        if not return_beams_and_scores:
            return out[:, 0]
        return out.transpose(0, 1).contiguous(), scores.transpose(0, 1).contiguous()

    def extra_repr(self) -> str:
        return self.config

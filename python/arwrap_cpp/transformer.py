"""arwrap_cpp.TransformerWrapper / arwrap_cpp.Decoder: the native net.

Constructed with x-transformers' arguments (the decoder-only subset most LMs use),
with x-transformers' parameter names and shapes, so ``load_state_dict`` works both
ways. The forward is the C++ ``arwrap::transformer_forward`` (through
``torch.ops.arwrap.transformer_wrapper_forward``): attention via
``scaled_dot_product_attention``, the attention z-loss via ``attention_lse``.
The parameter names come from C++ too (``_C.transformer_parameters``): one source.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from . import _C



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
        out, z, nxt, init = torch.ops.arwrap.transformer_wrapper_forward(
            x, self.weights(), self.config, self.training, prepend_embeds, self_attn_kv_mask,
            bool(return_embeddings), bool(return_attn_z_loss), bool(return_next_embed_pred))
        result = (out, (nxt, init)) if return_next_embed_pred else out
        if return_intermediates or return_attn_z_loss:
            return result, _Intermediates(z if return_attn_z_loss else None)
        return result

    def generate(self, prompts: Tensor, seq_len: int, eos_token: Optional[int] = None, temperature: float = 1.0,
                 filter_logits_fn="top_k", filter_kwargs: Optional[dict] = None, cache_kv: bool = True,
                 pad_value: int = 0, generator: Optional[torch.Generator] = None) -> Tensor:
        """x-transformers' ``AutoregressiveWrapper.generate``, in C++ (see arwrap_cpp.AutoregressiveWrapper.generate)."""
        fn = filter_logits_fn if isinstance(filter_logits_fn, str) else getattr(filter_logits_fn, "__name__", None)
        if fn not in ("top_k", "top_p", "min_p", "none"):
            raise ValueError(f"generate: filter_logits_fn must be 'top_k', 'top_p', 'min_p' (or x-transformers' "
                             f"functions of those names), got {filter_logits_fn!r}")
        fk = dict(filter_kwargs or {})
        allowed = {"top_k": {"k", "frac_num_tokens"}, "top_p": {"thres"}, "min_p": {"min_p"}, "none": set()}[fn]
        if set(fk) - allowed:
            raise ValueError(f"generate: filter_kwargs {sorted(set(fk) - allowed)} do not apply to {fn} "
                             f"(it takes {sorted(allowed)})")
        was_training = self.training
        self.eval()
        try:
            return _C.generate(self.config, self.weights(), prompts, int(seq_len), float(temperature), fn,
                               fk.get("k"), float(fk.get("frac_num_tokens", 0.1)), float(fk.get("thres", 0.9)),
                               float(fk.get("min_p", 0.1)), eos_token, int(pad_value), bool(cache_kv), generator)
        finally:
            self.train(was_training)

    def extra_repr(self) -> str:
        return self.config


class ScriptedAutoregressiveWrapper(nn.Module):
    """The native net and the wrapper as one TorchScript-able module (see AutoregressiveWrapper.to_torchscript).

    ``forward(x) -> loss`` and ``logits(tokens)``. Its parameters are the Python
    net's own (shared, in ``weights``); a C++ program loads the saved file with
    ``torch::jit::load`` and trains it (forward, backward, an optimizer over
    ``module.parameters()``).
    """

    def __init__(self, net: TransformerWrapper, ignore_index: int, pad_value: int, mask_prob: float,
                 mask_token_id: Optional[int], add_attn_z_loss: bool, next_embed_loss_weight: float):
        super().__init__()
        self.weights = nn.ParameterList(net.weights())
        self.config: str = net.config
        self.num_tokens: int = net.num_tokens
        self.max_seq_len: int = net.max_seq_len
        self.ignore_index: int = ignore_index
        self.pad_value: int = pad_value
        self.mask_prob: float = mask_prob
        self.mask_token_id: Optional[int] = mask_token_id
        self.add_attn_z_loss: bool = add_attn_z_loss
        self.next_embed_loss_weight: float = next_embed_loss_weight

    def _weights(self) -> list[Tensor]:
        ws: list[Tensor] = []
        for p in self.weights:
            ws.append(p)
        return ws

    def forward(self, x: Tensor) -> Tensor:
        loss, _ = torch.ops.arwrap.autoregressive_wrapper_loss(
            x, self._weights(), self.config, self.training, self.ignore_index, self.pad_value, self.mask_prob,
            self.mask_token_id, self.add_attn_z_loss, self.next_embed_loss_weight)
        return loss

    @torch.jit.export
    def logits(self, tokens: Tensor) -> Tensor:
        out, _, _, _ = torch.ops.arwrap.transformer_wrapper_forward(tokens, self._weights(), self.config,
                                                                    self.training)
        return out

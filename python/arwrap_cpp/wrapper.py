"""arwrap_cpp.AutoregressiveWrapper: a drop-in for x-transformers' AutoregressiveWrapper.

The forward is the C++ arwrap::ARWrapper (shift and mask, the fused loss with its
gradient written over the logits, the auxiliary losses); this module only adapts
the call to the wrapped Python net.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from . import _C, bridge
from .options import defaults
from .scripted import ScriptedAutoregressiveWrapper
from .transformer import BEAM_SEARCH_DEFAULTS, GENERATE_DEFAULTS, TransformerWrapper

# ARWrapperOptions' defaults, from its C++ table (_C.wrapper_fields())
WRAPPER_DEFAULTS = defaults(_C.wrapper_fields())


class AutoregressiveWrapper(nn.Module):
    """Same arguments and semantics as ``x_transformers.AutoregressiveWrapper`` (2.31.10).

    ``forward(x, return_outputs=False, prepend_embeds=None, lens=None, **kwargs)``
    takes token ids ``x`` of shape ``(batch, seq_len + 1)`` and returns the scalar
    loss, or ``(loss, (logits, cache))`` with ``return_outputs=True``. Other keyword
    arguments go to the net (``prepend_mask``, ...), except two of ours:
    ``mask_noise`` (the random draw behind ``mask_prob``, ``(batch, seq_len + 1)``;
    by default ``torch.randn`` from ``generator``, the same draw as x-transformers) and
    ``generator``.

    Differences, all deliberate:

    * The net gets ``seq_len`` tokens, not ``seq_len + 1`` (the last one predicts
      nothing; the loss is the same), so a net with ``max_seq_len = seq_len`` works.
      With ``add_attn_z_loss`` or a continuous prediction head, whose losses
      x-transformers defines over all positions, the net gets ``seq_len + 1`` as there.
    * Without ``return_outputs``, the loss writes its gradient over the logits buffer.
    * A batch whose targets are all ignored gives a loss of 0 (x-transformers: NaN).
    * ``mask_token_id``: replace the masked input tokens instead of masking keys.

    Beyond x-transformers: ``fused_head=True``, for an x-transformers ``TransformerWrapper``
    whose output layer is a plain linear map (``LinearNoBias``/``nn.Linear``, or a tied
    embedding), takes the final embeddings and computes the loss with the fused
    linear cross-entropy: the logits are never materialised. Where a feature makes
    that unsafe (``return_outputs``, mixture of softmaxes, sigsoftmax, several heads,
    a continuous head, a custom head), it falls back to the logits with a one-line warning.
    """

    _arwrap_dropin = True  # bridge.py tells this class (and subclasses) from x-transformers' own by it

    def __init__(
        self,
        net: nn.Module,
        ignore_index: int = WRAPPER_DEFAULTS["ignore_index"],
        pad_value: int = WRAPPER_DEFAULTS["pad_value"],
        mask_prob: float = WRAPPER_DEFAULTS["mask_prob"],
        add_attn_z_loss: bool = WRAPPER_DEFAULTS["add_attn_z_loss"],
        next_embed_loss_weight: float = WRAPPER_DEFAULTS["next_embed_loss_weight"],
        looped_loss_threshold_exit: float = WRAPPER_DEFAULTS["looped_loss_threshold_exit"],
        looped_loss_slope: float = WRAPPER_DEFAULTS["looped_loss_slope"],
        looped_exit_loss_weight: float = WRAPPER_DEFAULTS["looped_exit_loss_weight"],
        *,
        mask_token_id: Optional[int] = WRAPPER_DEFAULTS["mask_token_id"],
        fused_head: bool = WRAPPER_DEFAULTS["fused_head"],
    ):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"AutoregressiveWrapper: net must be an nn.Module, got {type(net).__name__}")
        _C.validate_wrapper_options(float(mask_prob), float(next_embed_loss_weight))
        for name, value in (("looped_loss_threshold_exit", looped_loss_threshold_exit),
                            ("looped_loss_slope", looped_loss_slope), ("looped_exit_loss_weight", looped_exit_loss_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"AutoregressiveWrapper: {name} must be a finite number, got {value!r}")
        self.net = net
        self.max_seq_len = getattr(net, "max_seq_len", None)
        self.ignore_index = int(ignore_index)
        self.pad_value = int(pad_value)
        self.mask_prob = float(mask_prob)
        self.mask_token_id = mask_token_id
        self.add_attn_z_loss = bool(add_attn_z_loss)
        self.add_continuous_pred_head = bool(getattr(net, "add_continuous_pred_head", False))
        self.next_embed_loss_weight = float(next_embed_loss_weight)
        self.looped_loss_threshold_exit = looped_loss_threshold_exit
        self.looped_loss_slope = looped_loss_slope
        self.looped_exit_loss_weight = looped_exit_loss_weight
        # A TorchScript net runs wholly in C++ (arwrap::TorchScriptNet): no Python callback.
        self._scripted = isinstance(net, torch.jit.ScriptModule)
        # The native net (arwrap_cpp.TransformerWrapper): the whole forward, embedding to
        # loss (fused with the output projection), is one C++ call.
        self._native = isinstance(net, TransformerWrapper)
        self.fused_head = bool(fused_head)
        self._warned = set()
        # the C++ wrapper (_C.ARWrapper), built once and rebuilt only if an option changes; the
        # net's extra keyword arguments of the forward in progress reach its call through _call_kwargs
        self._core_cache = None
        self._call_kwargs = {}
        if self.fused_head and not self._native:  # the native net always fuses its head
            reason = self._fused_head_unsupported()
            if reason is not None:
                self._warn(f"arwrap_cpp.AutoregressiveWrapper: fused_head=True falls back to the logits: {reason}")

    def _warn(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, stacklevel=3)

    def _fused_head_unsupported(self) -> Optional[str]:
        net = self.net
        if self._scripted or not hasattr(net, "to_logits") or not hasattr(net, "attn_layers"):
            return "the net is not an x-transformers TransformerWrapper"
        for flag, what in (("output_is_log_prob", "a mixture of softmaxes"), ("sigsoftmax_logits", "sigsoftmax"),
                           ("has_multiple_heads", "several output heads"), ("average_pool_embed", "pooling"),
                           ("add_continuous_pred_head", "a continuous prediction head"), ("looped", "a looped net"),
                           ("squeeze_out_last_dim", "squeeze_out_last_dim")):
            if getattr(net, flag, False):
                return f"the net uses {what}"
        if getattr(net, "cls_token", None) is not None:
            return "the net uses a cls token"
        if self._linear_head() is None:
            return "its output layer is not a plain linear map"
        return None

    def _linear_head(self):
        """(weight, bias, scale) of the net's output layer, or None."""
        net = self.net
        head = getattr(net, "to_logits", None)
        if isinstance(head, nn.Linear):
            return head.weight, head.bias, 1.0
        emb = getattr(getattr(net, "token_emb", None), "emb", None)
        if callable(head) and not isinstance(head, nn.Module) and hasattr(net, "tie_embedding_scale") and \
                isinstance(emb, nn.Embedding):
            return emb.weight, None, float(net.tie_embedding_scale)
        return None

    def _core(self) -> "_C.ARWrapper":
        """The C++ wrapper around this net, built on the first forward and kept (rebuilt only
        when an option it holds was changed since). With fused_head it holds the net's linear
        head; the C++ step then fuses unless the forward wants the logits (return_outputs)."""
        head = self._linear_head() if self.fused_head and self._fused_head_unsupported() is None else None
        key = (self.ignore_index, self.pad_value, self.mask_prob, self.mask_token_id, self.add_attn_z_loss,
               self.add_continuous_pred_head, self.next_embed_loss_weight, float(self.looped_loss_threshold_exit),
               float(self.looped_loss_slope), float(self.looped_exit_loss_weight),
               None if head is None else (id(head[0]), id(head[1]), head[2]))
        if self._core_cache is not None and self._core_cache[0] == key:
            return self._core_cache[1]
        if self._scripted:
            if self.add_attn_z_loss or self.add_continuous_pred_head:
                raise ValueError("AutoregressiveWrapper: a TorchScript net supports neither add_attn_z_loss nor a "
                                 "continuous prediction head")
            core = _C.ARWrapper.from_script_module(self.net, ignore_index=self.ignore_index, pad_value=self.pad_value,
                                                   mask_prob=self.mask_prob, mask_token_id=self.mask_token_id)
        else:
            num_tokens = getattr(self.net, "num_tokens", None)
            core = _C.ARWrapper(
                self._net_call(self._call_kwargs),
                output_is_log_prob=bool(getattr(self.net, "output_is_log_prob", False)),
                add_continuous_pred_head=self.add_continuous_pred_head,
                num_tokens=num_tokens if isinstance(num_tokens, int) else None,
                ignore_index=self.ignore_index,
                pad_value=self.pad_value,
                mask_prob=self.mask_prob,
                mask_token_id=self.mask_token_id,
                add_attn_z_loss=self.add_attn_z_loss,
                next_embed_loss_weight=self.next_embed_loss_weight,
                head_weight=head[0] if head else None,
                head_bias=head[1] if head else None,
                head_scale=head[2] if head else 1.0,
                looped_loss_threshold_exit=float(self.looped_loss_threshold_exit),
                looped_loss_slope=float(self.looped_loss_slope),
                looped_exit_loss_weight=float(self.looped_exit_loss_weight),
            )
        self._core_cache = (key, core)
        return core

    def __getstate__(self):
        # the C++ wrapper is rebuilt where the copy runs (deepcopy, pickle)
        return {**self.__dict__, "_core_cache": None, "_call_kwargs": {}}

    def forward(
        self,
        x: Tensor,
        return_outputs: bool = False,
        prepend_embeds: Optional[Tensor] = None,
        lens: Optional[Tensor] = None,
        *,
        mask_noise: Optional[Tensor] = None,
        generator: Optional[torch.Generator] = None,
        **kwargs,
    ):
        if not isinstance(x, Tensor):
            raise TypeError(f"AutoregressiveWrapper: x must be a Tensor of token ids, got {type(x).__name__}")
        if self._scripted and (kwargs or prepend_embeds is not None):
            raise ValueError("AutoregressiveWrapper: a TorchScript net takes no prepend_embeds or extra keyword "
                             f"arguments, got {sorted(kwargs) + (['prepend_embeds'] if prepend_embeds is not None else [])}")
        if self._native:
            if kwargs:
                raise ValueError(f"AutoregressiveWrapper: the native net takes no extra keyword arguments, got "
                                 f"{sorted(kwargs)}")
            loss, logits = torch.ops.arwrap.autoregressive_wrapper_loss(
                x, self.net.weights(), self.net.config, self.net.training, self.ignore_index, self.pad_value,
                self.mask_prob, self.mask_token_id, self.add_attn_z_loss, self.next_embed_loss_weight, lens,
                prepend_embeds, mask_noise, generator, bool(return_outputs))
            return (loss, (logits, None)) if return_outputs else loss
        if not self._scripted:
            self._check_x_transformers_inputs(x, prepend_embeds, kwargs.get("prepend_mask"))
        fused = self._use_fused_head(return_outputs)
        if not self._scripted and torch.compiler.is_compiling():
            return self._traced_forward(self._net_call(kwargs), fused, x, return_outputs, prepend_embeds, lens,
                                        mask_noise, generator)

        core = self._core()
        self._call_kwargs.update(kwargs)  # read by the net's call during this forward
        try:
            loss, logits, cache = core.forward(x, lens, prepend_embeds, mask_noise, generator, bool(return_outputs))
        finally:
            self._call_kwargs.clear()
        if not return_outputs:
            return loss
        return loss, (logits, cache)

    def _use_fused_head(self, return_outputs: bool) -> bool:
        if not self.fused_head:
            return False
        reason = self._fused_head_unsupported()
        if reason is None and return_outputs:
            reason = "return_outputs=True needs the logits"
        if reason is None:
            return True
        self._warn(f"arwrap_cpp.AutoregressiveWrapper: fused_head=True falls back to the logits: {reason}")
        return False

    def _net_call(self, kwargs: dict):
        """The adapter the C++ wrapper calls: x-transformers' TransformerWrapper call convention
        -> (logits or embeddings, attn_z_loss, next_embed_pred, init_embeds, cache[, exit_logits,
        all_pred_logits] for a looped net). ``kwargs`` (the forward's extra keyword arguments for
        the net) is read at each call; the adapter holds the net and that dict, not this wrapper,
        so the C++ wrapper that keeps it makes no reference cycle."""
        net = self.net
        looped = bool(getattr(net, "looped", False))

        def call(tokens, kv_mask, prepend, return_attn_z_loss, return_next_embed_pred, return_embeddings):
            kw = dict(kwargs)
            if kv_mask is not None:
                kw["self_attn_kv_mask"] = kv_mask
            if return_embeddings:
                kw["return_embeddings"] = True
            out, cache = net(
                tokens,
                return_intermediates=True,
                return_attn_z_loss=return_attn_z_loss,
                return_next_embed_pred=return_next_embed_pred,
                prepend_embeds=prepend,
                looped_pred_all_logits=True,
                **kw,
            )
            if return_next_embed_pred:
                logits, (next_embed_pred, init_embeds) = out
            else:
                logits, next_embed_pred, init_embeds = out, None, None
            attn_z_loss = cache.attn_z_loss if return_attn_z_loss else None
            if looped:
                exit_logits = torch.stack(cache.exit_logits, dim=1).squeeze(-1)  # (b, loops, n)
                all_pred_logits = torch.stack(cache.all_pred_logits, dim=1)      # (b, loops, n, V)
                return logits, attn_z_loss, next_embed_pred, init_embeds, cache, exit_logits, all_pred_logits
            return logits, attn_z_loss, next_embed_pred, init_embeds, cache

        return call

    def _traced_forward(self, call, fused, x, return_outputs, prepend_embeds, lens, mask_noise, generator):
        """The forward under torch.compile: the same steps as the C++ ARWrapper, as operators
        dynamo can trace (torch.ops.arwrap.autoregressive_wrapper_inputs, the very step ARWrapper
        takes before the net; the net; torch.ops.arwrap.autoregressive_loss, the one after it),
        so the whole step is one graph."""
        full = self.add_attn_z_loss or self.add_continuous_pred_head
        noise = mask_noise
        if self.mask_prob > 0.0 and noise is None:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        # the step before the net, as ARWrapper's (prepare_step): tokens, targets, key mask
        tokens, target, kv_mask = torch.ops.arwrap.autoregressive_wrapper_inputs(
            x, lens, noise, prepend_embeds, self.ignore_index, self.pad_value, self.mask_prob, self.mask_token_id, full)
        kv_mask = kv_mask if kv_mask.dim() == 2 else None  # empty: no key masking
        n = x.shape[1] - 1
        out = call(tokens, kv_mask, prepend_embeds, self.add_attn_z_loss, self.add_continuous_pred_head, fused)
        main, attn_z_loss, next_embed_pred, init_embeds, cache = out[:5]
        exit_logits, all_pred_logits = out[5:] if len(out) == 7 else (None, None)
        head = self._linear_head() if fused else None
        p = prepend_embeds.shape[1] if prepend_embeds is not None else 0
        loss = torch.ops.arwrap.autoregressive_loss(
            main, target, head[0] if head else None, head[1] if head else None, attn_z_loss, next_embed_pred,
            init_embeds, exit_logits, all_pred_logits, p, self.ignore_index,
            bool(getattr(self.net, "output_is_log_prob", False)), False, head[2] if head else 1.0,
            self.next_embed_loss_weight, float(self.looped_loss_threshold_exit), float(self.looped_loss_slope),
            float(self.looped_exit_loss_weight))
        if not return_outputs:
            return loss
        return loss, (main[:, p:p + n], cache)

    def _check_x_transformers_inputs(self, x: Tensor, prepend_embeds, prepend_mask) -> None:
        """What x-transformers would only assert on deep inside: named errors up front."""
        net = self.net
        if x.dim() == 2:
            fed = x.shape[1] if (self.add_attn_z_loss or self.add_continuous_pred_head) else x.shape[1] - 1
            limit = getattr(getattr(net, "pos_emb", None), "max_seq_len", None)  # absolute positions only
            if isinstance(limit, int) and fed > limit:
                raise ValueError(f"AutoregressiveWrapper: x has seq_len + 1 = {x.shape[1]} tokens, so the net gets "
                                 f"{fed} positions, more than its absolute positional embedding's max_seq_len={limit}")
        if prepend_embeds is not None:
            dim = getattr(net, "emb_dim", None)
            if not isinstance(prepend_embeds, Tensor) or prepend_embeds.dim() != 3 or \
                    (isinstance(dim, int) and prepend_embeds.shape[-1] != dim):
                shape = tuple(prepend_embeds.shape) if isinstance(prepend_embeds, Tensor) else type(prepend_embeds)
                raise ValueError(f"AutoregressiveWrapper: prepend_embeds must be (batch={x.shape[0]}, prepend_len, "
                                 f"dim={dim}), got {shape}")
            if prepend_mask is not None and (not isinstance(prepend_mask, Tensor) or
                                             tuple(prepend_mask.shape) != tuple(prepend_embeds.shape[:2])):
                shape = tuple(prepend_mask.shape) if isinstance(prepend_mask, Tensor) else type(prepend_mask)
                raise ValueError(f"AutoregressiveWrapper: prepend_mask must be (batch, prepend_len) = "
                                 f"{tuple(prepend_embeds.shape[:2])}, got {shape}")

    def generate(self, prompts, seq_len: int, eos_token: Optional[int] = None,
                 temperature: float = GENERATE_DEFAULTS["temperature"], prompt_lens: Optional[Tensor] = None,
                 filter_logits_fn=GENERATE_DEFAULTS["filter_logits_fn"],
                 restrict_to_max_seq_len: bool = GENERATE_DEFAULTS["restrict_to_max_seq_len"], amateur_model=None,
                 filter_kwargs: Optional[dict] = None, contrastive_decode_kwargs=None,
                 cache_kv: bool = GENERATE_DEFAULTS["cache_kv"], return_intermediates: bool = False, **kwargs):
        """x-transformers' ``generate`` (2.31.10, every argument): the ``seq_len`` tokens after ``prompts``.

        With the native net it is the net's own (``arwrap_cpp.TransformerWrapper.generate``, in
        C++; extra keyword: ``generator``). With any other net it is x-transformers' own code
        (bridge.py), reached through its defining module (never through a name a user may have
        replaced).
        """
        where = "AutoregressiveWrapper.generate"
        if not self._native:
            return bridge.generate(self, prompts, seq_len, eos_token=eos_token, temperature=temperature,
                                   prompt_lens=prompt_lens, filter_logits_fn=filter_logits_fn,
                                   restrict_to_max_seq_len=restrict_to_max_seq_len, amateur_model=amateur_model,
                                   filter_kwargs=filter_kwargs, contrastive_decode_kwargs=contrastive_decode_kwargs,
                                   cache_kv=cache_kv, return_intermediates=return_intermediates, **kwargs)
        generator = kwargs.pop("generator", None)
        if kwargs:
            raise ValueError(f"{where}: the native net takes no extra keyword arguments, got {sorted(kwargs)}")
        if return_intermediates:
            raise ValueError(f"{where}: return_intermediates=True returns x-transformers' LayerIntermediates cache, "
                             "which the native net (whose cache lives in C++) does not have")
        return self.net.generate(prompts, seq_len, eos_token=eos_token, temperature=temperature,
                                 filter_logits_fn=filter_logits_fn, filter_kwargs=filter_kwargs, cache_kv=cache_kv,
                                 pad_value=self.pad_value, generator=generator, prompt_lens=prompt_lens,
                                 restrict_to_max_seq_len=restrict_to_max_seq_len, amateur_model=amateur_model,
                                 contrastive_decode_kwargs=contrastive_decode_kwargs, where=where)

    def beam_search(self, prompts: Tensor, seq_len: int, beams: int = BEAM_SEARCH_DEFAULTS["beams"],
                    return_beams_and_scores: bool = False, eos_token: Optional[int] = None,
                    temperature: float = GENERATE_DEFAULTS["temperature"],
                    stochastic: bool = BEAM_SEARCH_DEFAULTS["stochastic"], prompt_lens: Optional[Tensor] = None,
                    filter_logits_fn=None,
                    restrict_to_max_seq_len: bool = GENERATE_DEFAULTS["restrict_to_max_seq_len"],
                    filter_kwargs: Optional[dict] = None, cache_kv: bool = GENERATE_DEFAULTS["cache_kv"], **kwargs):
        """x-transformers' ``beam_search`` (2.31.10, every argument). Returns the best beam
        ``(batch, seq_len)``, or ``(beams (beams, batch, seq_len), scores (beams, batch))`` with
        ``return_beams_and_scores``. The native net runs its own (``arwrap_cpp.TransformerWrapper.beam_search``,
        in C++ with the key/value cache; extra keyword: ``generator``); any other net runs x-transformers' own code."""
        where = "AutoregressiveWrapper.beam_search"
        if not self._native:
            return bridge.beam_search(self, prompts, seq_len, beams=beams,
                                      return_beams_and_scores=return_beams_and_scores, eos_token=eos_token,
                                      temperature=temperature, stochastic=stochastic, prompt_lens=prompt_lens,
                                      filter_logits_fn=filter_logits_fn,
                                      restrict_to_max_seq_len=restrict_to_max_seq_len, filter_kwargs=filter_kwargs,
                                      cache_kv=cache_kv, **kwargs)
        generator = kwargs.pop("generator", None)
        if kwargs:
            raise ValueError(f"{where}: the native net takes no extra keyword arguments, got {sorted(kwargs)}")
        return self.net.beam_search(prompts, seq_len, beams, return_beams_and_scores, eos_token, temperature,
                                    stochastic, prompt_lens, filter_logits_fn, restrict_to_max_seq_len, filter_kwargs,
                                    cache_kv, pad_value=self.pad_value, generator=generator, where=where)

    def to_torchscript(self, path: Optional[str] = None) -> torch.jit.ScriptModule:
        """The native net and this wrapper as a TorchScript module (``forward(x) -> loss``,
        ``logits(tokens)``), saved to ``path`` when given. A C++ program loads it with
        ``torch::jit::load`` and trains it; its parameters are this net's, in
        ``TransformerWrapper.weights()`` order (``config`` holds the net's options)."""
        if not self._native:
            raise ValueError("AutoregressiveWrapper.to_torchscript needs the native net (arwrap_cpp.TransformerWrapper)")
        scripted = torch.jit.script(ScriptedAutoregressiveWrapper(
            self.net, self.ignore_index, self.pad_value, self.mask_prob, self.mask_token_id, self.add_attn_z_loss,
            self.next_embed_loss_weight))
        if path is not None:
            scripted.save(str(path))
        return scripted

    def extra_repr(self) -> str:
        return (f"ignore_index={self.ignore_index}, pad_value={self.pad_value}, mask_prob={self.mask_prob}, "
                f"add_attn_z_loss={self.add_attn_z_loss}")

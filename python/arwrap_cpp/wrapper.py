"""arwrap_cpp.AutoregressiveWrapper: a drop-in for x-transformers' AutoregressiveWrapper.

The forward is the C++ arwrap::ARWrapper (shift and mask, the fused loss with its
gradient written over the logits, the auxiliary losses); this module only adapts
the call to the wrapped Python net.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from . import _C


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
    """

    def __init__(
        self,
        net: nn.Module,
        ignore_index: int = -100,
        pad_value: int = 0,
        mask_prob: float = 0.0,
        add_attn_z_loss: bool = False,
        next_embed_loss_weight: float = 0.1,
        looped_loss_threshold_exit: float = 0.05,
        looped_loss_slope: float = 50,
        looped_exit_loss_weight: float = 1.0,
        *,
        mask_token_id: Optional[int] = None,
    ):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"AutoregressiveWrapper: net must be an nn.Module, got {type(net).__name__}")
        if not (0.0 <= float(mask_prob) < 1.0):
            raise ValueError(f"AutoregressiveWrapper: mask_prob must be in [0, 1), got {mask_prob}")
        if getattr(net, "looped", False):
            raise ValueError("AutoregressiveWrapper: looped nets (TransformerWrapper(looped=True)) are not supported yet")
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

    def _core(self, call) -> "_C.ARWrapper":
        if self._scripted:
            if self.add_attn_z_loss or self.add_continuous_pred_head:
                raise ValueError("AutoregressiveWrapper: a TorchScript net supports neither add_attn_z_loss nor a "
                                 "continuous prediction head")
            return _C.ARWrapper.from_script_module(self.net, ignore_index=self.ignore_index, pad_value=self.pad_value,
                                                   mask_prob=self.mask_prob, mask_token_id=self.mask_token_id)
        num_tokens = getattr(self.net, "num_tokens", None)
        return _C.ARWrapper(
            call,
            output_is_log_prob=bool(getattr(self.net, "output_is_log_prob", False)),
            add_continuous_pred_head=self.add_continuous_pred_head,
            num_tokens=num_tokens if isinstance(num_tokens, int) else None,
            ignore_index=self.ignore_index,
            pad_value=self.pad_value,
            mask_prob=self.mask_prob,
            mask_token_id=self.mask_token_id,
            add_attn_z_loss=self.add_attn_z_loss,
            next_embed_loss_weight=self.next_embed_loss_weight,
        )

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
        net = self.net

        def call(tokens, kv_mask, prepend, return_attn_z_loss, return_next_embed_pred):
            kw = dict(kwargs)
            if kv_mask is not None:
                kw["self_attn_kv_mask"] = kv_mask
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
            return logits, attn_z_loss, next_embed_pred, init_embeds, cache

        loss, logits, cache = self._core(call).forward(
            x, lens, prepend_embeds, mask_noise, generator, bool(return_outputs)
        )
        if not return_outputs:
            return loss
        return loss, (logits, cache)

    def generate(self, *args, **kwargs):
        """x-transformers' own ``generate`` (sampling, caching, filters), on this wrapper's net."""
        try:
            from x_transformers import AutoregressiveWrapper as _XT
        except ImportError as e:  # pragma: no cover
            raise RuntimeError("AutoregressiveWrapper.generate uses x-transformers: pip install x-transformers") from e
        return _XT.generate(self, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"ignore_index={self.ignore_index}, pad_value={self.pad_value}, mask_prob={self.mask_prob}, "
                f"add_attn_z_loss={self.add_attn_z_loss}")

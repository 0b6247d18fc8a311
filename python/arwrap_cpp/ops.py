"""Python functions over the ``torch.ops.arwrap`` operators.

They only adapt arguments (keyword style, optional outputs); every computation
happens in the C++ operators, which are shared with TorchScript and C++ callers.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .options import IGNORE_INDEX

_REDUCTIONS = ("mean", "sum", "none")


def shift_tokens(
    x: Tensor,
    *,
    lens: Optional[Tensor] = None,
    ignore_index: int = IGNORE_INDEX,
    pad_value: int = 0,
    mask_prob: float = 0.0,
    mask_token_id: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    noise: Optional[Tensor] = None,
    keep_last: bool = False,
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Split token ids ``x`` of shape ``(b, n + 1)`` into what x-transformers'
    ``AutoregressiveWrapper.forward`` feeds its net and its loss.

    Returns ``(input, target, mask)``, each ``(b, n)``:

    * ``target = x[:, 1:]``, with positions at or past ``lens`` set to ``ignore_index``;
    * ``input = x[:, :-1]``, with ``ignore_index`` (and positions past ``lens``)
      replaced by ``pad_value``;
    * ``mask`` (bool, ``True`` = kept; x-transformers' ``self_attn_kv_mask``) when
      ``mask_prob > 0``, else ``None``: exactly ``min(int(n * mask_prob), n - 1)``
      positions per row are masked, never position 0. They are the top-k of a
      standard-normal draw from ``generator`` (or of ``noise``, shape ``(b, n)``,
      to inject the draw). With ``mask_token_id`` the masked input tokens are also
      replaced by it (the masked-LM variant).

    ``keep_last=True`` reproduces x-transformers 2.31's wrapper exactly: ``input`` and
    ``mask`` keep all ``n + 1`` positions (it feeds its net the last token too), the
    draw is ``(b, n + 1)`` and ``min(int((n + 1) * mask_prob), n)`` positions are masked.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"shift_tokens: x must be a Tensor, got {type(x).__name__}")
    mask_prob = float(mask_prob)  # its range is checked by the operator (ValueError)
    if mask_prob > 0.0 and noise is None:
        if x.dim() != 2 or x.shape[1] < 2:
            raise ValueError(
                "shift_tokens: x must be 2-D token ids (batch, seq_len + 1) with seq_len + 1 >= 2, "
                f"got shape {tuple(x.shape)}"
            )
        cols = x.shape[1] if keep_last else x.shape[1] - 1
        noise = torch.randn((x.shape[0], cols), generator=generator, device=x.device, dtype=torch.float32)
    inp, target, mask = torch.ops.arwrap.shift_tokens(
        x, lens, noise, int(ignore_index), int(pad_value), mask_prob, mask_token_id, bool(keep_last)
    )
    return inp, target, (mask if mask_prob > 0.0 else None)


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss_weight: float = 0.0,
    inplace_backward: bool = False,
    return_lse: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Fused cross-entropy of ``logits`` ``(..., V)`` against int64 ``target`` ``(...)``.

    The loss is float32 whatever the logits' dtype (float32/float64/bfloat16/float16;
    float64 logits give a float32 loss computed in float64). Per row:
    ``(1 - label_smoothing) * nll + label_smoothing * (lse - mean(logits)) + z_loss_weight * lse**2``;
    rows whose target is ``ignore_index`` count for nothing. ``reduction='mean'``
    divides by the number of non-ignored targets; **if every target is ignored the
    mean is 0 with zero gradients** (PyTorch and x-transformers return NaN there).

    ``inplace_backward=True`` writes the gradient over the logits buffer (the
    logits are then clobbered: do not use them after the call), so a training
    step holds one logits-sized buffer. ``return_lse=True`` also returns the
    per-row log-sum-exp (differentiable).
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"cross_entropy: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    loss, lse = torch.ops.arwrap.cross_entropy(
        logits,
        target,
        int(ignore_index),
        reduction,
        float(label_smoothing),
        float(z_loss_weight),
        bool(inplace_backward),
        bool(return_lse),
    )
    if return_lse:
        return loss, lse
    return loss


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Optional[Tensor] = None,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss_weight: float = 0.0,
    return_lse: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """``cross_entropy(hidden @ weight.T + bias, target)`` without ever holding the logits.

    ``hidden`` ``(..., D)``, ``weight`` ``(V, D)``, ``bias`` ``(V,)``, int64 ``target``
    ``(...)``; same options and semantics as :func:`cross_entropy` (float32 loss,
    0 with zero gradients when every target is ignored). The logits are computed in
    tiles of rows by the BLAS GEMM; each tile is turned into its loss and gradient
    in place and contracted at once into the gradients of ``hidden``, ``weight``
    (accumulated in float32 for bf16/fp16) and ``bias``, so the peak extra memory
    is those gradients plus one tile. With ``reduction`` mean or sum (and no
    ``return_lse``) the gradients come out of the forward's single sweep; the
    backward only rescales them.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"linear_cross_entropy: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    loss, lse = torch.ops.arwrap.linear_cross_entropy(
        hidden, weight, bias, target, int(ignore_index), reduction, float(label_smoothing), float(z_loss_weight),
        bool(return_lse),
    )
    if return_lse:
        return loss, lse
    return loss


def attention_lse(
    q: Tensor,
    k: Tensor,
    *,
    key_mask: Optional[Tensor] = None,
    scale: Optional[float] = None,
    causal: bool = False,
) -> Tensor:
    """The log-sum-exp of every attention row, for x-transformers' attention z-loss.

    ``q`` ``(b, h, nq, dh)`` and ``k`` ``(b, h, nk, dh)`` with ``nq <= nk``;
    ``lse[b, h, i] = log sum_j exp(scale * q[b, h, i] . k[b, h, j])`` over the keys
    row ``i`` may see: ``key_mask`` ``(b, nk)`` bool (``True`` = visible) and, with
    ``causal``, ``j <= i + (nk - nq)``. ``scale`` defaults to ``dh ** -0.5``. The
    result is float32 (float64 for float64 inputs) and differentiable in ``q`` and
    ``k``; scores are recomputed in blocks of rows, never held whole.
    """
    if q.dim() != 4:
        raise ValueError(f"attention_lse: q must be (batch, heads, seq, dim_head), got shape {tuple(q.shape)}")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return torch.ops.arwrap.attention_lse(q, k, key_mask, float(scale), bool(causal))


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = True,
    key_mask: Optional[Tensor] = None,
    scale: Optional[float] = None,
    return_lse: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Scaled dot-product attention, fused on the CPU (flash-style: the scores never exist whole).

    ``q`` ``(b, h, m, dh)``, ``k`` and ``v`` ``(b, h, n, dh)`` with ``m <= n``. Row ``i``
    sees key ``j`` where ``key_mask[b, j]`` is ``True`` (``(b, n)`` bool; none: every key)
    and, with ``causal``, ``j <= i + (n - m)``: the training step and a key/value cache
    prefill are one call. ``scale`` defaults to ``dh ** -0.5``. float32 and bfloat16 run the
    fused kernel (float32 softmax statistics and accumulation), float64 a plain reference
    path. A row that sees no key gives zeros (and lse ``-inf``). With ``return_lse``, also
    each row's log-sum-exp ``(b, h, m)`` in float32, differentiable: the attention z-loss
    reads it from this one pass. Strided inputs (e.g. heads split off a projection by a
    transpose) are read in place. No dropout: the native net keeps
    ``scaled_dot_product_attention`` when ``attn_dropout > 0`` in training.
    """
    out, lse = torch.ops.arwrap.attention(q, k, v, key_mask, None if scale is None else float(scale), bool(causal))
    if return_lse:
        return out, lse
    return out

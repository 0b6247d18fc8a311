"""The native net and the wrapper as one TorchScript-able module (AutoregressiveWrapper.to_torchscript)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


class ScriptedAutoregressiveWrapper(nn.Module):
    """The native net and the wrapper as one TorchScript-able module (see AutoregressiveWrapper.to_torchscript).

    ``forward(x) -> loss`` and ``logits(tokens)``. Its parameters are the Python
    net's own (shared, in ``weights``); a C++ program loads the saved file with
    ``torch::jit::load`` and trains it (forward, backward, an optimizer over
    ``module.parameters()``).
    """

    def __init__(self, net: nn.Module, ignore_index: int, pad_value: int, mask_prob: float,
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

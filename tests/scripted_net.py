"""A small TorchScript decoder shared by the tests of the TorchScript net path (the C++
TorchScriptNet): tests/modules/test_wrapper.py, the C++ programs of tests/integration and
scripts/sanitize.sh. tests/ is on sys.path (conftest.py's folder)."""
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class TinyScriptedDecoder(nn.Module):
    """A small causal decoder, scripted: what a pure C++ deployment would load."""

    num_tokens: int

    def __init__(self, num_tokens: int = 40, dim: int = 24, max_seq_len: int = 64):
        super().__init__()
        self.num_tokens = num_tokens
        self.emb = nn.Embedding(num_tokens, dim)
        self.pos = nn.Embedding(max_seq_len, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.to_logits = nn.Linear(dim, num_tokens)

    def forward(self, tokens: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        n = tokens.shape[1]
        h = self.emb(tokens) + self.pos(torch.arange(n, device=tokens.device))
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        causal = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril()
        attn_mask = causal.unsqueeze(0)
        if mask is not None:
            attn_mask = attn_mask & mask.unsqueeze(1)
        h = h + F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        h = h + self.ff(self.norm(h))
        return self.to_logits(h)


def scripted_decoder():
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(TinyScriptedDecoder())

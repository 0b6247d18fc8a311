"""The native training step under torch.autocast("cpu", bfloat16) against x-transformers
2.31.10 under the same autocast, on the same weights and batch: the loss within bf16
tolerance, a cosine similarity above 0.999 for every parameter's gradient, and the
parameters and their gradients float32 (mixed precision, not a bf16 model)."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from x_transformers import AutoregressiveWrapper as XAR

import arwrap_cpp
import test_transformer  # noqa: E402 (tests/modules is on sys.path)

warnings.filterwarnings("ignore", message=".*rotary embedding dimension.*")

V, SEQ, DIM = 97, 64, 64
AUTOCAST = dict(device_type="cpu", dtype=torch.bfloat16)
CONFIGS = {  # name: (TransformerWrapper kwargs, Decoder kwargs, x-transformers-only Decoder kwargs)
    "default_flash": ({}, {}, {"attn_flash": True}),
    "default_attention": ({}, {}, {}),
    "rotary_glu_rmsnorm": ({"use_abs_pos_emb": False},
                           {"rotary_pos_emb": True, "ff_glu": True, "ff_swish": True, "use_rmsnorm": True},
                           {"attn_flash": True}),
    "tied_qk_norm": ({"tie_embedding": True}, {"attn_qk_norm": True}, {"attn_flash": True}),
}


def make_pair(wkw, dkw, xkw, seed=0):
    """test_transformer's pair (x-transformers' net and ours with its weights) at this file's sizes."""
    return test_transformer.make_pair(wkw, dkw, seed, dim=DIM, depth=2, heads=4, dim_head=16, max_seq_len=SEQ,
                                      xt_only=xkw)


def cosines(xt, ours):
    mine = dict(ours.named_parameters())
    out = {}
    for name, p in xt.named_parameters():
        if p.grad is None:
            continue
        g = mine[name].grad
        assert g is not None and g.dtype == torch.float32 and mine[name].dtype == torch.float32, name
        out[name] = F.cosine_similarity(g.double().flatten(), p.grad.double().flatten(), dim=0).item()
    return out


@pytest.mark.parametrize("config", list(CONFIGS))
def test_step_under_autocast_matches_x_transformers_under_autocast(config):
    xt, ours = make_pair(*CONFIGS[config])
    x = torch.randint(0, V, (4, SEQ))
    x[0, 40:] = -100  # an ignored tail
    with torch.autocast(**AUTOCAST):
        ref = XAR(xt)(x)
        loss = arwrap_cpp.AutoregressiveWrapper(ours)(x)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=1e-2)
    ref.backward()
    loss.backward()
    cos = cosines(xt, ours)
    assert len(cos) == len(list(ours.parameters()))
    worst = min(cos, key=cos.get)
    assert cos[worst] > 0.999, (worst, cos[worst])


def test_autocast_step_is_mixed_precision_not_float32():
    """The products really ran in bf16: the loss differs from the float32 step's by bf16
    rounding, not more; and it is float32 (x-transformers' own loss under CPU autocast
    comes back in bfloat16, rounded to about 3 digits)."""
    xt, ours = make_pair({}, {}, {"attn_flash": True}, seed=1)
    x = torch.randint(0, V, (4, SEQ))
    w = arwrap_cpp.AutoregressiveWrapper(ours)
    with torch.no_grad():
        fp32 = w(x)
        with torch.autocast(**AUTOCAST):
            bf16 = w(x)
            ref_bf16 = XAR(xt)(x)
    assert bf16.dtype == torch.float32 and ref_bf16.dtype == torch.bfloat16
    assert bf16.item() != fp32.item() and bf16.item() == pytest.approx(fp32.item(), rel=1e-2)
    assert torch.equal(bf16.bfloat16(), ref_bf16) or bf16.item() == pytest.approx(ref_bf16.item(), rel=1e-2)


def test_attention_z_loss_under_autocast():
    """add_attn_z_loss: the attention_lse statistic stays float32 under autocast; the
    total against x-transformers' (default attention, which returns the scores)."""
    xt, ours = make_pair({}, {}, {}, seed=2)
    x = torch.randint(0, V, (3, SEQ))
    with torch.autocast(**AUTOCAST):
        ref = XAR(xt, add_attn_z_loss=True)(x)
        loss = arwrap_cpp.AutoregressiveWrapper(ours, add_attn_z_loss=True)(x)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-2)
    ref.backward()
    loss.backward()
    cos = cosines(xt, ours)
    assert min(cos.values()) > 0.999, min(cos.items(), key=lambda kv: kv[1])


def test_autocast_step_is_deterministic():
    """The same bf16 step twice: bitwise the same loss and gradients."""
    _, ours = make_pair({"use_abs_pos_emb": False}, {"rotary_pos_emb": True}, {}, seed=3)
    w = arwrap_cpp.AutoregressiveWrapper(ours)
    x = torch.randint(0, V, (4, SEQ))
    runs = []
    for _ in range(2):
        ours.zero_grad(set_to_none=True)
        with torch.autocast(**AUTOCAST):
            loss = w(x)
        loss.backward()
        runs.append((loss.detach(), [p.grad.clone() for p in ours.parameters()]))
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))

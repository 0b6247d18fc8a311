"""One reference and one ``sample_inputs`` per operator, as pytorch/extension-cpp's tests do.

Each ``reference_<op>`` takes the arguments of ``torch.ops.arwrap.<op>`` (its schema's order)
and computes the result in plain PyTorch, in float64 for the floating-point operators. Each
``sample_inputs_<op>(device, dtype)`` yields argument tuples for that operator: odd shapes,
ignored targets, tiny and large vocabularies, floating inputs that require grad. The tests in
tests/ops run every sample through the operator, its reference, opcheck and torch.compile.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DEVICES = ["cpu", "cuda"]


def skip_reason(device):
    """Why a device's variant cannot run here (None when it can)."""
    if device == "cuda":
        import arwrap_cpp

        if not torch.cuda.is_available():
            return "needs a CUDA device"
        if not arwrap_cpp.built_with_cuda():
            return "libarwrap was built without its CUDA kernels"
    return None


# ------------------------------------------------------------------ shift_tokens

def reference_shift_tokens(x, lens=None, noise=None, ignore_index=-100, pad_value=0, mask_prob=0.0,
                           mask_token_id=None, keep_last=False):
    """x-transformers' AutoregressiveWrapper.forward rules, row by row in Python."""
    b, n1 = x.shape
    n = n1 - 1
    m = n1 if keep_last else n
    L = lens.tolist() if lens is not None else [n1] * b
    inp = torch.empty(b, m, dtype=torch.long)
    tgt = torch.empty(b, n, dtype=torch.long)
    xs = x.cpu()
    for i in range(b):
        for j in range(m):
            v = int(xs[i, j]) if j < L[i] else ignore_index
            inp[i, j] = pad_value if v == ignore_index else v
        for j in range(n):
            tgt[i, j] = int(xs[i, j + 1]) if j + 1 < L[i] else ignore_index
    mask = torch.empty(0, dtype=torch.bool)
    if mask_prob > 0:
        k = min(int(m * mask_prob), m - 1)
        mask = torch.ones(b, m, dtype=torch.bool)
        nz = noise.cpu()
        for i in range(b):
            # the k largest draws among positions 1..m-1 (ties: the earlier position)
            order = sorted(range(1, m), key=lambda j: (-float(nz[i, j]), j))[:k]
            for j in order:
                mask[i, j] = False
                if mask_token_id is not None:
                    inp[i, j] = mask_token_id
    return inp.to(x.device), tgt.to(x.device), mask.to(x.device)


def sample_inputs_shift_tokens(device, dtype=None):
    g = torch.Generator().manual_seed(0)
    for b, n1, with_lens, mask_prob, mask_token_id, keep_last in [
        (1, 2, False, 0.0, None, False),
        (3, 17, True, 0.0, None, False),
        (4, 33, True, 0.3, None, True),
        (2, 9, False, 0.5, 7, False),
    ]:
        x = torch.randint(0, 50, (b, n1), generator=g)
        x[0, n1 // 2] = -100
        lens = torch.randint(0, n1 + 1, (b,), generator=g).to(device) if with_lens else None
        m = n1 if keep_last else n1 - 1
        noise = torch.randn(b, m, generator=g).to(device) if mask_prob > 0 else None
        yield (x.to(device), lens, noise, -100, 0, mask_prob, mask_token_id, keep_last)


# ------------------------------------------------------------------ cross_entropy

def reference_cross_entropy(logits, target, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                            z_loss_weight=0.0, inplace_backward=False, return_lse=False, *, dtype=torch.float64):
    """float64 reference: (1-eps) nll + eps (lse - mean z) + w lse^2, mean over non-ignored
    targets (0 when there are none). Returns the loss, and (loss, lse) with return_lse.
    dtype: the precision it computes in (float32 gives the yardstick of a float32 pipeline)."""
    z = logits.to(dtype)
    V = z.shape[-1]
    valid = target != ignore_index
    t = torch.where(valid, target, 0)
    lse = torch.logsumexp(z, dim=-1)
    nll = lse - z.gather(-1, t.unsqueeze(-1)).squeeze(-1)
    loss = (1 - label_smoothing) * nll
    if label_smoothing > 0:
        loss = loss + label_smoothing * (lse - z.sum(-1) / V)
    if z_loss_weight > 0:
        loss = loss + z_loss_weight * lse**2
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        loss = loss.sum() / valid.sum().clamp(min=1)
    return (loss, lse) if return_lse else loss


def _targets(shape, V, g, ignore_frac=0.25, ignore_index=-100):
    t = torch.randint(0, V, shape, generator=g)
    t[torch.rand(shape, generator=g) < ignore_frac] = ignore_index
    return t


def sample_inputs_cross_entropy(device, dtype=torch.float64):
    """(logits, target, ignore_index, reduction, label_smoothing, z_loss_weight, inplace_backward, return_lse)"""
    g = torch.Generator().manual_seed(0)
    cases = [
        ((7, 13), 1009, "mean", 0.0, 0.0, False),
        ((257,), 131, "sum", 0.1, 0.0, False),
        ((3, 5), 1, "none", 0.0, 1e-4, True),  # a vocabulary of one
        ((2, 3), 2, "mean", 0.3, 1e-2, True),
        ((5,), 4099, "none", 0.0, 0.0, False),
        ((2,), 65537, "mean", 0.0, 1e-4, False),  # a vocabulary over 64K
    ]
    for shape, V, reduction, eps, w, return_lse in cases:
        z = (torch.randn(*shape, V, generator=g, dtype=torch.float64) * 3).to(device, dtype).requires_grad_(True)
        yield (z, _targets(shape, V, g).to(device), -100, reduction, eps, w, False, return_lse)
    # every target ignored: loss 0 and zero gradients
    z = torch.randn(4, 10, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_(True)
    yield (z, torch.full((4,), -100).to(device), -100, "mean", 0.1, 1e-3, False, False)


# ------------------------------------------------------------------ linear_cross_entropy

def reference_linear_cross_entropy(hidden, weight, bias, target, ignore_index=-100, reduction="mean",
                                   label_smoothing=0.0, z_loss_weight=0.0, return_lse=False):
    """The cross-entropy reference on the materialised float64 logits."""
    z = F.linear(hidden.double(), weight.double(), bias.double() if bias is not None else None)
    return reference_cross_entropy(z, target, ignore_index, reduction, label_smoothing, z_loss_weight,
                                   return_lse=return_lse)


def sample_inputs_linear_cross_entropy(device, dtype=torch.float64):
    """(hidden, weight, bias, target, ignore_index, reduction, label_smoothing, z_loss_weight, return_lse)"""
    g = torch.Generator().manual_seed(0)
    cases = [
        ((257,), 31, 1009, True, "mean", 0.0, 0.0, False),
        ((3, 7), 16, 37, False, "sum", 0.1, 1e-3, False),
        ((5,), 8, 1, True, "none", 0.0, 0.0, True),
        ((4,), 8, 10, True, "mean", 0.0, 0.0, False),  # every target ignored (below)
    ]
    for i, (shape, D, V, bias, reduction, eps, w, return_lse) in enumerate(cases):
        def leaf(*s):
            return torch.randn(*s, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_(True)

        h, W = leaf(*shape, D), leaf(V, D)
        b = leaf(V) if bias else None
        t = _targets(shape, V, g) if i < len(cases) - 1 else torch.full(shape, -100)
        yield (h, W, b, t.to(device), -100, reduction, eps, w, return_lse)


# ------------------------------------------------------------------ attention_lse

def reference_attention_lse(q, k, key_mask, scale, causal):
    """log sum_j exp(scale q_i . k_j) over the visible keys, on the full score matrix."""
    s = (q @ k.transpose(-1, -2)) * scale
    nq, nk = q.shape[-2], k.shape[-2]
    allowed = torch.ones(nq, nk, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril(nk - nq)
    allowed = allowed.expand(q.shape[0], 1, nq, nk)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    return s.masked_fill(~allowed, torch.finfo(s.dtype).min).logsumexp(-1)


def sample_inputs_attention_lse(device, dtype=torch.float64):
    """(q, k, key_mask, scale, causal)"""
    g = torch.Generator().manual_seed(0)
    for b, h, nq, nk, d, masked, causal in [
        (2, 3, 5, 7, 4, True, True),
        (2, 3, 5, 7, 4, False, False),
        (1, 2, 9, 9, 8, True, False),
        (3, 1, 1, 6, 2, False, True),  # one new position against a cache
    ]:
        q = torch.randn(b, h, nq, d, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_(True)
        k = torch.randn(b, h, nk, d, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_(True)
        mask = None
        if masked:
            mask = torch.rand(b, nk, generator=g) > 0.3
            mask[:, 0] = True  # every row sees at least one key
            mask = mask.to(device)
        yield (q, k, mask, d**-0.5, causal)


# ------------------------------------------------------------------ attention

def attention_allowed(m, n, b, key_mask, causal, device):
    """(b, 1, m, n) bool: row i sees key j (key_mask[b, j] and, if causal, j <= i + n - m)."""
    allowed = torch.ones(m, n, dtype=torch.bool, device=device)
    if causal:
        allowed = allowed.tril(n - m)
    allowed = allowed.expand(b, 1, m, n)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    return allowed


def reference_attention(q, k, v, key_mask=None, scale=None, causal=True):
    """float64 attention on the full score matrix: (out, lse); a row that sees no key gives
    zeros and lse -inf (with zero gradients)."""
    qd, kd, vd = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (qd @ kd.transpose(-1, -2)) * scale
    allowed = attention_allowed(q.shape[-2], k.shape[-2], q.shape[0], key_mask, causal, q.device)
    s = s.masked_fill(~allowed, float("-inf"))
    lse = s.logsumexp(-1)
    safe = torch.where(lse.isneginf(), torch.zeros_like(lse), lse)
    p = (s - safe.unsqueeze(-1)).exp()
    return p @ vd, lse


def sample_inputs_attention(device, dtype=torch.float64):
    """(q, k, v, key_mask, scale, causal): odd shapes (m != n, m = 1, n not a multiple of a
    block), strided q/k/v (heads split off a projection), a key mask with one valid key."""
    g = torch.Generator().manual_seed(0)

    def heads(b, h, n, d, strided):
        if strided:  # (b, n, h * d) -> (b, h, n, d) by a view and a transpose, as the net does
            x = torch.randn(b, n, h * d, generator=g, dtype=torch.float64).to(device, dtype)
            return x.view(b, n, h, d).transpose(1, 2).detach().requires_grad_(True)
        return torch.randn(b, h, n, d, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_(True)

    for b, h, m, n, d, masked, scale, causal, strided in [
        (2, 3, 5, 7, 16, True, None, True, False),
        (1, 2, 9, 9, 32, False, 0.3, False, True),
        (3, 1, 1, 6, 16, False, None, True, False),  # one new position against a cache
        (1, 2, 70, 70, 17, True, None, True, True),  # more rows than one block, an odd head dim
    ]:
        q, k, v = heads(b, h, m, d, strided), heads(b, h, n, d, strided), heads(b, h, n, d, strided)
        mask = None
        if masked:
            mask = torch.rand(b, n, generator=g) > 0.5
            mask[:, 0] = True  # every row sees at least one key
            mask[-1, 1:] = False  # and the last batch row only that one
            mask = mask.to(device)
        yield (q, k, v, mask, scale, causal)


# ------------------------------------------------------------------ activation (internal)

def reference_activation(f, glu, swish):
    """GELU (erf) or SiLU of f, or x-transformers' GLU (value half times act(gate half)), in float64."""
    f = f.double()
    # GELU as x erfc(-x / sqrt 2) / 2: exact in both tails (x (1 + erf) / 2 is 0 below -8 in float64)
    act = F.silu if swish else (lambda x: 0.5 * x * torch.special.erfc(-x * 0.5 ** 0.5))
    if not glu:
        return act(f)
    a, g = f.chunk(2, -1)
    return a * act(g)


def sample_inputs_activation(device, dtype=torch.float64):
    """(f, glu, swish): odd widths, one row, a rank-3 input, a strided one (a column slice)."""
    g = torch.Generator().manual_seed(0)
    for shape, glu, swish, strided in [
        ((3, 7), False, False, False),
        ((2, 5, 10), True, False, False),
        ((1, 9), False, True, True),
        ((4, 34), True, True, True),
    ]:
        x = 3 * torch.randn(*shape[:-1], shape[-1] + (3 if strided else 0), generator=g, dtype=torch.float64)
        if strided:
            x = x[..., 1:-2]
        yield (x.to(device, dtype).detach().requires_grad_(True), glu, swish)


# ------------------------------------------------------------------ rotary (internal)

def reference_rotary(t, cos, sin):
    """x-transformers' rotary embedding in float64: t's first rot values as interleaved pairs
    (x, y) -> (x cos - y sin, y cos + x sin) at each row's position (dim -2), the rest kept."""
    t, cos, sin = t.double(), cos.double(), sin.double()
    rot = cos.shape[-1]
    head, tail = t[..., :rot], t[..., rot:]
    x, y = head.unflatten(-1, (rot // 2, 2)).unbind(-1)
    rotated = torch.stack([-y, x], -1).flatten(-2)
    return torch.cat([head * cos + rotated * sin, tail], -1)


def rotary_tables(m, rot, dtype=torch.float32, device="cpu", offset=0):
    """x-transformers' tables: the angle of pair j at position p is p / 10000^(2j / rot), each
    repeated for the pair's two values."""
    inv_freq = 1.0 / 10000 ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot)
    freqs = torch.outer(torch.arange(offset, offset + m, dtype=torch.float64), inv_freq).repeat_interleave(2, -1)
    return freqs.cos().to(device, dtype), freqs.sin().to(device, dtype)


def sample_inputs_rotary(device, dtype=torch.float64):
    """(t, cos, sin): the heads of a projection (a strided view), a partial rotary width, one
    position, a rank-2 input, odd sizes."""
    g = torch.Generator().manual_seed(0)
    for lead, m, d, rot, strided in [((2, 3), 5, 8, 8, True), ((1, 2), 7, 10, 6, False), ((3,), 1, 4, 2, False),
                                     ((), 6, 12, 12, False)]:
        if strided:  # (b, m, h, d) memory viewed as (b, h, m, d)
            t = torch.randn(lead[0], m, lead[1], d, generator=g, dtype=torch.float64).transpose(1, 2)
        else:
            t = torch.randn(*lead, m, d, generator=g, dtype=torch.float64)
        cos, sin = rotary_tables(m, rot, dtype, device, offset=3)
        yield (t.to(device, dtype).detach().requires_grad_(True), cos, sin)


# ------------------------------------------------------------------ norm (internal)

def reference_norm(x, gamma, rms, unit_offset, dtype=None):
    """x-transformers' LayerNorm (layer_norm without affine, eps 1e-5, times gamma) or RMSNorm
    (F.normalize(x) * sqrt(dim) * g), gamma + 1 with unit_offset, in float64 (dtype: the
    operator's output dtype, which the reference does not round to)."""
    x, g = x.double(), gamma.double() + (1.0 if unit_offset else 0.0)
    if rms:
        return F.normalize(x, dim=-1) * x.shape[-1] ** 0.5 * g
    return F.layer_norm(x, x.shape[-1:], eps=1e-5) * g


def sample_inputs_norm(device, dtype=torch.float64):
    """(x, gamma, rms, unit_offset, dtype): odd widths, one row, a rank-3 input, a strided one (a
    column slice), a row of zeros (RMSNorm's clamp), an output dtype other than x's."""
    g = torch.Generator().manual_seed(0)
    for shape, rms, unit_offset, strided, zero_row, out in [
        ((3, 7), False, False, False, False, None),
        ((2, 5, 10), True, True, False, True, None),
        ((1, 9), False, True, True, False, torch.float64 if dtype != torch.float64 else None),
        ((4, 33), True, False, True, False, None),
    ]:
        x = 2 * torch.randn(*shape[:-1], shape[-1] + (3 if strided else 0), generator=g, dtype=torch.float64) + 0.5
        if strided:
            x = x[..., 1:-2]
        if zero_row:
            x[0, 0] = 0
        gamma = torch.randn(shape[-1], generator=g, dtype=torch.float64)
        yield (x.to(device, dtype).detach().requires_grad_(True), gamma.to(device, dtype).requires_grad_(True), rms,
               unit_offset, out)


# ------------------------------------------------------------------ the registry
# operator -> (its reference, its sample_inputs, the dtype of the samples opcheck runs); the
# checks every operator gets (test_op_samples.py) run over this table
OPERATORS = {
    "shift_tokens": (reference_shift_tokens, sample_inputs_shift_tokens, None),
    "cross_entropy": (reference_cross_entropy, sample_inputs_cross_entropy, torch.float32),
    "linear_cross_entropy": (reference_linear_cross_entropy, sample_inputs_linear_cross_entropy, torch.float32),
    "attention_lse": (reference_attention_lse, sample_inputs_attention_lse, torch.float32),
    "attention": (reference_attention, sample_inputs_attention, torch.float32),
    "activation": (reference_activation, sample_inputs_activation, torch.float32),
    "rotary": (reference_rotary, sample_inputs_rotary, torch.float32),
    "norm": (reference_norm, sample_inputs_norm, torch.float32),
}

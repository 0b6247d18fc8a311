"""Odd but valid input at every public entry point (the ``works`` and ``large`` cases of the
bad-input suite, see test_bad_input.py): non-contiguous, expanded stride-0 and overlapping
rows, empty batches, NaN/inf, and 64-bit indexing (rows x vocabulary and element offsets
beyond 2^31 on shapes that fit in a few MB) give the reference answer."""

import pytest
import torch
import torch.nn.functional as F

from arwrap_cpp import cross_entropy, linear_cross_entropy, shift_tokens
from conftest import reference_cross_entropy
from bad_input_cases import DIM, SEQ, V, W, _count_cases, _RAN, toks, wrap  # noqa: F401 (_count_cases: a fixture)


# ------------------------------------------------------------------ odd but valid inputs

def ref_ce(z, t, **kw):
    return reference_cross_entropy(z.double().reshape(-1, z.shape[-1]), t.reshape(-1), **kw)


def check_ce(make_logits, t, inplace=False, reduction="mean"):
    """Our loss and gradient (w.r.t. the base tensor) against the float64 cross-entropy reference."""
    base, view = make_logits()
    b64 = base.detach().double().requires_grad_(True)  # before inplace_backward overwrites base
    base = base.detach().requires_grad_(True)
    loss = cross_entropy(view(base), t, inplace_backward=inplace, reduction=reduction)
    up = torch.randn(loss.shape) if reduction == "none" else torch.tensor(1.0)
    (g,) = torch.autograd.grad(loss, base, up)
    rloss = ref_ce(view(b64), t, reduction=reduction)
    (rg,) = torch.autograd.grad(rloss, b64, up.double().reshape(rloss.shape))
    torch.testing.assert_close(loss.double().reshape(rloss.shape), rloss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.double(), rg, rtol=1e-4, atol=1e-6)


def expanded_rows():
    return torch.randn(1, 11), lambda b: b.expand(4, 11)


def expanded_batch():
    return torch.randn(1, 5, 11), lambda b: b.expand(3, 5, 11)


def overlapping_rows():  # rows that share memory: stride(0) = 4 < V = 11
    return torch.randn(4 * 5 + 11), lambda b: b.as_strided((6, 11), (4, 1))


def transposed():
    return torch.randn(11, 4), lambda b: b.t()


def sliced():
    return torch.randn(4, 12), lambda b: b[:, :11]


def vocab_stride0():
    return torch.randn(4, 1), lambda b: b.expand(4, 11)


LAYOUTS = {"transposed": transposed, "sliced-rows": sliced, "expanded-rows": expanded_rows,
           "expanded-batch": expanded_batch, "overlapping-rows": overlapping_rows, "vocab-stride0": vocab_stride0}


def _targets(layout):
    base, view = LAYOUTS[layout]()
    shape = view(base).shape[:-1]
    return torch.randint(0, 11, shape, generator=torch.Generator().manual_seed(3))


def _works(layout, inplace, reduction):
    def run():
        t = _targets(layout)
        t.view(-1)[1] = -100
        check_ce(LAYOUTS[layout], t, inplace=inplace, reduction=reduction)
    return run


def _lce_layouts():
    def run():
        h = torch.randn(8, 6).t()[:5]  # (5, 8) non-contiguous
        Wt = torch.randn(8, 13).t()  # (13, 8) transposed
        b = torch.randn(1).expand(13)  # stride-0 bias
        hx = torch.randn(1, 8).expand(5, 8)  # stride-0 rows
        t = torch.tensor([0, 12, -100, 5, 7])
        for hh in (h, hx):
            leaves = [x.detach().clone().requires_grad_(True) for x in (hh, Wt, b)]
            views = [leaves[0], leaves[1], leaves[2]]
            loss = linear_cross_entropy(views[0], views[1], t, bias=views[2])
            gs = torch.autograd.grad(loss, leaves)
            l64 = [x.detach().double().requires_grad_(True) for x in (hh, Wt, b)]
            r = F.cross_entropy(F.linear(*l64), t)
            rgs = torch.autograd.grad(r, l64)
            torch.testing.assert_close(loss.double(), r, rtol=1e-5, atol=1e-6)
            for a, e in zip(gs, rgs):
                torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-6)
    return run


def _shift_layouts():
    def run():
        x = torch.randint(0, 10, (SEQ, 3)).t()  # non-contiguous
        lens = torch.tensor([SEQ, 4, 0, 2, 9, 1])[::2]  # strided lens
        noise = torch.randn(SEQ - 1, 3).t()  # strided noise
        a = shift_tokens(x, lens=lens, mask_prob=0.3, noise=noise)
        b = shift_tokens(x.contiguous(), lens=lens.contiguous(), mask_prob=0.3, noise=noise.contiguous())
        assert all(torch.equal(p, q) for p, q in zip(a, b))
        e = shift_tokens(torch.randint(0, 10, (1, SEQ)).expand(4, SEQ), lens=torch.tensor([5]).expand(4))
        assert torch.equal(e[0], e[0][:1].expand(4, -1)) and torch.equal(e[1], e[1][:1].expand(4, -1))
    return run


def _wrapper_layouts():
    def run():
        x = torch.randint(0, V, (SEQ, 3)).t()
        lens = torch.tensor([SEQ, 1, 5, 2, 7, 3])[::2]
        ref = [wrap()(x.contiguous(), lens=lens.contiguous()).item() for _ in range(2)]
        got = wrap()(x, lens=lens).item()
        assert ref[0] == ref[1] == got
        xe = torch.randint(0, V, (1, SEQ)).expand(3, SEQ)
        assert wrap()(xe).item() == wrap()(xe.contiguous()).item()
        assert wrap(fused_head=True)(xe).item() == pytest.approx(wrap()(xe.contiguous()).item(), rel=1e-5)
    return run


def _empty_batch(what):
    def run():
        if what == "ce":
            e = torch.randn(0, 7, requires_grad=True)
            loss = cross_entropy(e, torch.zeros(0, dtype=torch.long))
            loss.backward()
            assert loss.item() == 0.0 and e.grad.shape == (0, 7)  # documented: no targets -> 0
        elif what == "lce":
            h = torch.randn(0, 8, requires_grad=True)
            loss = linear_cross_entropy(h, torch.randn(10, 8), torch.zeros(0, dtype=torch.long))
            loss.backward()
            # (the gradient of an empty hidden comes back as None rather than a (0, 8) tensor: harmless)
            assert loss.item() == 0.0 and (h.grad is None or h.grad.shape == (0, 8))
        elif what == "shift":
            inp, tgt, mask = shift_tokens(toks()[:0], mask_prob=0.3)
            assert inp.shape == tgt.shape == mask.shape == (0, SEQ - 1)
        else:
            kw = {"fused": dict(fused_head=True), "masked": dict(mask_prob=0.3), "plain": {}}[what]
            w = wrap(**kw)
            loss = w(toks()[:0])
            loss.backward()
            assert loss.item() == 0.0
            assert all(p.grad is None or torch.all(p.grad == 0) for p in w.parameters())
    return run


def _nonfinite_ce(value, where, dtype):
    """NaN/inf logits: the loss is what PyTorch gives (NaN for NaN or +inf in a counted row, inf for a
    -inf target logit), row by row; rows without them are unaffected."""
    def run():
        z = torch.randn(3, 9, dtype=torch.float64).to(dtype)
        t = torch.tensor([2, 5, 7])
        z[0, 2 if where == "target" else 4] = value
        zz = z.clone().requires_grad_(True)
        ours = cross_entropy(zz, t, reduction="none")
        (g,) = torch.autograd.grad(ours.sum(), zz)
        z64 = z.double().requires_grad_(True)
        ref = F.cross_entropy(z64, t, reduction="none")
        (rg,) = torch.autograd.grad(ref.sum(), z64)
        assert torch.equal(torch.isnan(ours), torch.isnan(ref)) and torch.equal(torch.isinf(ours), torch.isinf(ref))
        fin = torch.isfinite(ref)
        torch.testing.assert_close(ours.double()[fin], ref[fin], rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-5)
        assert torch.equal(torch.isnan(g), torch.isnan(rg))
        torch.testing.assert_close(g[1:].double(), rg[1:], rtol=1e-2, atol=1e-3 if dtype == torch.bfloat16 else 1e-6)
        mean = cross_entropy(z.clone(), t)  # mean over rows: NaN/inf/finite as PyTorch's mean
        pm = F.cross_entropy(z.double(), t)
        torch.testing.assert_close(mean.double(), pm, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-5,
                                   equal_nan=True)
    return run


def _nan_in_ignored_row(reduction):
    """NaN in a row whose target is ignored: the loss ignores it, and that row's gradient is NaN
    (0 * NaN), both exactly as PyTorch's; the other rows' gradients stay finite."""
    def run():
        z = torch.randn(3, 9)
        z[1, 3] = float("nan")
        t = torch.tensor([2, -100, 7])
        zz = z.clone().requires_grad_(True)
        loss = cross_entropy(zz, t, reduction=reduction)
        loss.sum().backward()
        z64 = z.double().requires_grad_(True)
        ref = F.cross_entropy(z64, t, reduction=reduction)
        ref.sum().backward()
        torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
        assert torch.equal(torch.isnan(zz.grad), torch.isnan(z64.grad))
        assert torch.isfinite(zz.grad[[0, 2]]).all()
    return run


def _nonfinite_lce(value):
    def run():
        h = torch.randn(4, 8)
        h[1, 2] = value
        t = torch.tensor([1, 2, 3, -100])
        hh = h.clone().requires_grad_(True)
        loss = linear_cross_entropy(hh, W(), t, reduction="none")
        ref = F.cross_entropy(F.linear(h.double(), torch.randn(10, 8).double()), t, reduction="none")
        assert torch.isnan(loss[1]) and torch.isnan(ref[1])
        assert torch.isfinite(loss[[0, 2, 3]]).all() and loss[3] == 0
        assert torch.isnan(linear_cross_entropy(h, W(), t))
    return run


def _nonfinite_wrapper(what):
    def run():
        w = wrap(fused_head=(what == "fused"))
        if what in ("plain", "fused"):
            with torch.no_grad():
                w.net.to_logits.weight[3, 0] = float("nan")
            loss = w(toks())
        else:
            loss = w(toks(), prepend_embeds=torch.full((2, 2, DIM), float("nan")))
        assert torch.isnan(loss)
        loss.backward()  # no crash; NaN gradients, as PyTorch
    return run


WORKS = []
for layout in LAYOUTS:
    for inplace in (False, True):
        for reduction in ("mean", "none"):
            WORKS.append((f"ce/{layout}/{'inplace' if inplace else 'out-of-place'}/{reduction}",
                          _works(layout, inplace, reduction)))
WORKS += [
    ("lce/non-contiguous-and-expanded", _lce_layouts()),
    ("st/non-contiguous-and-expanded", _shift_layouts()),
    ("wrap/non-contiguous-and-expanded", _wrapper_layouts()),
]
WORKS += [(f"empty-batch/{w}", _empty_batch(w)) for w in ("ce", "lce", "shift", "plain", "fused", "masked")]
for value, name in ((float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf")):
    for where in ("target", "other"):
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            WORKS.append((f"ce/{name}-at-{where}/{str(dtype)[6:]}", _nonfinite_ce(value, where, dtype)))
WORKS += [("ce/nan-in-ignored-row/mean", _nan_in_ignored_row("mean")),
          ("ce/nan-in-ignored-row/none", _nan_in_ignored_row("none")), ("lce/nan-hidden", _nonfinite_lce(float("nan"))),
          ("lce/inf-hidden", _nonfinite_lce(float("inf"))), ("wrap/nan-weight", _nonfinite_wrapper("plain")),
          ("wrap/fused-nan-weight", _nonfinite_wrapper("fused")),
          ("wrap/nan-prepend_embeds", _nonfinite_wrapper("prepend"))]


@pytest.mark.parametrize("fn", [pytest.param(fn, id=cid) for cid, fn in WORKS])
def test_works(fn):
    _RAN["works"] += 1
    torch.manual_seed(0)
    fn()


# ------------------------------------------------------------------ 64-bit indexing
# The CPU kernels index with int64 throughout (RowIndex offsets, row * V, the simd loops take
# `long`; the linear loss's tiles are R x V). These cases check it on shapes that fit in memory.

N_BIG, V_BIG = 2**16 + 1, 2**15  # N * V = 2^31 + 2^15


def test_large_rows_times_vocab_expanded_logits():
    """(2^16 + 1, 2^15) logits (2^31 + 2^15 elements, 8 GiB if materialised) as a stride-0 expand
    of one row: the loss of every row, the last one included, is right."""
    _RAN["large"] += 1
    gen = torch.Generator().manual_seed(0)
    row = torch.randn(1, V_BIG, generator=gen) * 3
    t = torch.randint(0, V_BIG, (N_BIG,), generator=gen)
    t[-1] = V_BIG - 1
    t[-2] = -100
    z = row.expand(N_BIG, V_BIG)
    loss = cross_entropy(z, t, reduction="none")
    lse = torch.logsumexp(row.double()[0], 0)
    ref = torch.where(t == -100, torch.zeros((), dtype=torch.float64), lse - row.double()[0, t.clamp(min=0)])
    assert (loss.double() - ref).abs().max() < 1e-4
    mean = cross_entropy(z, t)
    assert abs(mean.item() - ref.sum().item() / (N_BIG - 1)) < 1e-4


def test_large_rows_times_vocab_linear_cross_entropy():
    """The fused linear loss at N x V = 2^31 + 2^15 (D = 1: the inputs are 384 KB, the logits are never
    held): per-row losses and hidden gradients of rows near the end against float64."""
    _RAN["large"] += 1
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(N_BIG, 1, generator=gen, requires_grad=True)
    Wt = torch.randn(V_BIG, 1, generator=gen, requires_grad=True)
    t = torch.randint(0, V_BIG, (N_BIG,), generator=gen)
    loss = linear_cross_entropy(h, Wt, t, reduction="sum")
    loss.backward()
    rows = torch.tensor([0, 1, N_BIG // 2, N_BIG - 2, N_BIG - 1])
    z = h.detach()[rows].double() @ Wt.detach().double().T  # (5, V)
    p = torch.softmax(z, -1)
    ref_rows = torch.logsumexp(z, -1) - z[torch.arange(5), t[rows]]
    p[torch.arange(5), t[rows]] -= 1
    ref_gh = p @ Wt.detach().double()
    with torch.no_grad():
        none = linear_cross_entropy(h, Wt, t, reduction="none")
    torch.testing.assert_close(none[rows].double(), ref_rows, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h.grad[rows].double(), ref_gh, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(Wt.grad).all()
    assert abs(loss.item() - none.double().sum().item()) <= 1e-5 * abs(loss.item())


@pytest.fixture
def sparse_big(tmp_path):
    """A float32 tensor of 2^31 + 128 elements (8 GiB) backed by a sparse file: only the pages
    that are written take memory or disk."""
    n = 2**31 + 128
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as f:
        f.truncate(n * 4)
    return torch.from_file(str(path), shared=True, size=n, dtype=torch.float32)


@pytest.mark.parametrize("mode", ["forward", "fused-grad", "inplace-grad", "lse-backward"])
def test_element_offsets_beyond_2_31(sparse_big, mode):
    """Rows that start beyond element 2^31 of their storage (row stride 2^31 + 64): the kernels
    must read (and, in place, write) them at 64-bit offsets."""
    _RAN["large"] += 1
    Vs = 50
    view = sparse_big.as_strided((2, Vs), (2**31 + 64, 1))
    gen = torch.Generator().manual_seed(2)
    vals = torch.randn(2, Vs, generator=gen) * 2
    view.copy_(vals)
    t = torch.tensor([3, Vs - 1])
    z64 = vals.double().requires_grad_(True)
    ref = F.cross_entropy(z64, t, reduction="none")
    (rg,) = torch.autograd.grad(ref, z64, torch.tensor([0.5, 2.0], dtype=torch.float64))
    if mode == "forward":
        torch.testing.assert_close(cross_entropy(view, t, reduction="none").double(), ref.detach())
        return
    if mode == "lse-backward":  # the plain path: forward saves lse, backward reads the strided rows
        leaf = view.detach().requires_grad_(True)
        loss = cross_entropy(leaf, t, reduction="none")
        (g,) = torch.autograd.grad(loss, leaf, torch.tensor([0.5, 2.0]))
        torch.testing.assert_close(g.double(), rg, rtol=1e-5, atol=1e-6)
        return
    leaf = view.detach().requires_grad_(True)
    loss = cross_entropy(leaf, t, reduction="sum", inplace_backward=(mode == "inplace-grad"))
    (g,) = torch.autograd.grad(loss, leaf)
    z = vals.double().requires_grad_(True)
    (rg1,) = torch.autograd.grad(F.cross_entropy(z, t, reduction="sum"), z)
    torch.testing.assert_close(loss.double(), ref.detach().sum(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.double(), rg1, rtol=1e-5, atol=1e-6)
    if mode == "inplace-grad":  # written where the rows are, at offsets beyond 2^31
        assert g.data_ptr() == view.data_ptr()
        torch.testing.assert_close(sparse_big[2**31 + 64: 2**31 + 64 + Vs].double(), rg1[1], rtol=1e-5, atol=1e-6)

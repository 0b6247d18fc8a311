"""attention (the fused CPU flash-style kernel, float32 and bfloat16; float64 by the reference
path): against float64 attention on odd shapes, forward and backward, the lse and its gradient
(the z-loss), masked rows, strided inputs, the same bits for 1 and 2 threads, every
instruction set, gradcheck, torch.compile, the C++/Python faces and bad input. The shared
sample checks (reference, opcheck, compile) run from test_op_samples.py."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import arwrap_cpp
from op_references import reference_attention

HERE = os.path.dirname(os.path.abspath(__file__))


def make(b, h, m, n, d, dtype=torch.float32, strided=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def heads(rows):
        if strided:  # the projections' layout: (b, rows, h * d) viewed as heads
            return torch.randn(b, rows, h * d, generator=g).view(b, rows, h, d).transpose(1, 2).to(dtype)
        return torch.randn(b, h, rows, d, generator=g).to(dtype)

    return heads(m), heads(n), heads(n)


def run(q, k, v, dtype=None, **kw):
    """Our out, lse and the gradients of q, k, v for fixed random upstream gradients of out and lse."""
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_(True) for t in (q, k, v)]
    out, lse = arwrap_cpp.attention(*leaves, return_lse=True, **kw)
    g = torch.Generator().manual_seed(7)
    go = torch.randn(out.shape, generator=g, dtype=torch.float64)
    gl = torch.randn(lse.shape, generator=g, dtype=torch.float64)
    gl = torch.where(lse.isneginf(), torch.zeros_like(gl), gl)
    torch.autograd.backward([out, lse], [go.to(out.dtype), gl.to(lse.dtype)])
    return out, lse, [t.grad for t in leaves], (go, gl)


def reference(q, k, v, ups, **kw):
    leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    out, lse = reference_attention(*leaves, kw.get("key_mask"), kw.get("scale"), kw.get("causal", True))
    finite = ~lse.isneginf()
    torch.autograd.backward([out, torch.where(finite, lse, torch.zeros_like(lse))], list(ups))
    return out, lse, [t.grad for t in leaves]


def cosine(a, b):
    return F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


SHAPES = [  # b, h, m, n, d
    (2, 3, 5, 7, 16),
    (1, 2, 1, 9, 32),  # one query row (decoding)
    (2, 2, 3, 200, 64),  # a few rows against many keys
    (1, 1, 97, 97, 64),  # not a multiple of any block
    (2, 1, 130, 131, 80),
    (1, 2, 64, 64, 128),
    (1, 1, 33, 50, 256),
    (1, 1, 1, 1, 16),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [True, False])
def test_float32_matches_float64_forward_and_backward(shape, causal):
    q, k, v = make(*shape, strided=shape[2] % 2 == 1)
    out, lse, grads, ups = run(q, k, v, causal=causal)
    r_out, r_lse, r_grads = reference(q, k, v, ups, causal=causal)
    torch.testing.assert_close(out.double(), r_out, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(lse.double(), r_lse, atol=2e-6, rtol=1e-5)
    for a, b in zip(grads, r_grads):
        torch.testing.assert_close(a.double(), b, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("shape", SHAPES[:6], ids=lambda s: "x".join(map(str, s)))
def test_bfloat16_within_its_tolerance_gradients_cosine(shape):
    q, k, v = (t.to(torch.bfloat16) for t in make(*shape, strided=True))
    out, lse, grads, ups = run(q, k, v)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    assert all(g.dtype == torch.bfloat16 for g in grads)
    r_out, r_lse, r_grads = reference(q, k, v, ups)  # on the same bf16 inputs, in float64
    torch.testing.assert_close(out.double(), r_out, atol=1e-2, rtol=1.6e-2)
    torch.testing.assert_close(lse.double(), r_lse, atol=1e-4, rtol=1e-5)  # float32 statistics
    for a, b in zip(grads, r_grads):
        assert cosine(a, b) > 0.999


def backward_inputs(shape, dtype, strided, masked, with_lse, seed=0):
    q, k, v = (t.to(dtype) for t in make(*shape, strided=strided, seed=seed))
    b, _, m, n, _ = shape
    g = torch.Generator().manual_seed(seed + 1)
    mask = torch.rand(b, n, generator=g) > 0.3 if masked else None
    out, lse = torch.ops.arwrap.attention(q, k, v, mask, None, True)
    grad_out = torch.randn(out.shape, generator=g).to(dtype)
    grad_lse = torch.randn(lse.shape, generator=g).masked_fill(lse.isneginf(), 0) if with_lse else None
    return grad_out, grad_lse, q, k, v, out, lse, mask, q.shape[-1] ** -0.5, True


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[1], SHAPES[3], SHAPES[4], (2, 2, 0, 5, 16)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("strided, masked, with_lse", [(False, False, False), (True, True, True)])
def test_backward_over_the_inputs_is_the_backward(dtype, shape, strided, masked, with_lse):
    """attention_backward_ (the native layer's backward: dq over q, dk over k, dv over v) gives the
    bits attention_backward gives, in the inputs' own layout: the fused kernel writes straight over
    them (float32, bf16), the reference path (float64) computes, then copies."""
    args = backward_inputs(shape, dtype, strided, masked, with_lse)
    want = torch.ops.arwrap.attention_backward(*args)
    grad_out, grad_lse, q, k, v, out, lse, mask, scale, causal = args
    q2, k2, v2 = (t.clone() if not strided else t.transpose(1, 2).clone().transpose(1, 2) for t in (q, k, v))
    strides = [t.stride() for t in (q2, k2, v2)]
    ptrs = [t.data_ptr() for t in (q2, k2, v2)]
    assert torch.ops.arwrap.attention_backward_(grad_out, grad_lse, q2, k2, v2, out, lse, mask, scale, causal) is None
    assert [t.stride() for t in (q2, k2, v2)] == strides and [t.data_ptr() for t in (q2, k2, v2)] == ptrs
    for got, w in zip((q2, k2, v2), want):
        assert torch.equal(got, w)


def test_backward_over_the_inputs_of_one_projection():
    """q, k and v as the heads of one fused projection's output (b, n, 3, h, d): disjoint but with
    gaps, which ATen's overlap check cannot clear (too hard), so the out-of-place backward runs and
    is copied over them; the same bits either way."""
    b, h, n, d = 2, 3, 37, 32
    qkv = torch.randn(b, n, 3, h, d, generator=torch.Generator().manual_seed(5))
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    out, lse = torch.ops.arwrap.attention(q, k, v, None, None, True)
    grad_out = torch.randn(out.shape)
    want = torch.ops.arwrap.attention_backward(grad_out, None, q, k, v, out, lse, None, d ** -0.5, True)
    torch.ops.arwrap.attention_backward_(grad_out, None, q, k, v, out, lse, None, d ** -0.5, True)
    for got, w in zip((q, k, v), want):
        assert torch.equal(got, w)


def test_backward_over_overlapping_inputs_refuses_or_copies():
    """k and v one tensor: the kernel cannot write both over it, so the out-of-place backward runs
    and the copies land in order (v's gradient last); an expanded q (one element at many places)
    cannot hold a gradient and is refused by the copy, not written wrongly."""
    args = list(backward_inputs((1, 2, 9, 9, 16), torch.float32, False, False, False))
    k = args[3].clone()
    args[3], args[4] = k, k
    args[5], args[6] = torch.ops.arwrap.attention(args[2], k, k, None, None, True)
    want = torch.ops.arwrap.attention_backward(*args)
    torch.ops.arwrap.attention_backward_(*args)
    assert torch.equal(k, want[2])
    args = list(backward_inputs((1, 2, 9, 9, 16), torch.float32, False, False, False))
    args[2] = args[2][:, :, :1].expand(1, 2, 9, 16)
    with pytest.raises(RuntimeError, match="single memory location"):
        torch.ops.arwrap.attention_backward_(*args)


def test_backward_over_the_inputs_opcheck():
    args = backward_inputs((1, 2, 7, 9, 16), torch.float32, True, True, True)
    torch.library.opcheck(torch.ops.arwrap.attention_backward_.default, args)


def test_key_mask_all_masked_rows_and_one_valid_key():
    """Batch row 0 sees one key only; batch row 1 sees none (zeros, lse -inf, zero gradients);
    causal rows before the first visible key see nothing either."""
    q, k, v = make(2, 2, 6, 9, 16)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, 4] = True
    out, lse, grads, ups = run(q, k, v, key_mask=mask)
    r_out, r_lse, r_grads = reference(q, k, v, ups, key_mask=mask)
    assert torch.equal(lse.isneginf(), r_lse.isneginf())
    assert lse[1].isneginf().all() and lse[0, :, :1].isneginf().all() and not lse[0, :, 1:].isneginf().any()
    assert torch.all(out[1] == 0) and torch.all(grads[0][1] == 0)
    torch.testing.assert_close(out.double(), r_out, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(lse.double(), r_lse, atol=2e-6, rtol=1e-5)
    for a, b in zip(grads, r_grads):
        torch.testing.assert_close(a.double(), b, atol=2e-5, rtol=1e-4)
    # the one valid key (seen from row 1 on: j <= i + 3): those rows copy its value
    torch.testing.assert_close(out[0, :, 1:], v[0, :, 4:5].expand(2, 5, 16))


def test_matches_sdpa_and_attention_lse():
    """The same output as PyTorch's causal SDPA, and the same lse as arwrap::attention_lse."""
    q, k, v = make(2, 4, 40, 40, 32, strided=True)
    out, lse = arwrap_cpp.attention(q, k, v, return_lse=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, arwrap_cpp.attention_lse(q, k, causal=True), atol=1e-5, rtol=1e-5)


def test_output_is_laid_out_for_the_output_projection():
    """out is (b, h, m, d) over (b, m, h, d) memory: the merge of the heads is a view."""
    q, k, v = make(2, 3, 5, 5, 16, strided=True)
    out = arwrap_cpp.attention(q, k, v)
    merged = out.transpose(1, 2).reshape(2, 5, 48)
    assert merged.data_ptr() == out.data_ptr() and merged.is_contiguous()


def test_float32_same_bits_for_1_and_2_threads():
    q, k, v = make(4, 2, 150, 150, 64, strided=True, seed=3)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out, lse, grads, _ = run(q, k, v, key_mask=torch.rand(4, 150, generator=torch.Generator().manual_seed(1)) > 0.2)
            results.append([out, lse, *grads])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


ISA_CHECK = """
import sys; sys.path.insert(0, {here!r})
import torch, arwrap_cpp
from test_attention import backward_inputs, make, run, reference, cosine
for shape in [(1, 2, 70, 75, 40), (2, 1, 5, 9, 16), (1, 1, 130, 130, 64), (1, 2, 97, 101, 33)]:
    q, k, v = make(*shape, strided=True)
    out, lse, grads, ups = run(q, k, v)
    r_out, r_lse, r_grads = reference(q, k, v, ups)
    torch.testing.assert_close(out.double(), r_out, atol=2e-6, rtol=1e-5)
    for a, b in zip(grads, r_grads):
        torch.testing.assert_close(a.double(), b, atol=2e-5, rtol=1e-4)
    q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    out, lse, grads, ups = run(q, k, v)
    r_out, r_lse, r_grads = reference(q, k, v, ups)
    torch.testing.assert_close(out.double(), r_out, atol=1e-2, rtol=1.6e-2)
    torch.testing.assert_close(lse.double(), r_lse, atol=1e-4, rtol=1e-5)
    assert all(cosine(a, b) > 0.999 for a, b in zip(grads, r_grads)), [cosine(a, b) for a, b in zip(grads, r_grads)]
    torch.save([out, *grads], {out_file!r} + "_" + "x".join(map(str, shape)))
    # this build's backward written over q, k, v: the bits of its out-of-place backward
    for dtype in (torch.float32, torch.bfloat16):
        args = backward_inputs(shape, dtype, True, True, True)
        want = torch.ops.arwrap.attention_backward(*args)
        torch.ops.arwrap.attention_backward_(*args)
        assert all(torch.equal(a, b) for a, b in zip(args[2:5], want))
print("ok", arwrap_cpp.attention_cpu_kernel())
"""


def run_isa(isa, tmp_path):
    out_file = str(tmp_path / isa)
    r = subprocess.run([sys.executable, "-c", ISA_CHECK.format(here=HERE, out_file=out_file)],
                       env=dict(os.environ, ARWRAP_CPU_ISA=isa), capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    return out_file, r.stdout.split()[-1]


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512", "avx512_bf16", "amx"])
def test_every_instruction_set_matches_float64(isa, tmp_path):
    """Each per-ISA build of the kernel (ARWRAP_CPU_ISA; one the CPU lacks falls back to the best it
    has), float32 against float64 and bfloat16 within its tolerance (avx512_bf16: the products on
    vdpbf16ps, amx: on AMX tiles; P and dS rounded to bfloat16 in both), its backward written over
    q, k, v the same bits as out of place, and the build that ran is the one asked for where the
    CPU has what it needs."""
    _, kernel = run_isa(isa, tmp_path)
    needs = {"avx2": {"avx2", "fma"}, "avx512": {"avx512f", "avx512bw"}, "avx512_bf16": {"avx512f", "avx512_bf16"},
             "amx": {"avx512_bf16", "amx_bf16", "amx_tile"}}
    if needs.get(isa, set()) <= set(cpu_flags()):
        assert kernel == isa


@pytest.mark.skipif("avx512_bf16" not in cpu_flags() or "avx512f" not in cpu_flags(),
                    reason="needs a CPU with avx512_bf16 (the vdpbf16ps path)")
def test_the_vdpbf16ps_path_runs_where_the_cpu_has_it(tmp_path):
    # its bfloat16 results differ from the plain AVX-512 build's (which keeps P and dS in
    # float32): proof that the dot-product kernel is the one that ran and passed above
    (plain, kernel), (dot, dot_kernel) = run_isa("avx512", tmp_path), run_isa("avx512_bf16", tmp_path)
    assert (kernel, dot_kernel) == ("avx512", "avx512_bf16")
    shape = "1x1x130x130x64"
    a, b = torch.load(f"{plain}_{shape}"), torch.load(f"{dot}_{shape}")
    assert any(not torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.skipif(not {"amx_bf16", "amx_tile", "avx512_bf16"} <= set(cpu_flags()),
                    reason="needs a CPU with AMX (amx_bf16, amx_tile: the tile path)")
def test_the_amx_path_runs_where_the_cpu_has_it(tmp_path):
    # the default where the CPU has AMX (and passed the float64 check above); it rounds P and dS
    # as the vdpbf16ps build does, within bfloat16's rounding of it (its forward's key blocks are
    # wider: the online softmax rescales elsewhere); the kernel's name is the proof of which ran
    assert arwrap_cpp.attention_cpu_kernel() == "amx"
    (amx, kernel), (dot, _) = run_isa("amx", tmp_path), run_isa("avx512_bf16", tmp_path)
    assert kernel == "amx"
    for shape in ("1x1x130x130x64", "1x2x97x101x33"):
        a, b = torch.load(f"{dot}_{shape}"), torch.load(f"{amx}_{shape}")
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, atol=2e-2, rtol=2e-2)


def test_gradcheck_float64():
    q, k, v = (t.double().requires_grad_(True) for t in make(1, 2, 4, 6, 16))
    mask = torch.tensor([[True, False, True, True, False, True]])

    def f(a, b, c):
        out, lse = torch.ops.arwrap.attention(a, b, c, mask, 0.4, True)
        return out, lse

    assert torch.autograd.gradcheck(f, (q, k, v))


def test_compile_fullgraph_inductor():
    q, k, v = (t.requires_grad_(True) for t in make(2, 2, 33, 33, 32))

    def f(a, b, c):
        out, lse = arwrap_cpp.attention(a, b, c, return_lse=True)
        return out.sum() + lse.square().sum()

    torch._dynamo.reset()
    eager = f(q, k, v)
    ge = torch.autograd.grad(eager, (q, k, v))
    compiled = torch.compile(f, fullgraph=True)(q, k, v)
    gc = torch.autograd.grad(compiled, (q, k, v))
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b)


def test_autocast_runs_bfloat16_with_float32_lse():
    q, k, v = (t.requires_grad_(True) for t in make(1, 2, 20, 20, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, lse = arwrap_cpp.attention(q, k, v, return_lse=True)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    (out.float().sum() + lse.sum()).backward()
    assert q.grad.dtype == torch.float32


def test_cpp_face_defaults():
    """C++'s AttentionOptions and Python's keywords have the same defaults (causal, dim_head ** -0.5)."""
    q, k, v = make(1, 2, 5, 8, 16)
    r_out, r_lse = reference_attention(q, k, v, None, None, True)
    out, lse = torch.ops.arwrap.attention(q, k, v)
    torch.testing.assert_close(out.double(), r_out, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(lse.double(), r_lse, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "args, match",
    [
        (lambda q: (q[0], q, q), "must be 4-D"),
        (lambda q: (q, q.double(), q), "one dtype"),
        (lambda q: (q, q, torch.randn(1, 2, 6, 8)), "one dim_head"),
        (lambda q: (q, torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)), "one dim_head"),
        (lambda q: (q, torch.randn(1, 3, 6, 16), torch.randn(1, 3, 6, 16)), "batch and heads"),
        (lambda q: (torch.randn(1, 2, 7, 16), q, q), "more positions"),
        (lambda q: (q, q, torch.randn(1, 2, 5, 16)), "same number of keys"),
        (lambda q: (q.long(), q.long(), q.long()), "floating point"),
    ],
)
def test_bad_input_names_the_argument(args, match):
    q = torch.randn(1, 2, 6, 16)
    with pytest.raises(ValueError, match=match):
        arwrap_cpp.attention(*args(q))


def test_bad_key_mask():
    q = torch.randn(1, 2, 6, 16)
    with pytest.raises(ValueError, match=r"key_mask must be bool \(batch=1, keys=6\)"):
        arwrap_cpp.attention(q, q, q, key_mask=torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="key_mask must be bool"):
        arwrap_cpp.attention(q, q, q, key_mask=torch.ones(1, 6))


@pytest.mark.cuda
@pytest.mark.parametrize("masked", [False, True])
def test_cuda_matches_cpu(masked):
    """The CUDA route (PyTorch's efficient attention; the reference path with a key mask)."""
    q, k, v = make(2, 2, 40, 40, 64)
    mask = (torch.rand(2, 40) > 0.3) if masked else None
    if mask is not None:
        mask[:, 0] = True
    out, lse, grads, ups = run(q, k, v, key_mask=mask)
    leaves = [t.cuda().requires_grad_(True) for t in (q, k, v)]
    o2, l2 = arwrap_cpp.attention(*leaves, key_mask=None if mask is None else mask.cuda(), return_lse=True)
    torch.autograd.backward([o2, l2], [ups[0].float().cuda(), ups[1].float().cuda()])
    torch.testing.assert_close(o2.cpu(), out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(l2.cpu(), lse, atol=1e-4, rtol=1e-4)
    for a, b in zip(leaves, grads):
        torch.testing.assert_close(a.grad.cpu(), b, atol=1e-3, rtol=1e-3)

"""The float32 route for bf16/fp16 GEMMs (csrc/ops/low_precision_mm.h): where ATen's low-
precision CPU GEMM is slow (an x86 CPU without AVX-512), the native net's linears, its lean
feed-forward and the fused head compute each low-precision product as the float32 product of
its exact operands, rounded to the low-precision dtype. ARWRAP_LOWP_GEMM=fp32 forces that
route, =aten forces ATen's GEMM; each runs in its own process (the choice is made once per
process). Both must give the same step to bf16 rounding, and both must match float64."""
import json
import os
import subprocess
import sys

import pytest
import torch

SCRIPT = r"""
import json, sys, torch, arwrap_cpp
torch.manual_seed(0)
kind = sys.argv[1]
out = {}
if kind == "step":
    # rotary, a GLU feed-forward (the lean block), bias-free projections, the fused head
    net = arwrap_cpp.TransformerWrapper(num_tokens=97, max_seq_len=32, use_abs_pos_emb=False,
        attn_layers=arwrap_cpp.Decoder(dim=48, depth=2, heads=3, attn_dim_head=16, rotary_pos_emb=True,
                                       ff_glu=True))
    wrapper = arwrap_cpp.AutoregressiveWrapper(net)
    x = torch.randint(0, 97, (3, 21), generator=torch.Generator().manual_seed(1))
    dtype = sys.argv[2]
    if dtype == "float64":
        net.double()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "autocast"):
        loss = wrapper(x)
    loss.backward()
    out["loss"] = loss.item()
    out["grads"] = {n: p.grad.double().flatten().tolist() for n, p in net.named_parameters() if p.grad is not None}
    out["grad_dtypes"] = sorted({str(p.grad.dtype) for p in net.parameters() if p.grad is not None})
elif kind == "route":
    out = {str(dt): arwrap_cpp.lowp_gemm_upcasts(dt) for dt in (torch.bfloat16, torch.float16, torch.float32)}
elif kind == "lce":
    g = torch.Generator().manual_seed(2)
    h = torch.randn(37, 24, generator=g).bfloat16().requires_grad_()
    w = (torch.randn(301, 24, generator=g) / 5).bfloat16().requires_grad_()
    b = torch.randn(301, generator=g).bfloat16().requires_grad_()
    t = torch.randint(0, 301, (37,), generator=g)
    t[::5] = -100
    loss = arwrap_cpp.linear_cross_entropy(h, w, t, bias=b)
    loss.backward()
    out["loss"] = loss.item()
    out["grads"] = {n: v.grad.double().flatten().tolist() for n, v in (("h", h), ("w", w), ("b", b))}
    out["grad_dtypes"] = sorted({str(v.grad.dtype) for v in (h, w, b)})
print(json.dumps(out))
"""


def run(kind, *args, route):
    env = {**os.environ, "ARWRAP_LOWP_GEMM": route}
    p = subprocess.run([sys.executable, "-c", SCRIPT, kind, *args], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def cosine(a, b):
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return (a @ b / (a.norm() * b.norm()).clamp(min=1e-300)).item()


def test_native_step_under_autocast_is_the_same_on_both_routes_and_matches_float64():
    fp32, aten = run("step", "autocast", route="fp32"), run("step", "autocast", route="aten")
    ref = run("step", "float64", route="auto")
    assert fp32["grad_dtypes"] == aten["grad_dtypes"] == ["torch.float32"]
    # the two routes differ only in the order of each product's float32 sums (and where that
    # moves a bf16 rounding): the loss to bf16 precision, every gradient's direction
    assert abs(fp32["loss"] - aten["loss"]) <= 1e-2 * abs(aten["loss"])
    assert abs(fp32["loss"] - ref["loss"]) <= 1e-2 * abs(ref["loss"])
    assert fp32["grads"].keys() == aten["grads"].keys() == ref["grads"].keys()
    for name in ref["grads"]:
        assert cosine(fp32["grads"][name], aten["grads"][name]) > 0.999, name
        assert cosine(fp32["grads"][name], ref["grads"][name]) > 0.999, name


def test_fused_head_in_bfloat16_is_the_same_on_both_routes():
    fp32, aten = run("lce", route="fp32"), run("lce", route="aten")
    assert fp32["grad_dtypes"] == aten["grad_dtypes"] == ["torch.bfloat16"]
    assert abs(fp32["loss"] - aten["loss"]) <= 1e-3 * abs(aten["loss"])
    for name in aten["grads"]:
        assert cosine(fp32["grads"][name], aten["grads"][name]) > 0.9999, name


def test_a_bad_route_is_refused_with_the_variable_named():
    env = {**os.environ, "ARWRAP_LOWP_GEMM": "fast"}
    p = subprocess.run([sys.executable, "-c", SCRIPT, "lce"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode != 0
    assert "ARWRAP_LOWP_GEMM must be auto, fp32 or aten, got 'fast'" in p.stderr


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "DEFAULT"),
                    reason="the automatic choice takes the float32 route only on a CPU without AVX-512")
def test_auto_takes_the_float32_route_without_avx512():
    # bitwise: the same process-level choice, so the same kernels in the same order
    assert run("lce", route="auto") == run("lce", route="fp32")
    assert run("route", route="auto")["torch.bfloat16"] is True


def test_the_route_is_reported_as_forced():
    assert run("route", route="fp32") == {"torch.bfloat16": True, "torch.float16": True, "torch.float32": False}
    assert run("route", route="aten") == {"torch.bfloat16": False, "torch.float16": False, "torch.float32": False}

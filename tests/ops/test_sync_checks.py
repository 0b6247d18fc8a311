"""Validation without host synchronisation (csrc/ops/sync_checks.h): on the CPU the checks
read values and raise clear errors; on a GPU the hot path makes no host sync, a bad target
fails a device-side assertion, and ARWRAP_SYNC_CHECKS=1 restores the clear error. The CUDA
cases carry the `cuda` marker (tests/conftest.py)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import arwrap_cpp


@pytest.mark.parametrize("sync_checks", [None, "1"])
def test_cpu_errors_stay_clear_with_or_without_sync_checks(monkeypatch, sync_checks):
    """On the CPU the checks read values directly (no sync to avoid): the clear errors stay,
    whatever ARWRAP_SYNC_CHECKS says."""
    if sync_checks is None:
        monkeypatch.delenv("ARWRAP_SYNC_CHECKS", raising=False)
    else:
        monkeypatch.setenv("ARWRAP_SYNC_CHECKS", sync_checks)
    with pytest.raises(IndexError, match=r"target must be in \[0, 10\)"):
        arwrap_cpp.cross_entropy(torch.randn(3, 10), torch.tensor([1, 10, 2]))
    with pytest.raises(IndexError, match="token ids >= 0"):
        arwrap_cpp.shift_tokens(torch.tensor([[1, -5, 3]]))
    net = arwrap_cpp.TransformerWrapper(num_tokens=13, max_seq_len=16,
                                        attn_layers=arwrap_cpp.Decoder(dim=16, depth=1, heads=2))
    with pytest.raises(IndexError, match="outside the net's vocabulary"):
        arwrap_cpp.AutoregressiveWrapper(net)(torch.tensor([[1, 2, 13, 4]]))


@pytest.mark.cuda
def test_cuda_hot_path_does_not_synchronise():
    """The operators' forward and backward on CUDA make no host synchronisation
    (torch.cuda.set_sync_debug_mode('error') turns any into an error): they can be
    captured in a CUDA graph and do not stall the launch queue."""
    V = 1009
    z = torch.randn(64, V, device="cuda", requires_grad=True)
    t = torch.randint(0, V, (64,), device="cuda")
    h = torch.randn(64, 32, device="cuda", requires_grad=True)
    W = torch.randn(V, 32, device="cuda", requires_grad=True)
    x = torch.randint(0, V, (4, 33), device="cuda")
    q = torch.randn(2, 3, 40, 16, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    kk = torch.randn(2, 3, 40, 16, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    key_mask = torch.ones(2, 40, dtype=torch.bool, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for inplace in (False, True):
            arwrap_cpp.cross_entropy(z * 1, t, inplace_backward=inplace).backward()
            arwrap_cpp.cross_entropy(z * 1, t, reduction="none").sum().backward()
        arwrap_cpp.linear_cross_entropy(h, W, t).backward()
        arwrap_cpp.linear_cross_entropy(h, W, t, reduction="none").sum().backward()
        arwrap_cpp.shift_tokens(x)
        torch.ops.arwrap.attention_lse(q, kk, key_mask, 0.25, True).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.cuda
def test_cuda_bad_target_asserts_on_the_device_and_sync_checks_restore_the_error():
    """Without ARWRAP_SYNC_CHECKS a bad target fails a device-side assertion (the process's
    CUDA context is lost, so it runs in a child process); with it, the clear IndexError."""
    code = textwrap.dedent("""
        import torch, arwrap_cpp
        loss = arwrap_cpp.cross_entropy(torch.randn(3, 10, device="cuda"), torch.tensor([1, 10, 2], device="cuda"))
        torch.cuda.synchronize()
        print("NO ERROR")
    """)
    env = {k: v for k, v in os.environ.items() if k != "ARWRAP_SYNC_CHECKS"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "NO ERROR" not in r.stdout
    assert "device-side assert" in r.stderr or "target must be in [0, V)" in r.stderr, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-c", code], env={**env, "ARWRAP_SYNC_CHECKS": "1"}, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "IndexError" in r.stderr and "target must be in [0, 10)" in r.stderr, r.stderr[-2000:]

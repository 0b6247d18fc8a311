"""The checks every operator gets (pytorch/extension-cpp's shape), run on its sample_inputs:
the result against its float64 reference, the gradients for a random upstream gradient,
torch.library.opcheck, and torch.compile(fullgraph=True) forward and backward."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from op_references import skip_reason


def need(device):
    reason = skip_reason(device)
    if reason is not None:
        pytest.skip(reason)


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _leaves(args):
    return [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]


def _float_outputs(outs):
    return [o for o in outs if isinstance(o, torch.Tensor) and o.is_floating_point() and o.numel() > 0]


def check_against_reference(op, reference, args, *, atol=1e-9, rtol=1e-9, n_outputs=None):
    """Outputs equal the reference's; with leaves requiring grad, so do the gradients for a
    random upstream gradient on every floating output (n_outputs: how many of the
    operator's outputs the reference returns, in order)."""
    outs = _as_tuple(op(*args))
    ref = _as_tuple(reference(*args))
    outs = outs[: len(ref) if n_outputs is None else n_outputs]
    assert len(outs) == len(ref)
    for o, r in zip(outs, ref):
        if o.is_floating_point():
            torch.testing.assert_close(o.double(), r.double(), atol=atol, rtol=rtol)
        else:
            assert torch.equal(o, r)
    leaves = _leaves(args)
    pairs = [(o, r) for o, r in zip(outs, ref) if o.is_floating_point() and o.requires_grad]
    if not leaves or not pairs:
        return
    g = torch.Generator().manual_seed(1)
    ups = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o, _ in pairs]
    ours = torch.autograd.grad([o for o, _ in pairs], leaves, [u.to(o.device, o.dtype) for u, (o, _) in zip(ups, pairs)],
                               allow_unused=True)
    theirs = torch.autograd.grad([r for _, r in pairs], leaves, [u.to(r.device, r.dtype) for u, (_, r) in zip(ups, pairs)],
                                 allow_unused=True)
    for a, b in zip(ours, theirs):
        if b is None:
            assert a is None or torch.all(a == 0)
            continue
        torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=rtol)


def check_opcheck(op, args):
    """Schema, autograd registration, fake tensor (Meta) and AOT dispatch."""
    torch.library.opcheck(op, args)


def check_compile(op, args):
    """torch.compile(fullgraph=True) forward and backward give the eager results."""
    torch._dynamo.reset()  # each sample compiles afresh (no recompile limit across samples)
    compiled = torch.compile(op, fullgraph=True, backend="aot_eager")
    leaves = _leaves(args)
    eager = _as_tuple(op(*args))
    got = _as_tuple(compiled(*args))
    for e, c in zip(eager, got):
        torch.testing.assert_close(c, e)
    fe, fc = _float_outputs(eager), _float_outputs(got)
    fe = [o for o in fe if o.requires_grad]
    fc = [o for o in fc if o.requires_grad]
    if leaves and fe:
        ge = torch.autograd.grad([o.sum() for o in fe], leaves, allow_unused=True)
        gc = torch.autograd.grad([o.sum() for o in fc], leaves, allow_unused=True)
        for a, b in zip(ge, gc):
            if a is None:
                assert b is None
            else:
                torch.testing.assert_close(b, a)


def run_script(script, tmp_path, name, **env):
    """Runs `script` (a template with {out}, where it torch.saves its results) in a fresh Python
    with `env` added (ARWRAP_CPU_ISA, OMP_NUM_THREADS: chosen once per process) and this folder on
    its path; returns what it saved."""
    out = str(tmp_path / name)
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([sys.executable, "-c", script.format(out=out)], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=here + os.pathsep + os.environ.get("PYTHONPATH", ""), **env))
    assert r.returncode == 0, r.stderr
    return torch.load(out)

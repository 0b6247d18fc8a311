"""Determinism: with a fixed seed, training through arwrap_cpp.AutoregressiveWrapper is bitwise
reproducible, run to run and across thread counts (1 vs 2 threads, each in a fresh process so
that the OpenMP pool really has that size).

Our kernels are deterministic by construction (each row is one thread's, the loss is reduced
over rows in a fixed order in double). The whole step also uses torch's own kernels (GEMMs,
attention, Adam); at these shapes on this CPU build they are bitwise independent of the thread
count too, which the whole-step test checks. If a torch upgrade ever breaks that, the kernel
test below still pins down ours, and the step test says which tensors first differ.
"""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
STEPS = 20


def train(seed=0, steps=STEPS, fused_head=False, mask_prob=0.0, native=False):
    """20 Adam steps of a tiny x-transformers decoder through the wrapper; the losses and the
    final weights (and Adam's state: it carries every gradient)."""
    import warnings

    from x_transformers import Decoder, TransformerWrapper

    from arwrap_cpp import AutoregressiveWrapper

    import arwrap_cpp

    torch.manual_seed(seed)
    if native:  # the native net (SDPA attention, the z-loss's attention_lse, the fused head)
        net = arwrap_cpp.TransformerWrapper(
            num_tokens=64, max_seq_len=32, use_abs_pos_emb=False,
            attn_layers=arwrap_cpp.Decoder(dim=32, depth=2, heads=2, rotary_pos_emb=True))
    else:
        net = TransformerWrapper(num_tokens=64, max_seq_len=32, attn_layers=Decoder(dim=32, depth=2, heads=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoregressiveWrapper(net, mask_prob=mask_prob, fused_head=fused_head, add_attn_z_loss=native)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed + 1)
    losses = []
    for _ in range(steps):
        x = torch.randint(0, 64, (8, 33), generator=gen)
        lens = torch.randint(2, 34, (8,), generator=gen)
        loss = model(x, lens=lens)  # the key-mask draw comes from torch's default generator
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    weights = {n: p.detach().clone() for n, p in net.named_parameters()}
    adam = {f"{n}.exp_avg_sq": opt.state[p]["exp_avg_sq"].clone() for n, p in net.named_parameters()}
    return torch.stack(losses), {**weights, **adam}


def first_difference(a, b):
    return next((n for n in a if not torch.equal(a[n], b[n])), None)


CONFIGS = {"plain": dict(), "masked+fused_head": dict(mask_prob=0.15, fused_head=True),
           "native+masked+z_loss": dict(mask_prob=0.15, native=True)}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_two_runs_are_bitwise_identical(config):
    la, wa = train(**CONFIGS[config])
    lb, wb = train(**CONFIGS[config])
    assert torch.isfinite(la).all()
    assert torch.equal(la, lb), (la - lb).abs().max()
    assert first_difference(wa, wb) is None, first_difference(wa, wb)
    lc, _ = train(seed=1, **CONFIGS[config])
    assert not torch.equal(la, lc)  # the seed matters (the comparison is not vacuous)


def run_with_threads(threads, code, out):
    prog = textwrap.dedent(f"""
        import sys, torch
        torch.set_num_threads({threads})
        sys.path.insert(0, {str(HERE)!r})
        """) + textwrap.dedent(code) + textwrap.dedent(f"""
        assert torch.get_num_threads() == {threads}
        torch.save(result, {str(out)!r})
        """)
    res = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr[-5000:]
    return torch.load(out)


def test_training_is_bitwise_identical_with_1_and_2_threads(tmp_path):
    code = """
        from test_determinism import train
        result = {}
        for name, kw in [("plain", {}), ("masked+fused_head", dict(mask_prob=0.15, fused_head=True)),
                         ("native+masked+z_loss", dict(mask_prob=0.15, native=True))]:
            losses, state = train(**kw)
            result[name] = dict(losses=losses, **state)
        """
    one = run_with_threads(1, code, tmp_path / "t1.pt")
    two = run_with_threads(2, code, tmp_path / "t2.pt")
    for config in one:
        a, b = one[config], two[config]
        diff = first_difference(a, b)
        assert diff is None, (f"{config}: '{diff}' differs between 1 and 2 threads "
                              f"(max abs diff {(a[diff] - b[diff]).abs().max().item():.3g})")


def test_our_kernels_are_bitwise_identical_with_1_and_2_threads(tmp_path):
    """cross_entropy and linear_cross_entropy (loss and every gradient, float32 and bfloat16, with
    label smoothing and z-loss) on fixed inputs large enough to be split over threads."""
    code = """
        import arwrap_cpp
        g = torch.Generator().manual_seed(0)
        result = {}
        for dt in (torch.float32, torch.bfloat16):
            z = (torch.randn(300, 4099, generator=g) * 3).to(dt).requires_grad_(True)
            t = torch.randint(0, 4099, (300,), generator=g)
            t[::7] = -100
            for red in ("mean", "none"):
                loss = arwrap_cpp.cross_entropy(z, t, reduction=red, label_smoothing=0.1, z_loss_weight=1e-4)
                (gz,) = torch.autograd.grad(loss.sum(), z)
                result[f"ce/{dt}/{red}"] = (loss.detach(), gz)
            h = torch.randn(700, 96, generator=g).to(dt).requires_grad_(True)
            W = (torch.randn(2053, 96, generator=g) * 0.1).to(dt).requires_grad_(True)
            b = torch.randn(2053, generator=g).to(dt).requires_grad_(True)
            t = torch.randint(0, 2053, (700,), generator=g)
            t[::5] = -100
            loss = arwrap_cpp.linear_cross_entropy(h, W, t, bias=b, label_smoothing=0.1, z_loss_weight=1e-4)
            result[f"lce/{dt}"] = (loss.detach(), *torch.autograd.grad(loss, (h, W, b)))
        """
    one = run_with_threads(1, code, tmp_path / "k1.pt")
    two = run_with_threads(2, code, tmp_path / "k2.pt")
    for name in one:
        for i, (a, b) in enumerate(zip(one[name], two[name])):
            assert torch.equal(a, b), f"{name} output {i} differs between 1 and 2 threads"

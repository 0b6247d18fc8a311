"""The installed C++ package: find_package(arwrap) from pure C++ programs (tests/integration/cpp)."""
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

import arwrap_cpp

HERE = Path(__file__).parent


class ScriptedLoss(torch.nn.Module):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss, lse = torch.ops.arwrap.cross_entropy(logits, target, -100, "mean", 0.0, 1e-4, False, False)
        return loss


def test_package_layout():
    prefix = Path(arwrap_cpp.cmake_prefix_path)
    assert (prefix / "arwrap" / "arwrapConfig.cmake").exists()
    assert (prefix / "arwrap" / "arwrapTargets.cmake").exists()
    root = prefix.parent.parent
    assert (root / "include" / "arwrap" / "arwrap.h").exists()
    assert Path(arwrap_cpp.library_path).exists()


@pytest.fixture(scope="module")
def cpp_build(cpp_programs):
    """tests/integration/cpp, built against the installed package as a user would (conftest)."""
    return cpp_programs


@pytest.mark.slow
def test_pure_cpp_consumer_builds_and_runs(cpp_build, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(ScriptedLoss()).save(str(tmp_path / "loss.pt"))
    run = subprocess.run([str(cpp_build / "consumer"), str(tmp_path / "loss.pt")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ALL OK" in run.stdout
    assert "torchscript: loss" in run.stdout
    assert "linear_cross_entropy: loss" in run.stdout


@pytest.mark.slow
def test_cpp_wrapper_with_torchscript_net_matches_python(cpp_build, tmp_path):
    from scripted_net import scripted_decoder

    scripted = scripted_decoder()
    scripted.save(str(tmp_path / "net.pt"))
    torch.manual_seed(9)
    x = torch.randint(0, 40, (3, 21))
    x[1, 5] = -100
    (tmp_path / "tokens.txt").write_text(f"{x.shape[0]} {x.shape[1]}\n" + " ".join(map(str, x.flatten().tolist())))
    py_loss = arwrap_cpp.AutoregressiveWrapper(scripted)(x).item()
    run = subprocess.run([str(cpp_build / "wrapper_consumer"), str(tmp_path / "net.pt"), str(tmp_path / "tokens.txt")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    cpp_loss = float(run.stdout.split("loss ")[1].split()[0])
    assert abs(cpp_loss - py_loss) <= 1e-6 * abs(py_loss), (cpp_loss, py_loss)
    assert "x must be 2-D" in run.stdout and "ALL OK" in run.stdout


@pytest.mark.slow
def test_native_net_torchscript_export_trains_in_cpp(cpp_build, tmp_path):
    """A native net + wrapper built in Python, exported, trained by a pure C++ program
    (forward, backward, Adam) with the same losses as the same steps in Python; the
    C++ module arwrap::TransformerWrapper with those weights gives the same loss too."""
    torch.manual_seed(4)
    net = arwrap_cpp.TransformerWrapper(
        num_tokens=61, max_seq_len=32,
        attn_layers=arwrap_cpp.Decoder(dim=32, depth=2, heads=2, attn_dim_head=16, rotary_pos_emb=True),
        use_abs_pos_emb=False)
    wrapper = arwrap_cpp.AutoregressiveWrapper(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        wrapper.to_torchscript(tmp_path / "model.pt")
    x = torch.randint(0, 61, (3, 25))
    x[2, 10:] = -100
    (tmp_path / "tokens.txt").write_text(f"{x.shape[0]} {x.shape[1]}\n" + " ".join(map(str, x.flatten().tolist())))
    with torch.no_grad():
        first_loss = wrapper(x).item()
    greedy = wrapper.generate(x[:1, :4], 8, temperature=0.0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    py_losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = wrapper(x)
        loss.backward()
        opt.step()
        py_losses.append(loss.item())

    run = subprocess.run([str(cpp_build / "native_consumer"), str(tmp_path / "model.pt"), str(tmp_path / "tokens.txt")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "ALL OK" in out and "num_tokens" in out  # the bad-input line names the limit
    native = float(out.split("native loss ")[1].split()[0])
    assert abs(native - first_loss) < 1e-5 * abs(first_loss)
    cpp_losses = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("step ")]
    assert len(cpp_losses) == 5
    assert all(abs(a - b) < 1e-4 * abs(b) for a, b in zip(cpp_losses, py_losses)), (cpp_losses, py_losses)
    assert cpp_losses[-1] < cpp_losses[0]
    cpp_greedy = [int(t) for t in out.split("greedy ")[1].split("\n")[0].split()]
    assert cpp_greedy == greedy[0].tolist()

"""The installed C++ package: find_package(arwrap) from a pure C++ program."""
import os
import shutil
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


@pytest.mark.slow
def test_pure_cpp_consumer_builds_and_runs(tmp_path):
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(ScriptedLoss()).save(str(tmp_path / "loss.pt"))
    build = tmp_path / "build"
    prefix = f"{arwrap_cpp.cmake_prefix_path};{torch.utils.cmake_prefix_path}"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    cfg = subprocess.run(["cmake", "-S", str(HERE / "cpp"), "-B", str(build), *gen, f"-DCMAKE_PREFIX_PATH={prefix}",
                          "-DCMAKE_BUILD_TYPE=Release"], capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    bld = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True)
    assert bld.returncode == 0, bld.stdout[-5000:] + bld.stderr[-5000:]
    env = dict(os.environ)
    run = subprocess.run([str(build / "consumer"), str(tmp_path / "loss.pt")], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ALL OK" in run.stdout
    assert "torchscript: loss" in run.stdout

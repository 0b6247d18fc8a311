import shutil
import subprocess
import sys

import pytest
import torch

import arwrap_cpp  # noqa: F401  (registers torch.ops.arwrap)


def build_cmake_project(source, build, what):
    """Configures and builds a CMake project (tests/integration/cpp, examples/train)
    against the installed package with find_package(arwrap), as a user's program would be.
    Skips when cmake is missing; progress goes to stderr (it takes about a minute)."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    prefix = f"{arwrap_cpp.cmake_prefix_path};{torch.utils.cmake_prefix_path}"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    print(f"\nbuilding {what} (about a minute) ...", file=sys.stderr)
    cfg = subprocess.run(["cmake", "-S", str(source), "-B", str(build), *gen, f"-DCMAKE_PREFIX_PATH={prefix}",
                          "-DCMAKE_BUILD_TYPE=Release"], capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    bld = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True)
    assert bld.returncode == 0, bld.stdout[-5000:] + bld.stderr[-5000:]
    return build


@pytest.fixture(scope="session")
def cpp_programs(tmp_path_factory):
    """The folder of the pure C++ test programs (tests/integration/cpp: consumer,
    wrapper_consumer, native_consumer, bad_input), built once per session."""
    from pathlib import Path

    source = Path(__file__).parent / "integration" / "cpp"
    return build_cmake_project(source, tmp_path_factory.mktemp("cpp") / "build", "the C++ test programs")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def reference_cross_entropy(logits, target, *, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                            z_loss_weight=0.0):
    """float64 reference: (1-eps) nll + eps (lse - mean z) + w lse^2, mean over non-ignored."""
    z = logits.double()
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
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum().clamp(min=1)


@pytest.fixture
def ref_ce():
    return reference_cross_entropy


def pytest_report_header(config):
    return f"torch {torch.__version__}, threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}"

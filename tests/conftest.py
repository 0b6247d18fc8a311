import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import arwrap_cpp  # noqa: F401  (registers torch.ops.arwrap)

# One reference per operator lives in tests/ops/op_references.py; the tests outside
# tests/ops take the cross-entropy one from here (`from conftest import reference_cross_entropy`).
sys.path.insert(0, str(Path(__file__).parent / "ops"))
from op_references import reference_cross_entropy  # noqa: E402,F401

# The one "needs CUDA" rule. A test that needs a GPU carries the `cuda` marker
# (@pytest.mark.cuda, or a device parameter "cuda": marked here at collection); it is
# skipped with this reason where it cannot run, and scripts/gpu_check.sh runs exactly
# the marked tests (`pytest -m cuda`).
HAS_CUDA = torch.cuda.is_available() and arwrap_cpp.built_with_cuda()
CUDA_SKIP_REASON = ("needs a CUDA device" if not torch.cuda.is_available()
                    else "needs libarwrap built with its CUDA kernels")
DEVICES = ["cpu", "cuda"]  # for @pytest.mark.parametrize("device", DEVICES); the "cuda" cases get the marker


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device and libarwrap built with its CUDA kernels "
                                       "(skipped otherwise; scripts/gpu_check.sh runs `pytest -m cuda`)")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if any(str(v).startswith("cuda") for k, v in params.items() if "device" in k):
            item.add_marker(pytest.mark.cuda)
        if not HAS_CUDA and item.get_closest_marker("cuda") is not None:
            item.add_marker(pytest.mark.skip(reason=CUDA_SKIP_REASON))


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


@pytest.fixture(scope="session")
def trainer(tmp_path_factory):
    """arwrap-train (examples/train), configured and built against the installed package as
    scripts/train.sh does, once per session."""
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "examples" / "train"
    return build_cmake_project(source, tmp_path_factory.mktemp("train") / "build", "arwrap-train") / "arwrap-train"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def ref_ce():
    return reference_cross_entropy


def pytest_report_header(config):
    return f"torch {torch.__version__}, threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}"

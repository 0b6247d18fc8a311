"""arwrap-train --precision fp32|bf16: the header says which precision runs and why,
bad values are refused, a resumed run keeps its checkpoint's precision, and 300 steps
of bf16 mixed precision end within 2% (relative) of float32's validation loss."""
import re
from pathlib import Path

import pytest
import torch

from conftest import build_cmake_project

ROOT = Path(__file__).resolve().parents[2]
MODEL = ["--seq-len", "64", "--dim", "64", "--depth", "2", "--heads", "2", "--dim-head", "32"]
TRAIN = ["--batch", "8", "--lr", "3e-3", "--warmup", "10", "--val-windows", "16", "--threads", "1",
         "--log-every", "50", "--sample-every", "0", "--save-every", "0", "--max-bytes", "300000"]
VAL = re.compile(r"^step\s+(\d+)\s+val_loss (\d+\.\d+)", re.M)
HEADER = re.compile(r"^precision: (fp32|bf16) \((.*?)\)", re.M)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    build = tmp_path_factory.mktemp("train_precision") / "build"
    return build_cmake_project(ROOT / "examples" / "train", build, "arwrap-train") / "arwrap-train"


def run(trainer, *args):
    import subprocess

    return subprocess.run([str(trainer), *map(str, args)], capture_output=True, text=True, errors="replace",
                          timeout=600)


def has_native_bf16():
    caps = torch._C._cpu._get_cpu_capability()
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def test_header_default_and_bad_value(trainer, tmp_path):
    p = run(trainer, *MODEL, *TRAIN, "--steps", 1, "--val-every", 0, "--checkpoint", tmp_path / "a.pt")
    assert p.returncode == 0, p.stderr
    prec, why = HEADER.search(p.stdout).groups()
    assert prec == ("bf16" if has_native_bf16() else "fp32")
    assert why.startswith("default: the CPU has")
    p = run(trainer, *MODEL, *TRAIN, "--steps", 1, "--val-every", 0, "--precision", "fp32",
            "--checkpoint", tmp_path / "b.pt")
    assert HEADER.search(p.stdout).groups() == ("fp32", "--precision")
    p = run(trainer, "--precision", "fp16", "--steps", 1)
    assert p.returncode == 1 and "--precision must be fp32 or bf16, got 'fp16'" in p.stderr
    # a resumed run keeps the precision it was trained with
    p = run(trainer, "--checkpoint", tmp_path / "b.pt", "--resume", "--steps", 2, "--val-every", 0)
    assert p.returncode == 0, p.stderr
    assert HEADER.search(p.stdout).groups() == ("fp32", "--precision")


def test_bf16_300_steps_end_within_2_percent_of_fp32(trainer, tmp_path):
    final = {}
    for prec in ("fp32", "bf16"):
        p = run(trainer, *MODEL, *TRAIN, "--steps", 300, "--val-every", 300, "--precision", prec,
                "--checkpoint", tmp_path / f"{prec}.pt")
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        assert HEADER.search(p.stdout).group(1) == prec
        vals = {int(s): float(v) for s, v in VAL.findall(p.stdout)}
        assert vals[300] < vals[0] - 1.0, vals  # it learned
        final[prec] = vals[300]
    print(f"validation loss after 300 steps: fp32 {final['fp32']:.4f}, bf16 {final['bf16']:.4f}")
    assert final["bf16"] != final["fp32"]  # bf16 really ran
    assert abs(final["bf16"] - final["fp32"]) <= 0.02 * final["fp32"], final

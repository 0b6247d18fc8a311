"""bench/gpu_check.sh, the one-shot script of the first GPU run: its pre-flight must say
what is missing and stop before the build, with the log written as it goes and a summary
even then (on the CPU machines: no GPU, so it must stop there, exit 2)."""
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_script_parses():
    for script in ("bench/gpu_check.sh", "bench/fetch_gpu_wheels.sh"):
        r = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_gpu_check_preflight_reports_and_stops(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "bench/gpu_check.sh"), "--preflight-only"], env=env, capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    log = (tmp_path / "gpu_check.log").read_text()
    summary = (tmp_path / "summary.md").read_text()
    assert "pre-flight" in log and "| pre-flight |" in summary
    if torch.cuda.is_available():
        assert r.returncode == 0, log
    else:
        assert r.returncode == 2, log
        assert "PRE-FLIGHT: torch sees no CUDA device" in log
        assert "FAILED" in summary

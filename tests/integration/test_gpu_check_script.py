"""scripts/gpu_check.sh, the one-shot script of the first GPU run: its pre-flight must say
what is missing and stop before the build, with the log written as it goes and a summary
even then (on the CPU machines: no GPU, so it must stop there, exit 2)."""
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_script_parses():
    for script in ("scripts/gpu_check.sh", "scripts/fetch_gpu_wheels.sh"):
        r = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_gpu_check_preflight_reports_and_stops(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), "--preflight-only"], env=env, capture_output=True,
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


def test_bench_gpu_native_section_runs_and_writes_rows_as_it_goes(tmp_path):
    """bench/bench_gpu.py's native-step section (x-transformers attn_flash vs the native
    net under bf16 autocast) at a tiny size on the CPU: both rows reach gpu.md and
    gpu.jsonl, with losses that agree (same weights, same batch)."""
    import json

    import pytest

    pytest.importorskip("x_transformers")
    out = tmp_path / "gpu"
    r = subprocess.run([sys.executable, str(ROOT / "bench/bench_gpu.py"), "--device", "cpu", "--sections", "native",
                        "--tiny", "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert [row["name"] for row in rows] == ["x-transformers (attn_flash)", "arwrap native"]
    assert abs(rows[0]["loss"] - rows[1]["loss"]) < 0.05 * abs(rows[0]["loss"])  # bf16 autocast, two implementations
    assert out.with_suffix(".md").read_text().count("| native step |") == 2

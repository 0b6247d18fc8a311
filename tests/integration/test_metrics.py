"""The training metrics file (arwrap-train --metrics, arwrap_cpp.metrics), its plot
(scripts/plot.sh) and the benchmark charts (bench/plot_results.py); docs/metrics.md."""
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from arwrap_cpp.metrics import MetricsWriter, read_metrics
from conftest import build_cmake_project

ROOT = Path(__file__).resolve().parents[2]
MODEL = ["--seq-len", "32", "--dim", "32", "--depth", "1", "--heads", "2", "--dim-head", "16"]
TRAIN = ["--batch", "4", "--lr", "3e-3", "--warmup", "4", "--val-windows", "4", "--threads", "1",
         "--log-every", "3", "--val-every", "6", "--sample-every", "0"]
STEP = re.compile(r"^step\s+(\d+)/\d+\s+loss (\d+\.\d+)\s+(\d+) tok/s.*rss (\d+\.\d) MB", re.M)
VAL = re.compile(r"^step\s+(\d+)\s+val_loss (\d+\.\d+)", re.M)
TRAIN_FIELDS = {"loss", "bits_per_byte", "tokens_per_s", "lr", "grad_norm", "rss_mb"}


def png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    root = tmp_path_factory.mktemp("corpus")
    for name in ["string.py", "textwrap.py", "bisect.py", "colorsys.py"]:
        shutil.copy(stdlib / name, root / name)
    return root


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    build = tmp_path_factory.mktemp("train") / "build"
    return build_cmake_project(ROOT / "examples" / "train", build, "arwrap-train") / "arwrap-train"


def run(*cmd, env=None):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, errors="replace", timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def first_run(trainer, corpus, tmp_path_factory):
    """12 steps, no --metrics: the file lands beside the checkpoint."""
    ckpt = tmp_path_factory.mktemp("run") / "model.pt"
    proc = run(trainer, "--data", corpus, *MODEL, *TRAIN, "--steps", 12, "--save-every", 6, "--checkpoint", ckpt)
    return ckpt, proc.stdout


@pytest.mark.slow
def test_trainer_writes_json_lines_beside_the_checkpoint(first_run):
    ckpt, out = first_run
    path = ckpt.with_name("model.metrics.jsonl")
    assert f"metrics: {path}" in out
    recs = [json.loads(line) for line in path.read_text().splitlines()]  # every line is JSON
    steps = [r["step"] for r in recs]
    assert steps == sorted(set(steps)), steps  # strictly increasing
    # a line per logged step (1, every 3rd, the last) and per validation (0, every 6th)
    assert steps == [0, 1, 3, 6, 9, 12], steps
    # the progress lines and the metrics agree
    printed = {int(s): (float(l), float(t), float(m)) for s, l, t, m in STEP.findall(out)}
    vals = {int(s): float(v) for s, v in VAL.findall(out)}
    assert sorted(printed) == [1, 3, 6, 9, 12] and sorted(vals) == [0, 6, 12]
    for r in recs:
        s = r["step"]
        assert (TRAIN_FIELDS <= r.keys()) == (s in printed), r
        assert ("val_loss" in r) == (s in vals), r
        if s in printed:
            loss, tok_s, rss = printed[s]
            assert r["loss"] == pytest.approx(loss, abs=6e-5)
            assert r["bits_per_byte"] == pytest.approx(r["loss"] / math.log(2), rel=1e-6)
            assert r["tokens_per_s"] == pytest.approx(tok_s, abs=1.0, rel=1e-3)
            assert r["rss_mb"] == pytest.approx(rss, abs=0.06)
            assert r["lr"] == pytest.approx(3e-3 * min(s, 4) / 4)  # linear warmup over 4 steps
            assert math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0
        if s in vals:
            assert r["val_loss"] == pytest.approx(vals[s], abs=1.1e-6)
            assert r["val_bits_per_byte"] == pytest.approx(r["val_loss"] / math.log(2), rel=1e-6)
    walls = [r["wall_s"] for r in recs]
    assert walls == sorted(walls) and walls[-1] > 0
    assert recs[-1]["val_loss"] < recs[0]["val_loss"]
    assert not any(k in r for r in recs for k in ("precision", "world_size"))  # set only when known


@pytest.mark.slow
def test_resume_appends_without_duplicating_steps(trainer, corpus, first_run, tmp_path):
    ckpt0, _ = first_run
    ckpt = tmp_path / "model.pt"
    metrics = tmp_path / "custom.jsonl"
    # a 6-step run with its own --metrics, then lines of steps a crashed run got to after the checkpoint
    run(trainer, "--data", corpus, *MODEL, *TRAIN, "--steps", 6, "--checkpoint", ckpt, "--metrics", metrics)
    before = metrics.read_text().splitlines()
    assert [json.loads(l)["step"] for l in before] == [0, 1, 3, 6]
    stale = [json.dumps({"step": s, "loss": 9.0, "wall_s": 999.0}) for s in (7, 8)]
    metrics.write_text("\n".join(before + stale) + "\n")
    # resumed without --metrics: the checkpoint remembers it
    out = run(trainer, "--checkpoint", ckpt, "--resume", "--steps", 12).stdout
    assert f"metrics: {metrics}" in out
    after = metrics.read_text().splitlines()
    steps = [json.loads(l)["step"] for l in after]
    # step 6 once (validated again on resume), the stale 7 and 8 gone, 7 logged as a resumed run's first step
    assert steps == [0, 1, 3, 6, 7, 9, 12], steps
    assert after[:3] == before[:3]  # the kept lines are untouched
    recs = [json.loads(l) for l in after]
    assert all(r.get("loss") != 9.0 for r in recs)
    assert recs[3]["wall_s"] >= recs[2]["wall_s"]  # the wall clock goes on from the kept lines
    assert not ckpt.with_name("model.metrics.jsonl").exists()
    # the same figures as the uninterrupted 12-step run (batches are drawn from (seed, step)) where
    # a line covers the same steps (the resumed run's step 9 averages steps 8-9, the straight run's 7-9)
    straight = {r["step"]: r for r in read_metrics(ckpt0.with_name("model.metrics.jsonl"))}
    mine = {r["step"]: r for r in recs}
    for step in (1, 3, 12):
        assert mine[step]["loss"] == pytest.approx(straight[step]["loss"], rel=1e-5)
    for step in (0, 6, 12):
        assert mine[step]["val_loss"] == pytest.approx(straight[step]["val_loss"], rel=1e-5)


def test_python_writer_makes_its_folder_and_checks_resume_step(tmp_path):
    w = MetricsWriter(tmp_path / "sub" / "m.jsonl")  # the Python writer makes the folder
    w.close()
    with pytest.raises(ValueError, match="resume_step"):
        MetricsWriter(tmp_path / "x.jsonl", resume_step=-1)


@pytest.mark.slow
def test_trainer_names_an_unwritable_metrics_path(trainer, corpus, tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    proc = subprocess.run([str(trainer), "--data", str(corpus), *MODEL, *TRAIN, "--steps", "1", "--checkpoint",
                           str(tmp_path / "m.pt"), "--metrics", str(tmp_path / "file" / "m.jsonl")],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "metrics file" in proc.stderr and "--metrics" in proc.stderr, proc.stderr


def test_python_writer_format_and_resume(tmp_path):
    path = tmp_path / "py.metrics.jsonl"
    with MetricsWriter(path, precision="bf16", world_size=2) as m:
        m.validation(0, 5.5)
        for step in range(1, 7):
            m.train(step, loss=5.0 - step / 10, tokens_per_s=100.0, lr=1e-3, grad_norm=float("nan"), rss_mb=10.0)
            if step % 3 == 0:
                m.validation(step, 5.0 - step / 10)
    recs = read_metrics(path)
    assert [r["step"] for r in recs] == list(range(7))
    assert recs[0] == {"step": 0, "val_loss": 5.5, "val_bits_per_byte": pytest.approx(5.5 / math.log(2)),
                       "wall_s": recs[0]["wall_s"], "precision": "bf16", "world_size": 2}
    assert recs[3]["val_loss"] == pytest.approx(4.7) and recs[3]["loss"] == pytest.approx(4.7)
    assert recs[1]["grad_norm"] is None  # NaN is not JSON: written as null
    assert "NaN" not in path.read_text()
    # resume at step 4: lines 0..3 kept, then appended after them
    with MetricsWriter(path, resume_step=4) as m:
        m.train(4, loss=1.0)
    recs2 = read_metrics(path)
    assert [r["step"] for r in recs2] == [0, 1, 2, 3, 4]
    assert recs2[:4] == recs[:4]
    assert recs2[4]["wall_s"] >= recs[3]["wall_s"]
    # a rank other than 0 writes nothing, not even the file
    with MetricsWriter(tmp_path / "rank1.jsonl", enabled=False) as m:
        m.train(1, loss=1.0)
    assert not (tmp_path / "rank1.jsonl").exists()
    path.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"py.metrics.jsonl:2"):
        read_metrics(path)


def test_python_example_writes_the_same_format(tmp_path):
    path = tmp_path / "demo.metrics.jsonl"
    run(sys.executable, ROOT / "examples" / "demo_loss.py", "--steps", 4, "--validate-every", 2, "--dim", 32,
        "--depth", 1, "--seq", 32, "--batch", 2, "--threads", 1, "--metrics", path)
    recs = read_metrics(path)
    assert [r["step"] for r in recs] == [1, 2, 4]
    assert TRAIN_FIELDS <= recs[0].keys() and "val_loss" in recs[1] and "val_loss" in recs[2]


def _plot_env():
    # scripts/plot.sh installs matplotlib into the venv running the tests (once)
    return {**os.environ, "ARWRAP_VENV": sys.prefix}


@pytest.fixture(scope="module")
def plot_ready():
    run("bash", ROOT / "scripts" / "plot.sh", "--help", env=_plot_env())


def test_plot_command_writes_a_png_of_the_asked_size(plot_ready, tmp_path):
    a, b = tmp_path / "fp32.metrics.jsonl", tmp_path / "bf16.metrics.jsonl"
    for path, prec, k in ((a, "fp32", 1.0), (b, "bf16", 1.1)):
        with MetricsWriter(path, precision=prec) as m:
            m.validation(0, 5.6)
            for s in range(1, 21):
                m.train(s, loss=5.5 * k / (1 + s / 10), tokens_per_s=1e3, lr=1e-3, grad_norm=1.0, rss_mb=100)
                if s % 10 == 0:
                    m.validation(s, 5.6 * k / (1 + s / 10))
    out = tmp_path / "curves.png"
    proc = run("bash", ROOT / "scripts" / "plot.sh", a, b, "-o", out, "--size", "900x400", env=_plot_env())
    assert f"wrote {out}" in proc.stdout
    assert out.stat().st_size > 10_000
    assert png_size(out) == (900, 400)
    # the default name: beside the first file
    run("bash", ROOT / "scripts" / "plot.sh", a, env=_plot_env())
    assert png_size(tmp_path / "fp32.png") == (1400, 520)


def test_plot_command_names_a_bad_file(plot_ready, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"loss": 1}\n')
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "plot.sh"), str(bad)], capture_output=True, text=True,
                          env=_plot_env())
    assert proc.returncode != 0 and "bad.jsonl:1" in proc.stderr and "step" in proc.stderr


@pytest.mark.parametrize("name", ["linear_cross_entropy", "cross_entropy", "native"])
def test_bench_chart_renders_from_a_stored_result(plot_ready, tmp_path, name):
    src = ROOT / "bench" / "results" / f"{name}.json"
    out = tmp_path / f"{name}.png"
    proc = run(sys.executable, ROOT / "bench" / "plot_results.py", src, "--out", out)
    assert f"wrote {out}" in proc.stdout
    w, h = png_size(out)
    assert w == 1300 and h > 300 and out.stat().st_size > 20_000


def test_bench_chart_rejects_a_json_without_results(plot_ready, tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"threads": 2}')
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "plot_results.py"), str(bad)], capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "x.json has no list of results" in proc.stderr


def test_data_parallel_example_writes_one_file_from_rank_0(tmp_path):
    """examples/ddp_train.py under torchrun (2 processes): rank 0 alone writes, with world_size."""
    import torch

    path, out = tmp_path / "ddp.metrics.jsonl", tmp_path / "ddp.pt"
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    run(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        ROOT / "examples" / "ddp_train.py", "--steps", 4, "--batch", 2, "--seq", 16, "--metrics", path, "--out", out,
        env=env)
    recs = read_metrics(path)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert all(r["world_size"] == 2 for r in recs)
    # the logged loss is the mean over ranks that the script saves (written once, not once per rank)
    assert [r["loss"] for r in recs] == pytest.approx(torch.load(out)["losses"], rel=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.metrics.jsonl", "ddp.pt"]

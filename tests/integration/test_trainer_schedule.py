"""arwrap-train's learning-rate schedule (issue 24): linear warmup, then cosine or linear decay to
--min-lr at --steps (or constant), in the metrics on every logged step, continued exactly by a
resumed run."""
import json
import math
import os
import re
import subprocess

import pytest
import torch

pytestmark = pytest.mark.slow

MODEL = ["--seq-len", "32", "--dim", "32", "--depth", "1", "--heads", "2", "--dim-head", "16"]
TRAIN = ["--batch", "2", "--lr", "4e-3", "--warmup", "3", "--val-windows", "2", "--val-every", "0",
         "--sample-every", "0", "--threads", "1", "--log-every", "1", "--precision", "fp32", "--steps", "11"]


def expected(step, schedule, lr=4e-3, min_lr=4e-4, warmup=3, steps=11):
    if step <= warmup:
        return lr * step / warmup
    p = (step - warmup) / (steps - warmup)
    return {"constant": lr, "linear": lr - (lr - min_lr) * p,
            "cosine": min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * p))}[schedule]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from pathlib import Path
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(Path(torch.__file__).parent.joinpath("functional.py").read_text()[:20_000])
    return path


def run(trainer, *args):
    proc = subprocess.run([str(trainer), *map(str, args)], capture_output=True, text=True, errors="replace",
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def lrs(metrics):
    return {r["step"]: r["lr"] for r in map(json.loads, metrics.read_text().splitlines()) if "lr" in r}


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedule_in_the_metrics_and_across_a_resume(trainer, corpus, tmp_path, schedule):
    full, half = tmp_path / "full.pt", tmp_path / "half.pt"
    out = run(trainer, "--data", corpus, *MODEL, *TRAIN, "--schedule", schedule, "--checkpoint", full)
    assert f"(warmup 3{'' if schedule == 'constant' else ', ' + schedule + ' to 0.0004 at step 11'})" in out
    want = {s: expected(s, schedule) for s in range(1, 12)}
    got = lrs(full.with_name("full.metrics.jsonl"))
    assert got.keys() == want.keys()
    for s in want:
        assert got[s] == pytest.approx(want[s], rel=1e-6), (s, got, want)
    if schedule != "constant":
        assert got[11] == pytest.approx(4e-4) and got[4] > got[8] > got[11]
    # the same run stopped after its checkpoint of step 5 (steps 6 and 7 made NaN with the test seam,
    # --max-bad-steps 2: it ends with an error at 7), then resumed: the same learning rates, the same model
    env = dict(os.environ, OMP_NUM_THREADS="1", ARWRAP_TRAIN_INJECT_NAN="6,7")
    crash = subprocess.run([str(trainer), "--data", str(corpus), *MODEL, *TRAIN, "--schedule", schedule,
                            "--save-every", "5", "--max-bad-steps", "2", "--checkpoint", str(half)],
                           capture_output=True, text=True, env=env)
    assert crash.returncode == 1 and "holds step 5" in crash.stderr, crash.stdout + crash.stderr
    resumed = run(trainer, "--checkpoint", half, "--resume")
    # (the resumed run measures step 5's validation again, and its line replaces step 5's training one)
    assert lrs(half.with_name("half.metrics.jsonl")) == {s: v for s, v in got.items() if s != 5}
    final = re.compile(r"^step\s+11\s+val_loss (\S+)", re.M)
    assert final.search(resumed).group(1) == final.search(out).group(1)


def test_min_lr_flag_and_a_bad_schedule(trainer, corpus, tmp_path):
    path = tmp_path / "m.pt"
    run(trainer, "--data", corpus, *MODEL, *TRAIN, "--min-lr", 0, "--schedule", "linear", "--checkpoint", path)
    assert lrs(path.with_name("m.metrics.jsonl"))[11] == 0
    proc = subprocess.run([str(trainer), "--schedule", "step"], capture_output=True, text=True)
    assert proc.returncode == 1 and "--schedule must be constant or cosine or linear, got 'step'" in proc.stderr

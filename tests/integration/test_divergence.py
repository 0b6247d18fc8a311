"""arwrap-train when a run diverges (issue 24): a step whose loss or gradient norm is not finite
takes no optimizer step (weights and Adam moments stay as they were), is printed and counted in
the metrics; --max-bad-steps of them in a row stop the run with an error, and the checkpoint the
run started from is left byte for byte as it was. Two ranks: tests/integration/test_distributed.py."""
import json
import os
import re
import subprocess

import pytest
import torch

from arwrap_cpp import checkpoint as ckpt

MODEL = ["--seq-len", "32", "--dim", "32", "--depth", "1", "--heads", "2", "--dim-head", "16"]
TRAIN = ["--batch", "4", "--lr", "3e-3", "--warmup", "2", "--val-windows", "4", "--val-every", "0",
         "--sample-every", "0", "--threads", "1", "--log-every", "1", "--precision", "fp32"]
SKIP = re.compile(r"^step\s+(\d+)/\d+\s+loss \S+, gradient norm \S+: not finite, optimizer step skipped "
                  r"\((\d+) in a row, (\d+) in this run; --max-bad-steps (\d+)\)$", re.M)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """About 30 kB of the torch package's Python sources, one file."""
    from pathlib import Path
    text = Path(torch.__file__).parent.joinpath("functional.py").read_text()[:30_000]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(text)
    return path


def run(trainer, *args, inject=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("ARWRAP_TRAIN_INJECT_NAN", None)
    if inject:
        env["ARWRAP_TRAIN_INJECT_NAN"] = inject
    return subprocess.run([str(trainer), *map(str, args)], capture_output=True, text=True, errors="replace",
                          timeout=300, env=env)


@pytest.fixture(scope="module")
def good(trainer, corpus, tmp_path_factory):
    """A good 6-step checkpoint, the run that a diverging resume must not spoil."""
    path = tmp_path_factory.mktemp("good") / "model.pt"
    proc = run(trainer, "--data", corpus, *MODEL, *TRAIN, "--steps", 6, "--checkpoint", path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return path


def test_a_diverging_resume_stops_and_leaves_the_good_checkpoint_alone(trainer, good, tmp_path):
    """The issue's report: --lr 1e6 gave 'loss nan' from some step on, exit 0 and a NaN checkpoint."""
    path = tmp_path / "model.pt"
    path.write_bytes(good.read_bytes())
    before = path.read_bytes()
    proc = run(trainer, "--checkpoint", path, "--resume", "--steps", 40, "--lr", 1e6, "--max-bad-steps", 3,
               "--save-every", 5)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("arwrap-train: error: training diverged: 3 steps in a row"), proc.stderr
    assert "--max-bad-steps 3" in err[0] and f"the checkpoint at {path} is unchanged" in err[0]
    skips = SKIP.findall(proc.stdout)  # (a good step between two bad ones restarts the count)
    assert [int(n) for _, n, _, _ in skips][-3:] == [1, 2, 3], proc.stdout
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp*"))
    # the metrics count the skipped steps, and the last line is the step the run stopped at
    recs = [json.loads(line) for line in (tmp_path / "model.metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("skipped_steps", 0) for r in recs) == len(skips)
    assert recs[-1]["step"] == int(skips[-1][0])


def test_a_new_run_that_diverges_writes_no_checkpoint(trainer, corpus, tmp_path):
    path = tmp_path / "model.pt"
    proc = run(trainer, "--data", corpus, *MODEL, *TRAIN, "--steps", 30, "--lr", 1e6, "--checkpoint", path)
    assert proc.returncode == 1 and "training diverged: 5 steps in a row" in proc.stderr, proc.stdout + proc.stderr
    assert "no checkpoint written" in proc.stderr and not path.exists()


def test_non_finite_steps_are_skipped_and_training_goes_on(trainer, corpus, good, tmp_path):
    """Steps 3 and 4 made NaN (the test seam ARWRAP_TRAIN_INJECT_NAN): two skipped steps, Adam takes
    8 - 2 steps, and the weights end where a run that never drew steps 3 and 4 would not: finite."""
    path = tmp_path / "model.pt"
    proc = run(trainer, "--data", corpus, *MODEL, *TRAIN, "--steps", 8, "--checkpoint", path, inject="3,4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [(int(s), int(n), int(t)) for s, n, t, _ in SKIP.findall(proc.stdout)] == [(3, 1, 1), (4, 2, 2)]
    c = ckpt.load_checkpoint(path)
    assert c["step"] == 8
    assert c["optimizer"]["token_emb.emb.weight.step"].item() == 6  # the moments skipped two steps
    assert all(torch.isfinite(t).all() for t in c["model"].values())
    recs = {r["step"]: r for r in map(json.loads, (tmp_path / "model.metrics.jsonl").read_text().splitlines())}
    assert recs[3]["skipped_steps"] == 1 and recs[3]["loss"] is None and recs[5]["skipped_steps"] == 0


def test_a_skipped_step_leaves_weights_and_moments_as_they_were(trainer, good, tmp_path):
    """Resumed from the good checkpoint at step 6, step 7 made NaN and the run ends there: it saves
    (the streak stayed under --max-bad-steps), and every weight and moment is the good checkpoint's."""
    path = tmp_path / "model.pt"
    path.write_bytes(good.read_bytes())
    proc = run(trainer, "--checkpoint", path, "--resume", "--steps", 7, inject="7")
    assert proc.returncode == 0 and len(SKIP.findall(proc.stdout)) == 1, proc.stdout + proc.stderr
    c, g = ckpt.load_checkpoint(path), ckpt.load_checkpoint(good)
    assert c["step"] == 7 and g["step"] == 6
    for part in ("model", "optimizer"):
        assert c[part].keys() == g[part].keys()
        for name in g[part]:
            assert torch.equal(c[part][name], g[part][name]), (part, name)
    # and the comparison can fail: the same resume without the NaN moves every weight
    path.write_bytes(good.read_bytes())
    assert run(trainer, "--checkpoint", path, "--resume", "--steps", 7).returncode == 0
    moved = ckpt.load_checkpoint(path)["model"]
    assert not torch.equal(moved["token_emb.emb.weight"], g["model"]["token_emb.emb.weight"])


def test_a_checkpoint_due_during_a_streak_waits_for_a_good_step(trainer, good, tmp_path):
    """--save-every 1 with steps 7 and 8 NaN and --max-bad-steps 2: the run stops at 8 and the
    checkpoint of step 6 is untouched (nothing was saved at 7)."""
    path = tmp_path / "model.pt"
    path.write_bytes(good.read_bytes())
    proc = run(trainer, "--checkpoint", path, "--resume", "--steps", 12, "--save-every", 1, "--max-bad-steps", 2,
               inject="7,8")
    assert proc.returncode == 1 and "2 steps in a row (7..8)" in proc.stderr, proc.stdout + proc.stderr
    assert path.read_bytes() == good.read_bytes()

"""Data parallelism on c10d/Gloo (issue 14): arwrap-train and the arwrap::distributed library API
launched by torchrun (and by hand with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT), on loopback."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import arwrap_cpp
from arwrap_cpp import checkpoint as ckpt

MODEL = ["--seq-len", "32", "--dim", "32", "--depth", "2", "--heads", "2", "--dim-head", "16"]
TRAIN = ["--batch", "4", "--lr", "3e-3", "--warmup", "5", "--val-windows", "8", "--val-every", "10",
         "--sample-every", "0", "--threads", "1", "--log-every", "5", "--seed", "3",
         "--precision", "fp32"]  # the 1e-5 comparisons with one process are float32's
STEP = re.compile(r"^step\s+(\d+)/(\d+)\s+loss (\d+\.\d+)\s+(\d+) tok/s", re.M)

pytestmark = pytest.mark.slow

if not arwrap_cpp.distributed_available():
    pytest.skip("libarwrap was built without c10d/Gloo (apt-get install libgloo-dev, then rebuild)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def dist_check(cpp_programs):
    return cpp_programs / "dist_check"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """About 60 kB of the torch package's Python sources, one file."""
    text = "".join(Path(torch.__file__).parent.joinpath(f).read_text() for f in ["functional.py", "serialization.py"])
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(text[:60_000])
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", **{k: str(v) for k, v in extra.items()})
    return env


def torchrun(nproc, *args, timeout=600, **env):
    """python -m torch.distributed.run --no-python, as `torchrun --no-python` runs a binary."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--no-python", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout,
                          env=clean_env(**env))


def run1(*args, env=None, timeout=600):
    return subprocess.run(list(map(str, args)), capture_output=True, text=True, errors="replace", timeout=timeout,
                          env=env or clean_env())


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


# Two ranks and one process sum the same rows in another order; float32 rounding of ~1e-7 per
# step, amplified by Adam's normalisation over 12-20 steps, leaves relative differences up to
# ~1e-5 in the feed-forward's output weight (6.6e-6 with the plain ATen composition, 1.03e-5
# with the lean layers' own backward); a wrong reduction is off by far more than 1e-3 (the
# "can fail" checks below).
SAME_WEIGHTS = 2e-5


def max_rel_diff(a, b):
    """max |a - b| / max |b| over every tensor of two state dicts."""
    worst = 0.0
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k].double(), b[k].double()
        worst = max(worst, ((x - y).abs().max() / y.abs().max().clamp_min(1e-12)).item())
    return worst


# ------------------------------------------------------------------ library API


def test_library_api_two_ranks_under_torchrun(dist_check):
    out = ok(torchrun(2, dist_check, "check", 60))
    for r in (0, 1):
        assert re.search(rf"dist_check: rank {r} of 2 \(gloo\): OK \(\d+ checks\)", out), out


def test_library_api_alone(dist_check):
    out = ok(run1(dist_check, "check"))
    assert "dist_check: rank 0 of 1 (none): OK" in out


def test_the_documented_example_trains_one_model_on_two_ranks(dist_check):
    """docs/distributed.md's complete example (tests/integration/cpp/ddp_example.cpp)."""
    example = dist_check.parent / "ddp_example"
    two = ok(torchrun(2, example))
    ranks = dict(re.findall(r"rank (\d) of 2 \(gloo\): final loss [\d.]+, weight checksum (-?[\d.]+)", two))
    assert set(ranks) == {"0", "1"} and ranks["0"] == ranks["1"], two  # one model on both ranks
    losses = [float(x) for x in re.findall(r"^step\s+\d+\s+loss ([\d.]+)", two, re.M)]
    assert len(losses) == 5 and losses[-1] < 0.5 * losses[0], two
    alone = ok(run1(example))
    assert "rank 0 of 1 (none): final loss" in alone


def test_library_hung_rank_fails_the_collective_within_the_timeout(dist_check):
    t0 = time.monotonic()
    proc = torchrun(2, dist_check, "hang", 4, timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode != 0
    m = re.search(r"dist_check: rank 0 failed after (\d+\.\d) s: arwrap::distributed: all-reduce failed on rank 0 of 2",
                  proc.stdout)
    assert m, proc.stdout + proc.stderr[-3000:]
    assert 3.0 <= float(m.group(1)) <= 15.0, m.group(0)
    assert took < 60, took


# ------------------------------------------------------------------ the trainer


@pytest.fixture(scope="module")
def two_rank_run(trainer, corpus, tmp_path_factory):
    """20 steps on 2 ranks under torchrun, checkpoints at 10 and 20."""
    d = tmp_path_factory.mktemp("two")
    path = d / "model.pt"
    proc = torchrun(2, trainer, "--data", corpus, *MODEL, *TRAIN, "--steps", 20, "--save-every", 10,
                    "--checkpoint", path)
    out = ok(proc)
    return path, out, proc.stderr


def test_two_ranks_train_as_one_process_on_the_concatenated_batch(trainer, corpus, two_rank_run, tmp_path):
    path, out, _ = two_rank_run
    assert re.search(r"^data parallel: world size 2, backend gloo, global batch 2 x --batch", out, re.M), out
    assert ckpt.load_checkpoint(path)["step"] == 20
    # one process drawing both ranks' windows (batch 2 x 4): the same weights
    one = tmp_path / "one.pt"
    out1 = ok(run1(trainer, "--data", corpus, *MODEL, *TRAIN, "--steps", 20, "--as-ranks", 2, "--checkpoint", one))
    assert "data parallel: world size 1 (one process, drawing the windows of 2 ranks), 256 tokens per step" in out1
    two_w, one_w = ckpt.load_checkpoint(path)["model"], ckpt.load_checkpoint(one)["model"]
    assert max_rel_diff(two_w, one_w) <= SAME_WEIGHTS
    # the logged losses (the mean over ranks) agree too
    losses2 = [float(l) for _, _, l, _ in STEP.findall(out)]
    losses1 = [float(l) for _, _, l, _ in STEP.findall(out1)]
    assert len(losses2) == len(losses1) >= 4 and max(abs(a - b) for a, b in zip(losses1, losses2)) <= 2e-4
    # and the comparison can fail: one process on one rank's windows trains to other weights
    alone = tmp_path / "alone.pt"
    ok(run1(trainer, "--data", corpus, *MODEL, *TRAIN, "--steps", 20, "--checkpoint", alone))
    assert max_rel_diff(ckpt.load_checkpoint(alone)["model"], one_w) > 1e-3


def test_accumulation_and_many_buckets_train_as_one_process(trainer, corpus, tmp_path):
    """--accum 3 (the all-reduce rides on the last micro-batch's backward) and 8 small buckets, all
    started from backward: still the one-process weights of the concatenated micro-batches."""
    args = ["--data", corpus, *MODEL, *TRAIN, "--batch", 2, "--accum", 3, "--steps", 12, "--bucket-mb", 0.02]
    out = ok(torchrun(2, trainer, *args, "--checkpoint", tmp_path / "two.pt"))
    assert re.search(r"in (\d+) buckets \(overlap on\)", out).group(1) == "8", out
    assert re.search(r"\(8\.0 buckets/step from backward\)", out), out
    ok(run1(trainer, *args, "--as-ranks", 2, "--checkpoint", tmp_path / "one.pt"))
    two_w = ckpt.load_checkpoint(tmp_path / "two.pt")["model"]
    assert max_rel_diff(two_w, ckpt.load_checkpoint(tmp_path / "one.pt")["model"]) <= SAME_WEIGHTS


def test_tokens_per_second_counts_every_rank(two_rank_run):
    """The step's tokens that tok/s and tokens/s divide by the time: 2 ranks x batch 4 x 32 bytes."""
    _, out, _ = two_rank_run
    assert re.search(r"^data parallel: world size 2, backend gloo, global batch 2 x --batch = 256 tokens per step",
                     out, re.M), out
    assert re.search(r"^done: 20 steps in \S+ \(\d+ tokens/s training\)", out, re.M), out
    comm = re.search(r"^communication \(rank 0\): ([\d.]+) ms/step waiting .* ([\d.]+)% of the training time$", out, re.M)
    assert comm and 0 < float(comm.group(2)) < 100, out


def test_two_rank_checkpoint_resumes_on_one_and_on_two_ranks(trainer, corpus, two_rank_run, tmp_path):
    full, _, _ = two_rank_run
    want = ckpt.load_checkpoint(full)["model"]
    # a 10-step checkpoint of the same run
    ten = tmp_path / "ten.pt"
    ok(torchrun(2, trainer, "--data", corpus, *MODEL, *TRAIN, "--steps", 10, "--checkpoint", ten))
    assert ckpt.load_checkpoint(ten)["step"] == 10
    for name, launch in [("two", lambda p: torchrun(2, trainer, "--checkpoint", p, "--resume", "--steps", 20)),
                         ("one", lambda p: run1(trainer, "--checkpoint", p, "--resume", "--steps", 20,
                                                "--as-ranks", 2))]:
        p = tmp_path / f"{name}.pt"
        p.write_bytes(ten.read_bytes())
        out = ok(launch(p))
        assert "resumed from" in out
        c = ckpt.load_checkpoint(p)
        assert c["step"] == 20
        assert max_rel_diff(c["model"], want) <= SAME_WEIGHTS, name
    # and plainly on one rank (its own windows): it trains on from step 10
    p = tmp_path / "plain.pt"
    p.write_bytes(ten.read_bytes())
    out = ok(run1(trainer, "--checkpoint", p, "--resume", "--steps", 15))
    assert "data parallel: world size 1" in out and ckpt.load_checkpoint(p)["step"] == 15


def test_two_ranks_skip_a_non_finite_step_together(trainer, corpus, tmp_path):
    """Step 3's loss NaN on rank 1 only (the test seam ARWRAP_TRAIN_INJECT_NAN, STEP@RANK): both ranks
    skip that optimizer step, and the run ends with the weights of one process drawing both ranks'
    windows with step 3 skipped."""
    args = ["--data", corpus, *MODEL, *TRAIN, "--steps", 6]
    out = ok(torchrun(2, trainer, *args, "--checkpoint", tmp_path / "two.pt", ARWRAP_TRAIN_INJECT_NAN="3@1"))
    assert re.search(r"^step\s+3/6  loss nan, gradient norm nan: not finite, optimizer step skipped", out, re.M), out
    two = ckpt.load_checkpoint(tmp_path / "two.pt")
    assert two["optimizer"]["token_emb.emb.weight.step"].item() == 5
    env = clean_env(ARWRAP_TRAIN_INJECT_NAN="3")
    ok(run1(trainer, *args, "--as-ranks", 2, "--checkpoint", tmp_path / "one.pt", env=env))
    assert max_rel_diff(two["model"], ckpt.load_checkpoint(tmp_path / "one.pt")["model"]) <= SAME_WEIGHTS


def test_two_ranks_that_diverge_both_stop_and_keep_the_checkpoint(trainer, two_rank_run, tmp_path):
    full, _, _ = two_rank_run
    path = tmp_path / "model.pt"
    path.write_bytes(full.read_bytes())
    proc = torchrun(2, trainer, "--checkpoint", path, "--resume", "--steps", 40, "--lr", 1e6, "--max-bad-steps", 3)
    assert proc.returncode != 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for r in (0, 1):
        assert f"arwrap-train: error (rank {r} of 2): training diverged: 3 steps in a row" in proc.stderr, proc.stderr
    assert path.read_bytes() == full.read_bytes()


def _start_by_hand(trainer, corpus, tmp_path, timeout_s):
    port = free_port()
    args = [str(trainer), "--data", str(corpus), *MODEL, *TRAIN, "--steps", "100000", "--val-every", "0",
            "--save-every", "0", "--log-every", "1", "--dist-timeout", str(timeout_s), "--checkpoint",
            str(tmp_path / "m.pt")]
    procs = []
    for r in (0, 1):
        env = clean_env(RANK=r, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      errors="replace", env=env))
    # wait for rank 0's first progress line
    line, t0 = "", time.monotonic()
    while not line.startswith("step     2/"):
        line = procs[0].stdout.readline()
        assert line or procs[0].poll() is None, procs[0].stderr.read()
        assert time.monotonic() - t0 < 120, "no progress line"
    return procs


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_a_killed_or_hung_rank_ends_the_other_within_the_timeout(trainer, corpus, tmp_path, fault):
    timeout_s = 6
    r0, r1 = _start_by_hand(trainer, corpus, tmp_path, timeout_s)
    try:
        os.kill(r1.pid, signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
        t0 = time.monotonic()
        _, err = r0.communicate(timeout=timeout_s + 60)
        took = time.monotonic() - t0
    finally:
        for p in (r0, r1):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
    assert r0.returncode == 1
    errors = [l for l in err.splitlines() if "error" in l]
    assert len(errors) == 1 and errors[0].startswith("arwrap-train: error (rank 0 of 2): arwrap::distributed:"), err
    assert took <= timeout_s + 10, took  # a hung peer: the timeout; a dead one: at once
    if fault == "killed":
        assert took <= timeout_s + 2, took


def _error(proc):
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("arwrap-train: error"), proc.stderr
    return lines[0]


@pytest.mark.parametrize("env, says", [
    (dict(WORLD_SIZE=2, RANK=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=1), "RANK=2 is out of range (0..1) for WORLD_SIZE=2"),
    (dict(WORLD_SIZE="two", RANK=0), "WORLD_SIZE must be an integer, got 'two'"),
    (dict(WORLD_SIZE=0, RANK=0), "WORLD_SIZE=0 is out of range"),
    (dict(WORLD_SIZE=2), "WORLD_SIZE is set but RANK is not"),
    (dict(RANK=1), "RANK is set but WORLD_SIZE is not"),
    (dict(WORLD_SIZE=2, RANK=1, MASTER_PORT=29500), "MASTER_ADDR is not set"),
    (dict(WORLD_SIZE=2, RANK=1, MASTER_ADDR="127.0.0.1"), "MASTER_PORT is not set"),
    (dict(WORLD_SIZE=2, RANK=1, MASTER_ADDR="127.0.0.1", MASTER_PORT=70000), "MASTER_PORT=70000 is out of range"),
])
def test_bad_environment_is_a_clear_error(trainer, corpus, tmp_path, env, says):
    proc = run1(trainer, "--data", corpus, *MODEL, "--steps", 1, "--checkpoint", tmp_path / "m.pt",
                env=clean_env(**env), timeout=60)
    assert says in _error(proc)


def test_unreachable_master_is_a_clear_error_within_the_timeout(trainer, corpus, tmp_path):
    port = free_port()  # nobody listens there
    t0 = time.monotonic()
    proc = run1(trainer, "--data", corpus, *MODEL, "--steps", 1, "--dist-timeout", 3, "--checkpoint",
                tmp_path / "m.pt", env=clean_env(WORLD_SIZE=2, RANK=1, MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                timeout=120)
    took = time.monotonic() - t0
    line = _error(proc)
    assert f"cannot reach the rendezvous store at MASTER_ADDR=127.0.0.1 MASTER_PORT={port} within 3 s" in line
    assert took < 30, took


def test_a_missing_rank_is_named_within_the_timeout(trainer, corpus, tmp_path):
    """Rank 0 alone (rank 1 never starts): it says who is missing after --dist-timeout."""
    proc = run1(trainer, "--data", corpus, *MODEL, "--steps", 1, "--dist-timeout", 3, "--checkpoint",
                tmp_path / "m.pt", env=clean_env(WORLD_SIZE=2, RANK=0, MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port()),
                timeout=120)
    line = _error(proc)
    assert "only 1 of WORLD_SIZE=2 ranks joined" in line and "missing ranks: 1" in line, line


def test_eval_and_sample_modes_refuse_many_processes(trainer, two_rank_run):
    path, _, _ = two_rank_run
    proc = torchrun(2, trainer, "--checkpoint", path, "--eval-only")
    assert proc.returncode != 0
    assert "--eval-only and --sample run in one process" in proc.stderr

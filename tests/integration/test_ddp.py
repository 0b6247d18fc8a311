"""DistributedDataParallel: examples/ddp_train.py launched as torchrun launches it (2 processes,
gloo over loopback) trains arwrap_cpp.AutoregressiveWrapper around an x-transformers decoder,
and ends with the weights of a single-process run on the concatenated batch.

What "equal" means here. DDP averages the ranks' gradients: each rank's loss is the mean over
its own targets, so the step follows (1/R) sum_r grad(mean_r). A single process on the
concatenated batch follows grad(mean over all targets). The two agree when every rank has the
same number of targets, which is how the steps are built (whole rows, same batch per rank).
At --all-ignored-step, rank 1's micro-batch is all padding (lens = 0): its loss is 0 with zero
gradients (not NaN, and its backward still joins the all-reduce, so nothing hangs), but DDP still
divides by R = 2, so that step moves by half the gradient of rank 0's mean. The reference
therefore scales its concatenated-batch loss by (ranks with targets) / R = 1/2 at that step
(examples/ddp_train.py: reference_scale). The weights then agree up to float32 rounding (the
forward and the all-reduce sum in another order), checked at rtol 1e-5.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "ddp_train.py"
STEPS, ALL_IGNORED = 6, 2
COMMON = ["--steps", str(STEPS), "--all-ignored-step", str(ALL_IGNORED), "--batch", "3", "--seq", "24"]


def run(cmd, timeout=120):
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired as e:  # a hang (e.g. a rank that skipped the all-reduce)
        pytest.fail(f"timed out after {timeout} s (hang?):\n{e.stdout}\n{e.stderr}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    return res


@pytest.mark.parametrize("fused_head", [False, True], ids=["logits", "fused_head"])
def test_ddp_two_ranks_match_single_process_on_concatenated_batch(tmp_path, fused_head):
    extra = ["--fused-head"] if fused_head else []
    ddp_out, ref_out = tmp_path / "ddp.pt", tmp_path / "ref.pt"
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT),
         *COMMON, *extra, "--out", str(ddp_out)])
    run([sys.executable, str(SCRIPT), "--reference", "--world-size", "2", *COMMON, *extra, "--out", str(ref_out)])
    ddp, ref = torch.load(ddp_out), torch.load(ref_out)

    # the all-ignored micro-batch: rank 1's loss is exactly 0 (not NaN), rank 0's is a real loss
    r0, r1 = ddp["rank_losses"][ALL_IGNORED]
    assert r1 == 0.0 and r0 > 1.0
    assert all(torch.isfinite(torch.tensor(step)).all() for step in ddp["rank_losses"])
    # the logged loss (mean over ranks) is the reference's scaled loss, step by step
    torch.testing.assert_close(torch.tensor(ddp["losses"]), torch.tensor(ref["losses"]), rtol=1e-5, atol=1e-6)
    # and the final weights are the single-process run's
    assert ddp["state"].keys() == ref["state"].keys()
    moved = 0
    for name, w in ddp["state"].items():
        torch.testing.assert_close(w, ref["state"][name], rtol=1e-5, atol=1e-6, msg=name)
        moved += 1
    assert moved > 0

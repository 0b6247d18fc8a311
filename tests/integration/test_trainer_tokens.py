"""arwrap-train on token corpora (issue 24): llm.c shards and nanoGPT raw files, memory-mapped,
any vocabulary (--num-tokens), the validation shard by name, bad shards named before training,
checkpoints that Python loads into the same net, and a BPE corpus prepared by arwrap_cpp.data."""
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

import arwrap_cpp
from arwrap_cpp import checkpoint as ckpt
from arwrap_cpp import data as tokdata

pytestmark = pytest.mark.slow

SEQ = 32
MODEL = ["--seq-len", str(SEQ), "--dim", "32", "--depth", "1", "--heads", "2", "--dim-head", "16"]
TRAIN = ["--batch", "4", "--lr", "1e-2", "--warmup", "2", "--val-windows", "8", "--sample-every", "0",
         "--threads", "1", "--log-every", "5", "--precision", "fp32"]
VAL = re.compile(r"^step\s+(\d+)\s+val_loss (\d+\.\d+)", re.M)
STEP = re.compile(r"^step\s+(\d+)/\d+\s+loss (\d+\.\d+)", re.M)
VOCAB = 700


def run(trainer, *args, check=True):
    proc = subprocess.run([str(trainer), *map(str, args)], capture_output=True, text=True, errors="replace",
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def error(proc):
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("arwrap-train: error: "), proc.stderr
    assert "val_loss" not in proc.stdout  # refused before training
    return lines[0]


def vals(out):
    return {int(s): float(v) for s, v in VAL.findall(out)}


def stream(n, seed=0):
    """A learnable id stream: a fixed random phrase of 200 ids over [0, VOCAB), repeated."""
    phrase = np.random.default_rng(seed).integers(0, VOCAB, 200)
    return np.resize(phrase, n)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """llm.c shards: two train shards and a validation shard, named as llm.c names them."""
    d = tmp_path_factory.mktemp("llmc")
    t = stream(12_000)
    tokdata.write_shard(d / "toy_train_000001.bin", t[:6000])
    tokdata.write_shard(d / "toy_train_000002.bin", t[6000:10000])
    tokdata.write_shard(d / "toy_val_000000.bin", t[10000:])
    return d


@pytest.fixture(scope="module")
def trained(trainer, shards, tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "tok.pt"
    out = run(trainer, "--data", shards, "--num-tokens", VOCAB, *MODEL, *TRAIN, "--steps", 30, "--val-every", 15,
              "--save-every", 15, "--checkpoint", path).stdout
    return path, out


def test_llmc_shards_train_with_the_named_validation_shard(trained, shards):
    path, out = trained
    assert f"12 k tokens in 3 files of {shards} (largest id {stream(12_000).max()}, memory-mapped), " \
           "validation: the 1 shard named *val*; 10000 train / 2000 validation tokens" in out, out
    assert "TransformerWrapper(num_tokens=700, Decoder(" in out and "x 32 tokens" in out
    v = vals(out)
    assert sorted(v) == [0, 15, 30] and v[30] < v[0] - 1.0, v
    c = ckpt.load_checkpoint(path)
    assert "num_tokens=700" in c["config"] and c["model"]["token_emb.emb.weight"].shape == (VOCAB, 32)


def test_python_loads_the_token_model_with_the_same_validation_loss(trained, shards):
    path, out = trained
    net = ckpt.load_model(path)
    assert net.config == ckpt.build_model(ckpt.load_checkpoint(path)["config"]).config
    val = np.asarray(tokdata.read_tokens(shards / "toy_val_000000.bin"), dtype=np.int64)
    x = torch.from_numpy(val[: 8 * (SEQ + 1)].copy()).view(8, SEQ + 1)
    with torch.no_grad():
        loss = arwrap_cpp.AutoregressiveWrapper(net).eval()(x).item()
    assert loss == pytest.approx(vals(out)[30], abs=1e-4)


def test_resume_eval_and_sample_from_token_shards(trainer, trained, shards, tmp_path):
    full, out = trained
    # the same run stopped after its step-15 checkpoint (step 16 made NaN with the test seam and
    # --max-bad-steps 1), then resumed with no --data or --num-tokens: it ends where `trained` did
    half = tmp_path / "half.pt"
    stop = subprocess.run([str(trainer), "--data", str(shards), "--num-tokens", str(VOCAB), *MODEL, *TRAIN, "--steps",
                           "30", "--val-every", "15", "--save-every", "15", "--max-bad-steps", "1", "--checkpoint",
                           str(half)], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1", ARWRAP_TRAIN_INJECT_NAN="16"))
    assert stop.returncode == 1 and "holds step 15" in stop.stderr, stop.stdout + stop.stderr
    more = run(trainer, "--checkpoint", half, "--resume").stdout
    assert [int(s) for s, _ in STEP.findall(more)][0] == 16 and "num_tokens=700" in more
    assert vals(more)[30] == pytest.approx(vals(out)[30], abs=1e-5)
    ev = run(trainer, "--checkpoint", full, "--eval-only").stdout
    assert vals(ev)[30] == pytest.approx(vals(out)[30], abs=1e-6) and "windows of 33 tokens" in ev
    s = run(trainer, "--checkpoint", full, "--sample", "5 17 301", "--sample-len", 6).stdout.split()
    assert s[:3] == ["5", "17", "301"] and len(s) == 9 and all(0 <= int(i) < VOCAB for i in s)
    assert "outside the vocabulary" in error(run(trainer, "--checkpoint", full, "--sample", "700", check=False))


def test_a_glob_and_raw_uint32_files(trainer, shards, tmp_path):
    # a glob of the train shards alone: validation is then their last 10%
    out = run(trainer, "--data", str(shards / "*_train_*.bin"), "--num-tokens", VOCAB, *MODEL, *TRAIN, "--steps", 3,
              "--checkpoint", tmp_path / "g.pt").stdout
    assert "in 2 files" in out and "validation: the last 10%; 9000 train / 1000 validation tokens" in out
    # nanoGPT's raw train.bin / val.bin, uint32 ids above 65535
    raw = tmp_path / "raw"
    raw.mkdir()
    big = stream(6000) + 65_000
    big[:6000].astype(np.uint32).tofile(raw / "train.bin")
    (big[:1500] + 1).astype(np.uint32).tofile(raw / "val.bin")
    out = run(trainer, "--data", raw, "--token-dtype", "uint32", "--num-tokens", 66_000, *MODEL, *TRAIN,
              "--steps", 3, "--checkpoint", tmp_path / "r.pt").stdout
    assert f"largest id {big.max() + 1}" in out and "6000 train / 1500 validation tokens" in out, out
    # read as uint16 (the default), the ids are other numbers: here the vocabulary check catches it
    assert "outside the vocabulary" in error(run(trainer, "--data", raw, "--num-tokens", 1000, *MODEL, check=False))


def test_bad_shards_are_named_before_training(trainer, shards, tmp_path):
    def shard(name, header, payload):
        d = tmp_path / name
        d.mkdir()
        (d / "x_train_000001.bin").write_bytes(np.asarray(header + [0] * (256 - len(header)), np.int32).tobytes()
                                              + np.asarray(payload, np.uint16).tobytes())
        return d

    ids = list(range(100))
    msg = error(run(trainer, "--data", shard("magic", [123, 1, 100], ids) / "x_train_000001.bin", "--num-tokens", 200,
                    check=False))
    assert "x_train_000001.bin: wrong magic 123" in msg
    msg = error(run(trainer, "--data", shard("trunc", [20240520, 1, 1000], ids), "--num-tokens", 200, check=False))
    assert "x_train_000001.bin: truncated: the header says 1000 tokens" in msg
    msg = error(run(trainer, "--data", shard("version", [20240520, 3, 100], ids), "--num-tokens", 200, check=False))
    assert "has version 3 (expected 1" in msg
    msg = error(run(trainer, "--data", shards, "--num-tokens", 600, check=False))
    assert re.search(r"toy_(train|val)_00000\d\.bin holds id 69\d, outside the vocabulary \(--num-tokens 600\)", msg)
    msg = error(run(trainer, "--data", shards, check=False))
    assert "token data needs --num-tokens N" in msg and "largest id" in msg
    assert "matches no file" in error(run(trainer, "--data", str(tmp_path / "none*.bin"), check=False))
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "train.bin").write_bytes(b"\1\0\2")
    assert "train.bin: truncated: 3 bytes" in error(run(trainer, "--data", odd, "--num-tokens", 10, check=False))


def test_bpe_corpus_prepared_and_trained(trainer, tmp_path):
    """arwrap_cpp.data prepare on a few standard-library modules (vocabulary 512), then 30 steps
    with a falling loss, and a sample decoded to text by the tokenizer."""
    pytest.importorskip("tokenizers")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out = tmp_path / "bpe"
    prep = subprocess.run([sys.executable, "-m", "arwrap_cpp.data", "prepare", str(stdlib / "json"),
                           str(stdlib / "textwrap.py"), "--vocab", "512", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert prep.returncode == 0, prep.stderr
    assert "vocabulary 512" in prep.stdout and (out / "tokenizer.json").exists()
    assert sorted(p.name for p in out.glob("*.bin")) == ["corpus_train_000001.bin", "corpus_val_000000.bin"]
    res = run(trainer, "--data", out, "--num-tokens", 512, "--seq-len", 64, "--dim", 64, "--depth", 2, "--heads", 2,
              "--dim-head", 32, *TRAIN, "--steps", 30, "--val-every", 30, "--checkpoint", tmp_path / "bpe.pt").stdout
    v = vals(res)
    assert v[30] < v[0] - 0.5, v
    sample = run(trainer, "--checkpoint", tmp_path / "bpe.pt", "--sample", "1 2 3", "--sample-len", 10).stdout
    text = tokdata.decode(out / "tokenizer.json", sample.split())
    assert isinstance(text, str) and len(text) >= 5
    bad = subprocess.run([sys.executable, "-m", "arwrap_cpp.data", "prepare", str(tmp_path / "missing"), "--out",
                          str(out)], capture_output=True, text=True)
    assert bad.returncode == 1 and "does not exist" in bad.stderr

"""arwrap-train (examples/train): the C++ training program built against the installed
package, its checkpoints in Python (arwrap_cpp and x-transformers) and back, and bad input."""
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import arwrap_cpp
from arwrap_cpp import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[2]

# a small model and short runs: the whole file takes about a minute after the build
MODEL = ["--seq-len", "64", "--dim", "64", "--depth", "2", "--heads", "2", "--dim-head", "32"]
TRAIN = ["--batch", "8", "--lr", "3e-3", "--warmup", "5", "--val-windows", "16", "--threads", "1", "--log-every", "5"]
SEQ_LEN, VAL_WINDOWS, BATCH = 64, 16, 8
VAL = re.compile(r"^step\s+(\d+)\s+val_loss (\d+\.\d+)", re.M)
STEP = re.compile(r"^step\s+(\d+)/(\d+)\s+loss (\d+\.\d+)", re.M)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A directory of a few standard-library sources (~100 kB), read as the trainer reads it."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    root = tmp_path_factory.mktemp("corpus")
    for rel in ["string.py", "textwrap.py", "json/__init__.py", "json/decoder.py", "json/encoder.py",
                "json/scanner.py", "json/tool.py", "colorsys.py", "bisect.py"]:
        dst = root / rel
        dst.parent.mkdir(exist_ok=True)
        shutil.copy(stdlib / rel, dst)
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "skipped.py").write_text("never read\n")
    (root / "binary.bin").write_bytes(b"\0\1\2" * 100)  # not text: skipped
    return root


def run(trainer, *args, check=True):
    proc = subprocess.run([str(trainer), *map(str, args)], capture_output=True, text=True, errors="replace",
                          timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def val_losses(out):
    return {int(s): float(v) for s, v in VAL.findall(out)}


@pytest.fixture(scope="module")
def trained(trainer, corpus, tmp_path_factory):
    """30 steps from scratch, a checkpoint every 10."""
    path = tmp_path_factory.mktemp("run") / "model.pt"
    print("training 30 steps ...", file=sys.stderr)
    proc = run(trainer, "--data", corpus, *MODEL, *TRAIN, "--steps", 30, "--val-every", 10, "--save-every", 10,
               "--sample-every", 30, "--sample-len", 40, "--checkpoint", path)
    return path, proc.stdout


def test_loss_falls_and_checkpoint_is_written(trained):
    path, out = trained
    vals = val_losses(out)
    assert sorted(vals) == [0, 10, 20, 30], out
    assert vals[0] > 5.0 and vals[30] < vals[0] - 1.5, vals
    steps = [(int(s), float(l)) for s, _, l in STEP.findall(out)]
    assert steps[0][0] == 1 and steps[-1][0] == 30
    assert steps[-1][1] < steps[0][1] - 1.5, steps
    assert "tok/s" in out and "left" in out
    assert "sample at step 30" in out
    assert path.exists() and not list(path.parent.glob("*.tmp*"))
    assert f"checkpoint: {path}" in out and "--sample" in out and "--resume" in out
    c = ckpt.load_checkpoint(path)
    assert c["format"] == "arwrap-checkpoint-1" and c["step"] == 30 and c["optimizer_name"] == "adam"
    assert "token_emb.emb.weight" in c["model"] and "attn_layers.rotary_pos_emb.inv_freq" in c["model"]
    assert c["optimizer"]["token_emb.emb.weight.step"].item() == 30
    assert torch.load(path)["config"] == c["config"]  # plain torch.load (weights_only=True) reads it


def test_resume_continues_from_the_saved_step(trainer, corpus, trained, tmp_path):
    _, full = trained
    path = tmp_path / "half.pt"
    first = run(trainer, "--data", corpus, *MODEL, *TRAIN, "--steps", 20, "--val-every", 10, "--sample-every", 0,
                "--checkpoint", path).stdout
    assert ckpt.load_checkpoint(path)["step"] == 20
    # no data/model flags: the checkpoint's; batches of step s come from (seed, s). The second half
    # recomputes its layers in the backward (--checkpoint-layers): the same gradients, the same run
    second = run(trainer, "--checkpoint", path, "--resume", "--steps", 30, "--threads", 1,
                 "--checkpoint-layers").stdout
    steps = [int(s) for s, _, _ in STEP.findall(second)]
    assert steps[0] == 21 and steps[-1] == 30 and 1 not in steps, second
    assert "resumed from" in second
    # the restored model scores what it scored when saved, and 20 + 10 steps are the 30-step run
    assert val_losses(second)[20] == val_losses(first)[20]
    assert val_losses(second)[30] == pytest.approx(val_losses(full)[30], abs=1e-5)
    assert ckpt.load_checkpoint(path)["step"] == 30


@pytest.mark.parametrize("kind", ["arwrap", "x_transformers"])
def test_python_loads_checkpoint_with_the_same_validation_loss(trained, corpus, kind):
    path, out = trained
    cpp = val_losses(out)[30]
    net = ckpt.load_model(path, kind=kind)
    assert type(net).__module__.startswith("arwrap_cpp" if kind == "arwrap" else "x_transformers")
    data = ckpt.read_corpus(corpus, suffix=None)
    assert f"{len(data) / 1e3:.3g} kB from 9 files" in out  # the same bytes: 9 files, not __pycache__ or binary
    _, val = ckpt.split_corpus(data)
    wrapper = arwrap_cpp.AutoregressiveWrapper(net).eval()
    assert ckpt.validation_loss(wrapper, val, SEQ_LEN, VAL_WINDOWS, BATCH) == pytest.approx(cpp, abs=1e-4)
    # spelled out: the first 16 non-overlapping 65-byte windows of the last 10% of the bytes
    val = data[len(data) * 9 // 10:]
    x = torch.tensor(list(val[: VAL_WINDOWS * (SEQ_LEN + 1)]), dtype=torch.long).view(VAL_WINDOWS, SEQ_LEN + 1)
    with torch.no_grad():
        assert wrapper(x).item() == pytest.approx(cpp, abs=1e-4)


def test_python_saved_checkpoint_resumes_and_samples_in_cpp(trainer, corpus, tmp_path):
    data = ckpt.read_corpus(corpus, suffix=None)
    train, val = ckpt.split_corpus(data)
    net = arwrap_cpp.TransformerWrapper(num_tokens=256, max_seq_len=SEQ_LEN, use_abs_pos_emb=False,
                                        attn_layers=arwrap_cpp.Decoder(dim=64, depth=2, heads=2, attn_dim_head=32,
                                                                       rotary_pos_emb=True))
    wrapper = arwrap_cpp.AutoregressiveWrapper(net)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    windows = ckpt.validation_windows(train, SEQ_LEN, 64)
    for i in range(4):
        wrapper(windows[i * 8:(i + 1) * 8]).backward()
        opt.step()
        opt.zero_grad()
    path = tmp_path / "python.pt"
    ckpt.save_checkpoint(path, net, opt, step=4, train_args={"data": corpus, "batch": BATCH})
    py_val = ckpt.validation_loss(wrapper, val, SEQ_LEN, VAL_WINDOWS, BATCH)

    out = run(trainer, "--checkpoint", path, "--eval-only", "--val-windows", VAL_WINDOWS, "--threads", 1).stdout
    assert val_losses(out)[4] == pytest.approx(py_val, abs=1e-4)
    out = run(trainer, "--checkpoint", path, "--resume", "--steps", 8, "--val-windows", VAL_WINDOWS, "--threads", 1,
              "--sample-every", 0, "--warmup", 0).stdout
    assert [int(s) for s, _, _ in STEP.findall(out)][0] == 5 and "no optimizer state" not in out
    assert val_losses(out)[4] == pytest.approx(py_val, abs=1e-4)
    assert ckpt.load_checkpoint(path)["step"] == 8
    out = run(trainer, "--checkpoint", path, "--sample", "def ", "--sample-len", 30, "--threads", 1).stdout
    assert out.startswith("def ") and len(out.encode("latin-1", "replace")) >= 30
    # and the model trained on in C++ comes back into Python
    assert ckpt.load_model(path).config == net.config


def _error(proc):
    """One clear line on stderr and a non-zero exit, not a signal or an abort."""
    assert proc.returncode > 0, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("arwrap-train: error: "), proc.stderr
    return lines[0]


def test_bad_data(trainer, corpus, tmp_path):
    assert "does not exist" in _error(run(trainer, "--data", tmp_path / "missing", check=False))
    (tmp_path / "empty").mkdir()
    assert "holds no" in _error(run(trainer, "--data", tmp_path / "empty", check=False))
    (tmp_path / "empty.txt").write_text("")
    assert "is empty" in _error(run(trainer, "--data", tmp_path / "empty.txt", check=False))
    (tmp_path / "short.txt").write_text("x = 1\n" * 40)
    msg = _error(run(trainer, "--data", tmp_path / "short.txt", "--seq-len", 64, check=False))
    assert "--seq-len 64 is too long" in msg
    assert "--steps" in _error(run(trainer, "--data", corpus, "--steps", "many", check=False))
    assert "unknown option" in _error(run(trainer, "--data", corpus, "--bogus", 1, check=False))


def test_bad_checkpoints(trainer, corpus, trained, tmp_path):
    path, _ = trained
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for mode in (["--resume"], ["--eval-only"], ["--sample", "def "]):
        assert "truncated or corrupt" in _error(run(trainer, "--checkpoint", truncated, *mode, check=False))
    with pytest.raises(ValueError, match="not a readable arwrap checkpoint"):
        ckpt.load_checkpoint(truncated)
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint\n")
    assert "not a readable" in _error(run(trainer, "--checkpoint", text, "--resume", check=False))
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    assert "no 'format' entry" in _error(run(trainer, "--checkpoint", foreign, "--eval-only", check=False))
    with pytest.raises(ValueError, match="not an arwrap checkpoint"):
        ckpt.load_checkpoint(foreign)
    # a checkpoint of another configuration
    other = tmp_path / "other.pt"
    shutil.copy(path, other)
    msg = _error(run(trainer, "--checkpoint", other, "--resume", "--steps", 40, "--dim", 32, check=False))
    assert "another configuration" in msg and "--dim 32" in msg
    assert "another configuration" in _error(
        run(trainer, "--checkpoint", other, "--eval-only", "--seq-len", 128, check=False))
    assert "holds adam state" in _error(
        run(trainer, "--checkpoint", other, "--resume", "--steps", 40, "--optimizer", "adamw", check=False))
    assert "does not exist" in _error(run(trainer, "--checkpoint", tmp_path / "none.pt", "--resume", check=False))
    assert other.read_bytes() == path.read_bytes()  # a refused resume leaves the file alone


def _accepted_flags():
    """Every flag the trainer's parsers accept, read from their sources: the rows of flags.cpp's
    table (`{kGroup, "name", ...` or `..._flag(kGroup, "name", ...`) and `name == "..."` in the
    file that defines set_dist_flag."""
    names = set()
    for src in (ROOT / "examples" / "train").glob("*.cpp"):
        text = src.read_text()
        if re.search(r"\bbool set_dist_flag\(", text):
            names |= set(re.findall(r'name == "([a-z][a-z0-9-]*)"', text))
        names |= set(re.findall(r'(?:_flag\(|\{)k[A-Z]\w*, "([a-z][a-z0-9-]*)"', text))
    return names


HELP_LINE = re.compile(r"^\s{2}--([a-z][a-z0-9-]*)(?: \S+)?\s{2,}(\S.*)$", re.M)  # flag, its value (PATH, on|off), text


def test_help_lists_every_flag_with_its_meaning(trainer):
    out = run(trainer, "--help").stdout
    documented = {flag: text for flag, text in HELP_LINE.findall(out)}
    accepted = _accepted_flags()
    assert len(accepted) >= 25, accepted
    missing = sorted(accepted - set(documented))
    assert not missing, f"flags accepted but not explained in --help: {missing}"
    unknown = sorted(set(documented) - accepted)
    assert not unknown, f"--help explains flags the parser refuses: {unknown}"
    for flag, text in documented.items():
        assert len(text.split()) >= 2, f"--{flag}: '{text}' says too little"
    # and each one parses: an unknown flag is refused by name
    msg = _error(run(trainer, "--no-such-flag", "1", check=False))
    assert "--no-such-flag" in msg


RSS = re.compile(r"^step\s+(\d+)/\d+\s+loss \S+\s+\S+ tok/s\s+\S+ left\s+rss (\d+\.\d+) MB", re.M)


def test_no_leak_over_2000_steps(trainer, corpus, tmp_path):
    """2,000 training steps of a tiny model in the C++ program: the resident memory its
    progress lines report stays flat after warm-up (a leak of one small tensor per step,
    ~4 kB, would add 8 MB)."""
    proc = run(trainer, "--data", corpus, "--seq-len", "16", "--dim", "16", "--depth", "1", "--heads", "1",
               "--dim-head", "16", "--batch", "2", "--threads", "1", "--steps", "2000", "--log-every", "100",
               "--val-every", "1000", "--val-windows", "2", "--sample-every", "1000", "--sample-len", "8",
               "--save-every", "1000", "--checkpoint", tmp_path / "leak.pt")
    rss = {int(s): float(mb) for s, mb in RSS.findall(proc.stdout)}
    assert max(rss) == 2000 and len(rss) >= 20, proc.stdout[-2000:]
    warm = max(v for s, v in rss.items() if s <= 500)
    late = max(v for s, v in rss.items() if s > 500)
    print(f"resident memory: {warm:.1f} MB after 500 steps, at most {late:.1f} MB over steps 501..2000")
    assert late - warm < 8.0, rss

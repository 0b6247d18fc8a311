"""The native net compiled ahead of time: a checkpoint through `python -m arwrap_cpp.export`
(torch.export + AOTInductor) into a .pt2 package, run in Python (aoti_load_package) and from
C++ (examples/deploy, torch::inductor::AOTIModelPackageLoader with libarwrap linked), against
the eager net's logits and net.generate's greedy tokens.

Cost on the 2-core machine: AOTInductor compiles C++, so the package is made once for the
module (one compile, about 30-70 s under load; plus a Python start for the command); building
examples/deploy adds about 45 s (marked slow, as the other C++ builds). The model is tiny.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_cmake_project

import arwrap_cpp
from arwrap_cpp import export

ROOT = Path(__file__).resolve().parents[2]
V, WINDOW = 61, 16


def tiny_net():
    torch.manual_seed(3)
    net = arwrap_cpp.TransformerWrapper(
        num_tokens=V, max_seq_len=WINDOW, use_abs_pos_emb=False,
        attn_layers=arwrap_cpp.Decoder(dim=32, depth=2, heads=2, attn_dim_head=16, rotary_pos_emb=True))
    with torch.no_grad():  # non-trivial norms (they start at 0 with the unit offset)
        for p in net.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.2)
    return net.eval()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """(net, package path, the command's output): the checkpoint of tiny_net() compiled by the
    command a user runs, once for the module."""
    if not (os.environ.get("CXX") or any(shutil.which(c) for c in ("g++", "c++", "clang++"))):
        pytest.skip("AOTInductor needs a C++ compiler (none on PATH)")
    tmp = tmp_path_factory.mktemp("deploy")
    net = tiny_net()
    arwrap_cpp.save_checkpoint(tmp / "net.pt", net)
    run = subprocess.run([sys.executable, "-m", "arwrap_cpp.export", str(tmp / "net.pt"), str(tmp / "net.pt2")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    return net, tmp / "net.pt2", run.stdout


def test_export_command_reports_the_model_and_its_times(package):
    net, path, out = package
    assert path.exists()
    assert f"model: {net.config}" in out
    assert "exported in" in out and str(path) in out


def test_export_command_names_a_bad_checkpoint(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    run = subprocess.run([sys.executable, "-m", "arwrap_cpp.export", str(tmp_path / "bad.pt"), str(tmp_path / "o.pt2")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "not a readable arwrap checkpoint" in run.stderr


def test_package_in_python_gives_eager_logits_and_generate_tokens(package):
    net, path, _ = package
    model = torch._inductor.aoti_load_package(str(path))
    assert model.get_metadata()[export.METADATA_CONFIG] == net.config
    for shape in [(1, 5), (3, 11)]:  # the prompt's step at two sizes: float32 logits within 1e-5 of eager
        x = torch.randint(0, V, shape)
        k, v = net.empty_cache(shape[0])
        logits, k, v = model(x, k, v, torch.tensor(0))
        with torch.no_grad():
            ref = net(x)
        assert logits.dtype == torch.float32 and logits.shape == ref.shape
        assert (logits - ref).abs().max().item() < 1e-5, shape
    # steps against the cache, past the window (the cache slides): generate's greedy tokens
    prompts = torch.randint(0, V, (2, 5))
    got = export.greedy_decode(model, net, prompts, 2 * WINDOW)
    assert torch.equal(got, net.generate(prompts, 2 * WINDOW, temperature=0.0))


def test_package_needs_libarwrap_loaded(package):
    """The package calls our operator by name: a process without libarwrap cannot load it, and
    the error says which operator is missing (docs/deploy.md: how a C++ program links it)."""
    _, path, _ = package
    code = f"import torch; torch._inductor.aoti_load_package({str(path)!r})"  # no `import arwrap_cpp`
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode != 0 and "Could not find schema for arwrap::transformer_wrapper_decode" in run.stderr


@pytest.fixture(scope="module")
def deploy(tmp_path_factory):
    return build_cmake_project(ROOT / "examples" / "deploy", tmp_path_factory.mktemp("deploy_build") / "build",
                               "examples/deploy") / "arwrap-deploy"


def run_deploy(program, *args):
    return subprocess.run([str(program), *map(str, args)], capture_output=True, text=True)


def tokens_of(stdout):
    return [int(t) for t in stdout.split("tokens:")[1].split("\n")[0].split()]


@pytest.mark.slow
def test_cpp_deploy_greedy_tokens_match_python_generate(package, deploy):
    net, path, _ = package
    prompt = torch.randint(0, V, (1, 7))
    steps = 2 * WINDOW  # past the window
    run = run_deploy(deploy, path, "--tokens", " ".join(map(str, prompt[0].tolist())), "--steps", steps,
                     "--threads", 1)
    assert run.returncode == 0, run.stdout + run.stderr
    assert tokens_of(run.stdout) == net.generate(prompt, steps, temperature=0.0)[0].tolist()
    assert f"generated {steps} tokens in" in run.stdout and "tokens/s" in run.stdout
    # a prompt longer than the window is cropped as generate crops it
    long = torch.randint(0, V, (1, WINDOW + 5))
    run = run_deploy(deploy, path, "--tokens", " ".join(map(str, long[0].tolist())), "--steps", 4)
    assert run.returncode == 0, run.stdout + run.stderr
    assert tokens_of(run.stdout) == net.generate(long, 4, temperature=0.0)[0].tolist()


@pytest.mark.slow
def test_cpp_deploy_samples_reproducibly_and_names_bad_input(package, deploy):
    _, path, _ = package
    a = run_deploy(deploy, path, "--tokens", "1 2 3", "--steps", 12, "--temperature", 1.0, "--seed", 5)
    b = run_deploy(deploy, path, "--tokens", "1 2 3", "--steps", 12, "--temperature", 1.0, "--seed", 5)
    assert a.returncode == 0, a.stdout + a.stderr
    assert tokens_of(a.stdout) == tokens_of(b.stdout) and all(0 <= t < V for t in tokens_of(a.stdout))
    bad = run_deploy(deploy, path, "--tokens", f"1 {V}", "--steps", 2)
    assert bad.returncode == 1 and f"num_tokens={V}" in bad.stderr
    missing = run_deploy(deploy, path.with_name("missing.pt2"))
    assert missing.returncode == 1 and "arwrap-deploy: error:" in missing.stderr

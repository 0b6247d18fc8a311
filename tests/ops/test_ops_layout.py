"""docs/architecture.md's per-operator file table, checked against the tree: every file
it names exists, every operator in it is registered, and every file under csrc/ops is named."""
import re
from pathlib import Path

import torch

import arwrap_cpp  # noqa: F401  (registers torch.ops.arwrap)

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
COLUMNS = ["operator", "schema + entry", "cpu", "cuda", "meta", "autograd", "python face", "tests"]
PUBLIC = {"shift_tokens", "cross_entropy", "linear_cross_entropy", "attention_lse", "attention"}
INTERNAL = {"scale_grad_", "activation", "rotary", "norm"}  # rows of their own, no Python face


def operator_rows():
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == len(COLUMNS) and cells[0] not in ("operator",) and not cells[0].startswith("---"):
            rows[cells[0]] = {col: cell.strip("`") for col, cell in zip(COLUMNS[1:], cells[1:])}
    return rows


def test_table_names_existing_files_for_every_operator():
    rows = operator_rows()
    assert set(rows) == PUBLIC | INTERNAL
    for op, files in rows.items():
        assert hasattr(torch.ops.arwrap, op), op
        stem = op.rstrip("_")
        for col, path in files.items():
            if op in INTERNAL and col == "python face":
                assert path == "none (internal)", path
                continue
            assert (ROOT / path).is_file(), f"{op}: {col} file {path} does not exist"
        assert files["schema + entry"] == f"csrc/ops/{stem}.cpp"
        assert files["autograd"] == f"csrc/ops/autograd/{stem}_kernel.cpp"
        assert files["tests"] == f"tests/ops/test_{stem}.py"
        if op in PUBLIC:
            assert f"def {op}(" in (ROOT / files["python face"]).read_text(), f"{op} has no Python face"


def test_every_operator_source_is_in_the_doc():
    named = {p for p in re.findall(r"`(csrc/ops/[^`]+)`", DOC.read_text()) if "<" not in p}  # not the patterns
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "ops").rglob("*") if p.is_file()}
    assert sources - named == set(), "files under csrc/ops missing from docs/architecture.md"
    assert named - sources == set(), "docs/architecture.md names files that do not exist"


def test_every_operator_source_file_has_a_row():
    rows = operator_rows()
    for p in (ROOT / "csrc" / "ops").glob("*.cpp"):
        if p.name == "ops.cpp":
            continue
        assert p.stem in {op.rstrip("_") for op in rows}, f"{p.name} has no row in the table"


def test_every_column_is_where_its_name_says():
    """A reader guesses each file by name and is right: the cpu, cuda and meta kernels are
    csrc/ops/<key>/<op>_kernel.* registering that key only (a CUDA .cpp composing ATen's CUDA
    operators included), or composite/ for device-generic code registered for
    CompositeExplicitAutograd; a public operator's Python face is ops.py, an internal one has none."""
    for op, files in operator_rows().items():
        stem = op.rstrip("_")
        for key in ("cpu", "cuda", "meta"):
            path = files[key]
            assert re.fullmatch(rf"csrc/ops/({key}|composite)/{stem}_kernel\.(cpp|cu)", path), f"{op}: {key} is {path}"
            registers = set(re.findall(r"TORCH_LIBRARY_IMPL\(arwrap, (\w+), m\)", (ROOT / path).read_text()))
            if path.startswith("csrc/ops/composite/"):  # device-generic: registered for a composite key
                assert "CompositeExplicitAutograd" in registers, f"{op}: {path} is in composite/ but registers {registers}"
            else:  # a kernel by key registers that key only
                assert registers == {key.upper() if key != "meta" else "Meta"}, f"{op}: {path} registers {registers}"
        assert files["python face"] == ("python/arwrap_cpp/ops.py" if op in PUBLIC else "none (internal)"), op

"""The Python package in layers: python/arwrap_cpp's modules import each other without a
cycle, counting the imports inside functions too (a cycle hidden in a function is still a
cycle: each module would need the other to be read). Read with ast, nothing imported."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "python" / "arwrap_cpp"


def package_imports(path: Path) -> set:
    """The package modules one file imports (``from . import x``, ``from .x import y``,
    ``import arwrap_cpp.x``, ``from arwrap_cpp import x``), at any depth of the file."""
    names = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            inside = node.level == 1 or (node.level == 0 and (node.module or "").split(".")[0] == "arwrap_cpp")
            if not inside:
                continue
            module = (node.module or "") if node.level == 1 else (node.module or "").partition(".")[2]
            if module:
                found.add(module.split(".")[0])
            else:  # from . import x, y
                found.update(a.name for a in node.names if a.name in names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "arwrap_cpp" and len(parts) > 1:
                    found.add(parts[1])
    return {m for m in found if m in names}


def import_graph() -> dict:
    return {p.stem: package_imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def find_cycle(graph: dict):
    """One cycle as a list of modules (first == last), or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_package_has_no_import_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle in python/arwrap_cpp: {' -> '.join(cycle)} (graph: {graph})"


def test_the_layers_import_downwards():
    """sampling below the native net, the net below the wrapper, the bridge to x-transformers
    beside the net: the wrapper chooses between them."""
    graph = import_graph()
    assert graph["sampling"] <= {"_C"} and graph["options"] == set()
    assert "wrapper" not in graph["transformer"] | graph["bridge"] | graph["sampling"] | graph["scripted"]
    assert {"transformer", "bridge", "scripted"} <= graph["wrapper"]


def test_the_cycle_finder_finds_one_inside_a_function(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from . import wrapper\n    from .transformer import T\n")
    assert package_imports(src) == {"wrapper", "transformer"}

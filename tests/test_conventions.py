"""Conventions of the test suite itself, checked on its source (ast, nothing imported)."""
import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_every_pytest_raises_names_its_error_type_and_message():
    """A `pytest.raises(Exception)` passes on any error, a bare `pytest.raises(IndexError)` on
    any message: each names one error type and a `match=` for the message it expects."""
    bad = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "pytest.raises":
                kinds = ast.unparse(node.args[0]) if node.args else ""
                if "match" not in {k.arg for k in node.keywords} or isinstance(node.args[0], ast.Tuple) or \
                        kinds in ("Exception", "BaseException"):
                    bad.append(f"{path.relative_to(TESTS)}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, "pytest.raises without one error type and a match=:\n" + "\n".join(bad)

"""Rules for the test suite itself, checked so that new tests keep them."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_test_module_imports_another() -> None:
    """Shared helpers live in support.py (or realworld/*_support.py), fixtures in conftest.py.

    A test module importing another couples them (its tests are collected twice
    under some import modes, and a rename breaks unrelated files).
    """
    offenders = {
        str(path.relative_to(TESTS)): sorted(
            name for name in _imported_modules(path) if name.split(".")[-1].startswith("test_")
        )
        for path in TESTS.rglob("*.py")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_rule_sees_an_offender(tmp_path: Path) -> None:
    module = tmp_path / "test_x.py"
    module.write_text("from test_reload import edit\nimport realworld.test_lua\nimport os\n")
    assert _imported_modules(module) == {"test_reload", "realworld.test_lua", "os"}

"""The package's layers import downwards only (the architecture rule, checked)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "relive"

#: Higher layers may import lower ones (and siblings of their own rank, e.g. watch
#: uses toolchain's dependency files); a layer never imports a higher one.
RANK = {
    "errors": 0,
    "events": 0,
    "statedir": 0,
    "digests": 0,
    "elf": 1,
    "arch": 1,
    "link": 2,
    "process": 2,
    "toolchain": 3,
    "watch": 3,
    "patch": 3,
    "session": 4,
    "cli": 5,
    "__init__": 6,
    "__main__": 6,
}


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("relive"):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(a.name for a in node.names if a.name.startswith("relive"))
    return found


def test_imports_point_down() -> None:
    violations = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        own = _layer(".".join(relative.parts))
        for imported in _imports(path):
            other = _layer(imported)
            if other == own or imported == "relive":
                continue
            if RANK[other] > RANK[own]:
                violations.append(f"{relative}: imports {imported}")
    assert violations == []


def test_only_arch_knows_instruction_encodings() -> None:
    """Opcode bytes and x86 relocation numbers stay in arch/ (and elf's tables)."""
    suspicious = []
    for path in PACKAGE.rglob("*.py"):
        part = path.relative_to(PACKAGE).parts[0]
        if part in ("arch", "elf"):
            continue
        text = path.read_text()
        for needle in ("\\xe9", "\\xff\\x25", "\\x0f\\x05", "R_X86_64_"):
            if needle in text:
                suspicious.append(f"{path.relative_to(PACKAGE)}: {needle}")
    assert suspicious == []


def test_only_arch_imports_an_instruction_set() -> None:
    """Everything outside arch/ goes through the Arch interface: a second
    architecture is one new folder under arch/."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] == "arch":
            continue
        for imported in _imports(path):
            if imported.startswith("relive.arch.") and imported != "relive.arch.base":
                offenders.append(f"{path.relative_to(PACKAGE)}: imports {imported}")
    assert offenders == []

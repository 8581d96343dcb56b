"""Build the benchmark's C targets at run time (into a scratch folder).

* ``one``:  the stall meter (``c/stall_meter.c``) with ``compute()`` in ``func.c``;
  the reload changes ``compute()`` to return 2 instead of 1.
* ``many``: the stall meter with a generated translation unit of 3,000 functions
  (``compute()`` is one of them); every function changes between versions.
* ``big``:  ``one`` linked with 100,000 generated symbols (80,000 global functions,
  20,000 file statics), so its ``.symtab`` is big.

Each target comes with what a reload needs: the source to reload (already edited to
the new version, since the executable was built from the old one), a prebuilt
object of the new version, and the link-time address of every function the floor
patcher touches.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
STALL_METER = HERE / "c" / "stall_meter.c"

CFLAGS = ("-g", "-O2")
#: What relive adds to every compile; the prebuilt objects get the same.
RELIVE_FLAGS = ("-ffunction-sections", "-fdata-sections")


@dataclass
class Target:
    """One built benchmark program."""

    name: str
    exe: Path
    #: The source the executable was built from, now holding the new version.
    source: Path
    #: The new version, compiled as relive would compile it.
    prebuilt: Path
    #: Functions that change, and their link-time addresses (``nm``).
    changed: list[str]
    symbols: dict[str, int] = field(default_factory=dict)
    #: Wall time of gcc -c on the new version (for the record).
    compile_s: float = 0.0


def _run(argv: list[str], cwd: Path) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stdout}{proc.stderr}")


def _nm(exe: Path) -> dict[str, int]:
    out = subprocess.run(
        ["nm", "--defined-only", str(exe)], capture_output=True, text=True, check=True
    ).stdout
    symbols: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            symbols.setdefault(parts[2], int(parts[0], 16))
    return symbols


def func_source(version: int) -> str:
    """The one-function file: ``compute()`` returns ``version``."""
    return (
        "/* relive benchmark: the function the stall meter calls. */\n"
        f"int compute(void) {{ return {version}; }}\n"
    )


def many_source(count: int, version: int) -> str:
    """A translation unit of ``count`` functions; all of them change with ``version``.

    The functions read and write a global (bound to the running program's storage on
    reload) and every fourth calls its predecessor (a relocation to new code).
    """
    lines = [
        "/* relive benchmark: a generated translation unit. */",
        "long bench_state[64];",
        f"int compute(void) {{ return {version}; }}",
    ]
    for i in range(1, count):
        call = f" + f{i - 1:04d}(x)" if i % 4 == 0 and i > 1 else ""
        lines.append(
            f"long f{i:04d}(long x) {{ bench_state[{i % 64}] += x; "
            f"return bench_state[{(i * 7) % 64}] * {i} + {version}{call}; }}"
        )
    return "\n".join(lines) + "\n"


def big_symbols_asm(count: int) -> str:
    """Assembly defining ``count`` one-byte functions, one in five of them static."""
    out = ['\t.file\t"bigsyms.c"', "\t.text"]
    for i in range(count):
        name = f"bigsym_{i // 1000:03d}_module_handler_{i:06d}"
        if i % 5:
            out.append(f"\t.globl\t{name}")
        out += [f"\t.type\t{name}, @function", f"{name}:", "\tret", f"\t.size\t{name}, 1"]
    return "\n".join(out) + "\n"


def _compile_new(source: Path, text: str, out: Path) -> float:
    source.write_text(text)
    started = time.monotonic()
    _run(["gcc", *CFLAGS, *RELIVE_FLAGS, "-c", str(source), "-o", str(out)], source.parent)
    return time.monotonic() - started


def _stall_meter_with(
    root: Path, name: str, filename: str, first: str, second: str, extra: tuple[str, ...] = ()
) -> tuple[Path, Path, Path, float]:
    """The stall meter linked in ``root/name`` with ``filename`` (text ``first``, and
    ``extra`` sources there), and the edited unit (``second``) compiled ahead in
    ``root/name/new``; the source then holds ``second``, as after an edit.  Returns the
    executable, the source, the new object and its compile time (seconds)."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / filename
    source.write_text(first)
    shutil.copy(STALL_METER, folder / "stall_meter.c")
    exe = folder / f"stall_{name}"
    _run(
        ["gcc", *CFLAGS, "-pthread", "-o", exe.name, "stall_meter.c", filename, *extra],
        folder,
    )
    spare = folder / "new"
    spare.mkdir(exist_ok=True)
    new_object = spare / Path(filename).with_suffix(".o")
    compile_s = _compile_new(spare / filename, second, new_object)
    source.write_text(second)
    return exe, source, new_object, compile_s


def build_one(root: Path, name: str = "one", extra: tuple[str, ...] = ()) -> Target:
    """The stall meter with ``compute()`` in its own file (plus ``extra`` sources)."""
    exe, source, new, compile_s = _stall_meter_with(
        root, name, "func.c", func_source(1), func_source(2), extra
    )
    return Target(name, exe, source, new, ["compute"], _nm(exe), compile_s)


def build_many(root: Path, count: int = 3000) -> Target:
    """The stall meter with a generated translation unit of ``count`` functions."""
    exe, source, new, compile_s = _stall_meter_with(
        root, "many", "gen.c", many_source(count, 1), many_source(count, 2)
    )
    changed = ["compute", *(f"f{i:04d}" for i in range(1, count))]
    return Target("many", exe, source, new, changed, _nm(exe), compile_s)


def build_big(root: Path, count: int = 100_000) -> Target:
    """``one`` linked with ``count`` extra symbols."""
    folder = root / "big"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bigsyms.s").write_text(big_symbols_asm(count))
    return build_one(root, "big", ("bigsyms.s",))


def huge_source(count: int, version: int, edited: int = 0) -> str:
    """A sqlite3-sized translation unit: ``count`` functions of about 25 lines each.

    Like an amalgamation, most functions and all tables are ``static`` (so the file's
    group of local symbols is large), functions call one another, use string
    literals, file statics and function-local statics, and a struct type.  Only
    ``compute()`` changes with ``version``; ``edited`` makes function ``edited``
    (when nonzero) differ too, so that a later reload has something else to change.
    """
    lines = [
        "/* relive benchmark: a generated sqlite3-sized translation unit. */",
        "#include <string.h>",
        "struct huge_node { long key; long value; struct huge_node *next; const char *tag; };",
        "long huge_state[256];",
        f"int compute(void) {{ return {version}; }}",
    ]
    for i in range(1, count):
        storage = "" if i % 4 == 0 else "static "
        if i % 5 == 0:
            lines.append(f"static struct huge_node huge_table_{i}[4];")
        bump = " + 1" if i == edited else ""
        callee = f"huge_fn_{i - 1:05d}(n, depth - 1)" if i > 1 else "0"
        table = f"huge_table_{i - i % 5}" if i >= 5 else "(struct huge_node *)0"
        lines += [
            f"{storage}__attribute__((noinline)) long huge_fn_{i:05d}(long n, int depth)",
            "{",
            "    static long calls;",
            f"    struct huge_node *t = {table};",
            "    long acc = n;",
            "    calls++;",
            "    if (depth <= 0)",
            f"        return acc + calls{bump};",
            "    for (int k = 0; k < 4; k++) {",
            "        if (t) {",
            "            acc += t[k].key * (k + 1);",
            "            t[k].value = acc;",
            f'            t[k].tag = "huge {i} entry";',
            "        }",
            f"        acc ^= huge_state[(k + {i}) & 255];",
            "    }",
            f"    if (acc % {i % 13 + 2} == 0)",
            f'        acc += (long)strlen("function {i}");',
            "    else",
            f"        acc -= {i};",
            f"    huge_state[{i % 256}] = acc;",
            f"    acc += {callee};",
            "    if (acc < 0)",
            "        acc = -acc;",
            "    return acc;",
            "}",
        ]
    lines.append(f"long huge_entry(long n) {{ return huge_fn_{count - 1:05d}(n, 3); }}")
    return "\n".join(lines) + "\n"


@dataclass
class HugeTarget:
    """The stall meter with a sqlite3-sized unit, and two later versions of it."""

    target: Target
    #: The second reload's object: the first's plus one more changed function.
    next_prebuilt: Path
    next_changed: list[str]
    lines: int


def build_huge(root: Path, count: int = 10_000) -> HugeTarget:
    """The stall meter linked with a 250k-line, ``count``-function unit."""
    text = huge_source(count, 2)
    exe, source, new, compile_s = _stall_meter_with(
        root, "huge", "huge.c", huge_source(count, 1), text
    )
    later = source.parent / "later"
    later.mkdir(exist_ok=True)
    edited = count // 2
    _compile_new(later / "huge.c", huge_source(count, 3, edited), later / "huge.o")
    target = Target("huge", exe, source, new, ["compute"], _nm(exe), compile_s)
    return HugeTarget(
        target, later / "huge.o", ["compute", f"huge_fn_{edited:05d}"], text.count("\n")
    )

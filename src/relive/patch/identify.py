"""Which file is this?  A source or object must belong to the running program.

A ``.c`` file that no compile unit of the program or its libraries names
(DWARF, then compile_commands.json), or a ``.o`` none of whose functions the
program has, would replace the program's functions with another project's
that happen to share a name.  Such a file is refused, naming the units that
are close (same basename); ``--new-file`` loads it on purpose, and then it may
only add functions (or replace those named with ``--function``).
"""

from __future__ import annotations

import os
from pathlib import Path

from relive.elf.dwarf import CompileUnit, iter_compile_units
from relive.elf.objfile import ObjectFile
from relive.errors import BadObject, ReliveError
from relive.patch.modules import RunningModule

_HINT = (
    "reload the program's own file, or pass --new-file to load it on purpose "
    "(it may then only add functions, or replace those named with --function)"
)


class ForeignFile(ReliveError):
    """The file given is not one the running program was built from."""


def is_same_file(unit: CompileUnit, source: Path) -> bool:
    """Whether ``unit`` names ``source``: the same path, or (a moved tree) a path
    that no longer exists with the same basename."""
    path = unit.path
    if not os.path.exists(path):
        return os.path.basename(path) == source.name
    try:
        return os.path.samefile(path, source)
    except OSError:
        return False


def check_source_belongs(
    source: Path,
    unit: CompileUnit | None,
    from_compdb: bool,
    modules: list[RunningModule],
) -> None:
    """Raise ForeignFile if neither DWARF nor compile_commands.json names ``source``.

    A program without any DWARF cannot tell: then the file is accepted.
    """
    if (unit is not None and is_same_file(unit, source)) or from_compdb:
        return
    units = [u for m in modules for u in _units(m)]
    if not units:
        return
    close = sorted({u.path for u in units if os.path.basename(u.path) == source.name})
    raise ForeignFile(
        f"{source}: no compile unit of the program or its libraries is this file "
        f"(close: {', '.join(close) if close else 'none'})",
        hint=_HINT,
    )


def check_object_belongs(obj: ObjectFile, module: RunningModule) -> None:
    """Raise ForeignFile if none of the object's global functions is in the module."""
    names = [s.name for s in obj.iter_functions() if not s.is_local]
    if not names or any(module.image.find_global(n) is not None for n in names):
        return
    raise ForeignFile(
        f"{obj.path}: none of its functions ({', '.join(sorted(names)[:5])}"
        f"{', ...' if len(names) > 5 else ''}) is in the program or its libraries",
        hint=_HINT,
    )


def _units(module: RunningModule) -> list[CompileUnit]:
    try:
        return list(iter_compile_units(module.file))
    except BadObject:
        return []

"""Which source files a watch covers: the program's own (from DWARF) or the user's PATHs.

A *unit* is a translation unit relive can reload: a C source file of the
program.  Without PATHs they are every C compile unit of the executable and
its loaded shared libraries whose source exists on disk.  PATHs (files or
folders) narrow what is watched: a saved file counts only if it is one of the
named files or lies under a named folder.  A ``.c`` file named explicitly is a
unit even if the program's DWARF does not list it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from relive.elf.dwarf import CompileUnit, iter_compile_units
from relive.errors import BadObject, UsageError
from relive.patch.modules import RunningModule
from relive.toolchain.choice import get_compile_command
from relive.toolchain.command import CompileCommand
from relive.toolchain.lto import without_lto
from relive.watch.paths import real_path

__all__ = ["Scope", "WatchSet", "compile_command_for", "find_units", "select_units"]

#: DW_LANG_* codes of C (C89, C, C99, C11, C17, C23 in DWARF 5/6 numbering).
_C_LANGUAGES = frozenset({0x0001, 0x0002, 0x000C, 0x001D, 0x002C, 0x003E})
_C_SUFFIXES = (".c",)


def _is_c_unit(unit: CompileUnit) -> bool:
    return unit.language in _C_LANGUAGES or unit.name.endswith(_C_SUFFIXES)


def find_units(modules: Sequence[RunningModule]) -> dict[Path, CompileUnit]:
    """The C compile units of ``modules`` whose source exists, by real source path.

    The executable comes first, so its unit wins when a library lists the same file.
    """
    units: dict[Path, CompileUnit] = {}
    for module in modules:
        try:
            found = list(iter_compile_units(module.file))
        except BadObject:
            continue  # a library we cannot read has no sources for us
        for unit in found:
            if _is_c_unit(unit) and os.path.isfile(unit.path):
                units.setdefault(real_path(unit.path), unit)
    return units


@dataclass(frozen=True)
class Scope:
    """The files and folders named on the command line; empty means "everything"."""

    files: frozenset[Path] = frozenset()
    folders: tuple[Path, ...] = ()

    @property
    def everything(self) -> bool:
        """Whether no PATH narrows the watch."""
        return not self.files and not self.folders

    def contains(self, path: Path) -> bool:
        """Whether a save of ``path`` (a real path) is watched."""
        if self.everything or path in self.files:
            return True
        return any(path.is_relative_to(folder) for folder in self.folders)

    @classmethod
    def from_paths(cls, paths: Iterable[str | Path]) -> Scope:
        """The scope of command-line PATHs; raises UsageError for one that does not exist."""
        files: set[Path] = set()
        folders: list[Path] = []
        for given in paths:
            path = real_path(given)
            if path.is_dir():
                folders.append(path)
            elif path.is_file():
                files.add(path)
            else:
                raise UsageError(
                    f"no such file or folder: {given}",
                    "name source files or folders of the program",
                )
        return cls(frozenset(files), tuple(folders))


@dataclass
class WatchSet:
    """The units to reload and the DWARF unit (if any) each was built from."""

    units: dict[Path, CompileUnit | None] = field(default_factory=dict)


def select_units(dwarf_units: dict[Path, CompileUnit], scope: Scope) -> WatchSet:
    """Units for a watch: the program's, plus ``.c`` files the scope names explicitly.

    When the program has no C units in its DWARF at all (built without -g), the
    ``.c`` files under the scope's folders are taken instead.  Raises UsageError
    when that leaves nothing.
    """
    units: dict[Path, CompileUnit | None] = dict(dwarf_units)
    for path in scope.files:
        if path.suffix in _C_SUFFIXES:
            units.setdefault(path, None)
    if not dwarf_units:
        for folder in scope.folders:
            for found in sorted(folder.rglob("*.c")):
                units.setdefault(real_path(found), None)
    if not units:
        raise UsageError(
            "no source files to watch: the program's debug info names none that exist here",
            "name the program's .c files or their folder (`relive watch -p PID src/`, "
            "`relive run --watch src/ -- PROGRAM`), or build it with -g",
        )
    return WatchSet(units)


def compile_command_for(
    source: Path,
    unit: CompileUnit | None,
    cflags: Sequence[str] | None,
    compdb: Path | None,
    trust_build: bool = False,
) -> CompileCommand:
    """How ``source`` is compiled, decided as a reload decides it (see relive.toolchain.choice)."""
    return without_lto(
        get_compile_command(
            source, cli_flags=cflags, compdb=compdb, compile_unit=unit, trust_build=trust_build
        )
    )

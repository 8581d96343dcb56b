"""Reading ``compile_commands.json``: the build system's own command for a source."""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relive.errors import ReliveError
from relive.toolchain.arguments import clean_arguments
from relive.toolchain.command import ORIGIN_COMPDB, CompileCommand

__all__ = ["COMPDB_NAME", "find_compdb", "find_compdb_entry"]

COMPDB_NAME = "compile_commands.json"


def find_compdb(source: Path) -> Path | None:
    """Return the nearest ``compile_commands.json`` above ``source``, or None.

    Looks in the source's folder and each parent, and in a ``build/`` folder of
    each of them (where CMake users usually keep it); the nearer wins, and at the
    same level the folder itself wins over its ``build/``.
    """
    start = source.resolve()
    for folder in start.parents:
        for candidate in (folder / COMPDB_NAME, folder / "build" / COMPDB_NAME):
            if candidate.is_file():
                return candidate
    return None


def find_compdb_entry(
    compdb: Path, source: Path, recorded_flags: Sequence[str] = ()
) -> CompileCommand | None:
    """Return the command ``compdb`` records for ``source``, or None if it has none.

    Entries are ``{directory, file, arguments | command}``; ``file`` is relative to
    ``directory``, and ``command`` is split like a shell would.  Builds such as
    libtool's compile one file several times (PIC and not, C and C++): then the
    entry that agrees best with ``recorded_flags`` (what DWARF says the running
    code was built with) wins, a C compiler before a C++ one, else the first.
    Raises ReliveError if the file is not a valid compilation database.
    """
    wanted = source.resolve()
    found: list[CompileCommand] = []
    for entry in _load_compdb(compdb):
        directory, file = _entry_paths(compdb, entry)
        if (directory / file).resolve() != wanted:
            continue
        argv = _strip_launcher(_entry_argv(compdb, entry))
        if not argv:
            raise _bad_compdb(compdb, f"the entry for {file} has an empty command")
        found.append(
            CompileCommand(
                compiler=argv[0],
                flags=clean_arguments(argv[1:]),
                directory=directory,
                source=wanted,
                origin=ORIGIN_COMPDB,
                source_arg=_source_spelling(argv, directory, wanted) or file,
            )
        )
    if not found:
        return None
    return max(found, key=lambda c: _agreement(c, recorded_flags, found.index(c)))


def _source_spelling(argv: Sequence[str], directory: Path, source: Path) -> str | None:
    """The source as the build's own command spelled it: that spelling becomes
    ``__FILE__`` (assert messages), which must match the running code.  bear
    writes an absolute ``file`` even when the command said ``server.c``."""
    for arg in argv[1:]:
        named = not arg.startswith("-") and arg.endswith(source.name)
        if named and (directory / arg).resolve() == source:
            return arg
    return None


def _agreement(cmd: CompileCommand, recorded: Sequence[str], position: int) -> tuple[int, int, int]:
    """How well an entry matches the code that runs: C over C++, shared code-generation
    flags (-f, -m, -O) minus ones only one side has, then earlier entries."""
    is_cxx = "++" in Path(cmd.compiler).name
    codegen = {f for f in cmd.flags if f.startswith(("-f", "-m", "-O"))}
    wanted = {f for f in recorded if f.startswith(("-f", "-m", "-O"))}
    return (0 if is_cxx else 1, len(codegen & wanted) - len(codegen ^ wanted), -position)


def _load_compdb(compdb: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(compdb.read_text(encoding="utf-8"))
    except OSError as e:
        raise ReliveError(
            f"cannot read {compdb}: {e.strerror}", "check the path or pass --cflags"
        ) from e
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad_compdb(compdb, f"invalid JSON ({e})") from e
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise _bad_compdb(compdb, "expected a list of objects")
    return data


def _entry_paths(compdb: Path, entry: dict[str, Any]) -> tuple[Path, str]:
    directory, file = entry.get("directory"), entry.get("file")
    if not isinstance(directory, str) or not isinstance(file, str):
        raise _bad_compdb(compdb, "an entry lacks a 'directory' or 'file' string")
    # The spec wants an absolute directory; some generators write one relative
    # to the database itself, which is the only sensible reading of it.
    return Path(os.path.normpath(compdb.absolute().parent / directory)), file


def _entry_argv(compdb: Path, entry: dict[str, Any]) -> list[str]:
    arguments = entry.get("arguments")
    if isinstance(arguments, list) and all(isinstance(a, str) for a in arguments):
        return list(arguments)
    command = entry.get("command")
    if isinstance(command, str):
        try:
            return shlex.split(command)
        except ValueError as e:
            raise _bad_compdb(compdb, f"cannot split command {command!r}: {e}") from e
    raise _bad_compdb(compdb, "an entry has neither 'arguments' nor 'command'")


# Compiler launchers put in front of the real compiler by build systems.
_LAUNCHERS = frozenset({"ccache", "sccache", "distcc", "icecc"})


def _strip_launcher(argv: list[str]) -> list[str]:
    # In "ccache gcc -c x.c" the compiler is the word after the launcher; left in
    # place, "gcc" would be taken for an input file.  A one-off compile gains
    # nothing from the launcher, so call the compiler directly.
    while len(argv) > 1 and os.path.basename(argv[0]) in _LAUNCHERS:
        argv = argv[1:]
    return argv


def _bad_compdb(compdb: Path, why: str) -> ReliveError:
    return ReliveError(
        f"{compdb} is not a valid compilation database: {why}",
        "regenerate it, or pass --cflags",
    )

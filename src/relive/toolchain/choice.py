"""Choosing the command that recompiles a C source file like the running code.

New code is only interchangeable with the running code if it is generated the
same way, so the flags come, in order of trust, from:

1. the command line (the user said so),
2. ``compile_commands.json`` (the build system said so, including -D/-I),
3. the running program's DWARF producer string (gcc records its -O/-f/-m/-g
   switches but no -D/-I; clang records nothing unless built with
   -grecord-command-line, and then its whole command line),
4. a default of ``gcc -g -O0``.

Where the build recorded no flags (3 without them, or 4), the command says so
(``flags_unknown``) and the plan side infers the optimisation level by
reproduction (``relive.patch.inference``).

This module only reads files; running the compiler is ``relive.toolchain.compiler``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from relive.elf.dwarf import CompileUnit
from relive.errors import UsageError
from relive.toolchain.arguments import clean_arguments
from relive.toolchain.command import (
    ORIGIN_COMMAND_LINE,
    ORIGIN_DEFAULT,
    ORIGIN_DWARF,
    CompileCommand,
)
from relive.toolchain.compdb import COMPDB_NAME, find_compdb, find_compdb_entry
from relive.toolchain.producer import parse_producer
from relive.toolchain.trust import check_trusted_file, find_compiler, screen_flags

__all__ = ["get_compile_command"]

DEFAULT_COMPILER = "gcc"
DEFAULT_FLAGS = ("-g", "-O0")


def get_compile_command(
    source: Path,
    *,
    cli_flags: Sequence[str] | None = None,
    compdb: Path | None = None,
    compile_unit: CompileUnit | None = None,
    trust_build: bool = False,
) -> CompileCommand:
    """Decide how to recompile ``source``.

    Precedence: ``cli_flags`` (compiled in the current directory, with the
    running program's compiler family if its DWARF names one, else gcc); then
    the entry for the source in ``compdb``, or in the nearest
    compile_commands.json if ``compdb`` is None (a database without an entry
    for the source is skipped); then ``compile_unit``'s producer (plus -I for the
    source's folder and the compilation directory, which DWARF does not record);
    then ``gcc -g -O0`` in the source's folder.

    A clang-built program without -grecord-command-line still gives origin
    "DWARF" (so clang compiles it) with only the -I flags, marked
    ``flags_unknown`` (as is the default) for the plan side to infer the level.

    Flags from DWARF pass ``relive.toolchain.trust.screen_flags`` (a note lists
    what was dropped).  Unless ``trust_build``, a compile_commands.json or a
    compiler that another user controls raises UntrustedBuild.

    Raises UsageError if the source (or an explicit ``compdb``) does not exist.
    """
    if not source.is_file():
        raise UsageError(
            f"no such file: {source}", "give the path of a C source file of the program"
        )
    source = source.resolve()
    family, producer_flags = (
        parse_producer(compile_unit.producer)
        if compile_unit is not None and compile_unit.producer
        else ("", ())
    )

    command, database = _choose(source, cli_flags, compdb, compile_unit, family, producer_flags)
    if not trust_build:
        _check_trusted(command, database)
    return command


def _choose(
    source: Path,
    cli_flags: Sequence[str] | None,
    compdb: Path | None,
    compile_unit: CompileUnit | None,
    family: str,
    producer_flags: tuple[str, ...],
) -> tuple[CompileCommand, Path | None]:
    """The command, and the compile_commands.json it came from (if it did)."""
    if cli_flags is not None:
        return CompileCommand(
            compiler=family or DEFAULT_COMPILER,
            flags=clean_arguments(list(cli_flags)),
            # Flags typed on a command line are relative to where they were typed.
            directory=Path.cwd(),
            source=source,
            origin=ORIGIN_COMMAND_LINE,
        ), None

    compdb = _explicit_compdb(compdb) if compdb is not None else find_compdb(source)
    missing: tuple[str, ...] = ()
    if compdb is not None:
        entry = find_compdb_entry(compdb, source, producer_flags)
        if entry is not None:
            notes = tuple(_consistency_notes(entry, family, producer_flags))
            return dataclasses.replace(entry, notes=notes), compdb
        # Usually a stale database or a file the build does not compile; say so,
        # since the user may believe its flags are in use.
        missing = (f"{compdb} has no entry for {source.name}",)

    if compile_unit is not None and family:
        cmd = _dwarf_command(source, compile_unit, family, producer_flags)
    else:
        cmd = CompileCommand(
            compiler=DEFAULT_COMPILER,
            flags=DEFAULT_FLAGS,
            directory=source.parent,
            source=source,
            origin=ORIGIN_DEFAULT,
            flags_unknown=True,
        )
    return dataclasses.replace(cmd, notes=(*missing, *cmd.notes)), None


def _check_trusted(command: CompileCommand, compdb: Path | None) -> None:
    """Refuse a database or compiler another user controls (UntrustedBuild)."""
    if compdb is not None:
        check_trusted_file(compdb, COMPDB_NAME)
    compiler = find_compiler(command.compiler, command.directory)
    if compiler is not None:
        check_trusted_file(compiler, "the compiler")


def _explicit_compdb(compdb: Path) -> Path:
    # Accept the build directory too, as clang tools' -p does.
    if compdb.is_dir():
        compdb = compdb / COMPDB_NAME
    if not compdb.is_file():
        raise UsageError(
            f"no such file: {compdb}",
            "pass the compile_commands.json your build system wrote, or its folder",
        )
    return compdb


def _dwarf_command(
    source: Path, unit: CompileUnit, family: str, flags: tuple[str, ...]
) -> CompileCommand:
    comp_dir = Path(unit.comp_dir) if unit.comp_dir else None
    directory = comp_dir if comp_dir is not None and comp_dir.is_dir() else source.parent
    # DWARF keeps no -I: the source's own folder and the build directory are where
    # local headers most likely are.
    includes: list[str] = []
    for folder in (source.parent, directory):
        flag = f"-I{folder}"
        if flag not in includes:
            includes.append(flag)
    # Spell the source as the original build did when it still names this file,
    # so __FILE__ expands to the same string as in the running code.
    source_arg = unit.name if (directory / unit.name).resolve() == source else ""
    # No flags recorded (clang without -grecord-command-line): the level is
    # inferred by reproduction (relive.patch.inference), which says so.
    notes: tuple[str, ...] = ()
    # The program's owner wrote these: nothing that loads code or names other tools.
    flags, dropped = screen_flags(flags)
    if dropped:
        notes = (
            *notes,
            f"ignoring {' '.join(dropped)} from the DWARF of {source.name}: relive does not "
            "run plugins, tools or files a program's build chose (pass --cflags to use them)",
        )
    return CompileCommand(
        compiler=family,
        flags=(*flags, *includes),
        directory=directory,
        source=source,
        origin=ORIGIN_DWARF,
        source_arg=source_arg,
        notes=notes,
        flags_unknown=not flags,
    )


def _compiler_family(compiler: str) -> str:
    name = os.path.basename(compiler)
    if "clang" in name:
        return "clang"
    if "gcc" in name or name.endswith("g++"):
        return "gcc"
    return ""  # "cc" and the like: could be either


def _optimisation_level(flags: Sequence[str]) -> str:
    level = "-O0"
    for flag in flags:
        if flag.startswith("-O"):
            level = "-O1" if flag == "-O" else flag
    return level


def _consistency_notes(
    cmd: CompileCommand, family: str, producer_flags: tuple[str, ...]
) -> Iterator[str]:
    # A database can be stale or belong to another build than the running one;
    # code from a different compiler or -O level will not match the old code.
    if not family:
        return
    cmd_family = _compiler_family(cmd.compiler)
    if cmd_family and cmd_family != family:
        yield (
            f"{cmd.origin} compiles {cmd.source.name} with {cmd.compiler} "
            f"but the running program was built with {family}"
        )
    if producer_flags:
        ours, theirs = _optimisation_level(cmd.flags), _optimisation_level(producer_flags)
        if ours != theirs:
            yield (
                f"{cmd.origin} compiles {cmd.source.name} with {ours} "
                f"but the running code was built with {theirs}"
            )

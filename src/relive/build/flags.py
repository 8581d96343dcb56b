"""Finding the flags a C source file was originally compiled with.

New code is only interchangeable with the running code if it is generated the
same way, so the flags come, in order of trust, from:

1. the command line (the user said so),
2. ``compile_commands.json`` (the build system said so, including -D/-I),
3. the running program's DWARF producer string (gcc records its -O/-f/-m/-g
   switches but no -D/-I; clang records nothing unless built with
   -grecord-command-line, and then its whole command line),
4. a default of ``gcc -g -O0``.

This module only reads files; running the compiler is ``relive.build.compiler``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relive.elf.dwarf import CompileUnit
from relive.errors import ReliveError, UsageError

__all__ = [
    "ORIGIN_COMMAND_LINE",
    "ORIGIN_COMPDB",
    "ORIGIN_DEFAULT",
    "ORIGIN_DWARF",
    "CompileCommand",
    "clean_arguments",
    "find_compdb",
    "find_compdb_entry",
    "get_compile_command",
    "parse_producer",
    "uses_lto",
    "without_lto",
]

ORIGIN_COMMAND_LINE = "command line"
ORIGIN_COMPDB = "compile_commands.json"
ORIGIN_DWARF = "DWARF"
ORIGIN_DEFAULT = "default"

COMPDB_NAME = "compile_commands.json"
DEFAULT_COMPILER = "gcc"
DEFAULT_FLAGS = ("-g", "-O0")


@dataclass(frozen=True)
class CompileCommand:
    """How to recompile one translation unit.

    ``flags`` exclude the source file, ``-c``, ``-o X`` and dependency-file
    options: ``relive.build.compiler`` adds its own.  ``directory`` is the
    compiler's working directory (relative paths in ``flags`` are relative to
    it).  ``origin`` says where the flags came from (one of the ``ORIGIN_*``
    constants).  ``source_arg`` is the source path as the original build spelled
    it (it ends up in ``__FILE__`` and ``assert`` messages), or "" to pass the
    absolute ``source``.  ``notes`` are warnings worth showing the user, such as
    a compiler or optimisation level that differs from the running program's.
    """

    compiler: str
    flags: tuple[str, ...]
    directory: Path
    source: Path
    origin: str
    source_arg: str = ""
    notes: tuple[str, ...] = ()

    @property
    def source_argument(self) -> str:
        """The source path to put on the compiler's command line."""
        return self.source_arg or str(self.source)


# --- cleaning an original command line -------------------------------------

# Options whose value is the next argument; needed so that value is not taken
# for a source file (and dropped) when scanning for positional arguments.
_TAKES_VALUE = frozenset(
    {
        "-D", "-U", "-I", "-include", "-imacros", "-idirafter", "-iprefix",
        "-iwithprefix", "-iwithprefixbefore", "-isystem", "-isystem-after",
        "-isysroot", "-iquote", "-imultilib", "-imultiarch", "-iframework",
        "-x", "-Xclang", "-Xassembler", "-Xpreprocessor", "-Xanalyzer",
        "-aux-info", "--param", "-target", "-arch", "-mllvm", "-B",
        "-cxx-isystem", "-ivfsoverlay", "-include-pch", "-dumpbase",
        "-dumpbase-ext", "-dumpdir", "--sysroot", "-F",
    }
)  # fmt: skip

# Output naming, dependency files and linking are relive's business (or
# irrelevant to compiling one object): drop them together with their value.
_DROP_WITH_VALUE = frozenset({"-o", "-MF", "-MT", "-MQ", "-MJ", "-Xlinker", "-z", "-T", "-u", "-e"})
_DROP = frozenset(
    {
        # relive always compiles to an object; other output modes make none.
        "-c", "-S", "-E", "-fsyntax-only", "-emit-llvm",
        # Dependency files: the compiler layer writes its own.
        "-MD", "-MMD", "-MP", "-M", "-MM", "-MG",
        # Link-only options: unused with -c (clang would warn about each).
        "-shared", "-rdynamic", "-pie", "-no-pie", "-s",
    }
)  # fmt: skip
_DROP_PREFIXES = (
    "-o", "-MF", "-MT", "-MQ", "-MJ",  # joined forms, e.g. -MFfoo.d
    "-Wp,-MD,", "-Wp,-MMD,",  # Linux-kernel style dependency files
    "-Wl,", "-l", "-L", "-static",
)  # fmt: skip


def clean_arguments(args: Sequence[str]) -> tuple[str, ...]:
    """Strip an original compiler command (without argv[0]) down to its flags.

    Removes source and other input files, ``-c``, ``-o X``, dependency-file
    options (``-MD -MMD -MF X -MT X -MQ X -MP``) and link-only options, and keeps
    everything else in order.  Response files (``@file``) are kept.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _DROP_WITH_VALUE:
            i += 2
            continue
        if arg in _DROP or arg.startswith(_DROP_PREFIXES):
            i += 1
            continue
        if arg in _TAKES_VALUE:
            out.extend(args[i : i + 2])
            i += 2
            continue
        # A positional argument is an input (the source, objects, "-" for stdin).
        if (arg.startswith("-") and arg != "-") or arg.startswith("@"):
            out.append(arg)
        i += 1
    return tuple(out)


# --- compile_commands.json -------------------------------------------------


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


# --- DWARF producer ----------------------------------------------------------

_GCC_KEEP_PREFIXES = ("-O", "-f", "-m", "-std=", "-g", "--param=")
_GCC_KEEP_EXACT = frozenset({"-ansi", "-p", "-pg", "-pthread"})
# Switches that name paths of the original build, make it reproducible, or only
# shape diagnostics or dump files: wrong or useless when recompiling one object.
_GCC_DROP_PREFIXES = (
    "-fdebug-prefix-map=", "-ffile-prefix-map=", "-fmacro-prefix-map=",
    "-frandom-seed", "-fdump-", "-fdiagnostics-", "-dumpbase", "-dumpdir",
)  # fmt: skip

# "Debian clang version 14.0.6", "clang version 17.0.6 (https://… 6009708b)",
# "Apple clang version 15.0.0 (clang-1500.3.9.4)": the version, then any number
# of parenthesised remarks, then (with -grecord-command-line) the command line.
_CLANG_RE = re.compile(r"\bclang version \S+(?:\s+\([^)]*\))*")


def parse_producer(producer: str) -> tuple[str, tuple[str, ...]]:
    """Split a DW_AT_producer string into (compiler family, flags).

    The family is "gcc" or "clang", or "" for a producer this does not know (the
    GNU assembler, other compilers), which then has no flags.  For gcc the flags
    are the recorded -O/-f/-m/-std/-g switches minus path maps, random seeds and
    dump options; gcc never records -D/-I/-W.  For clang they are the recorded
    command line, cleaned like a compile_commands.json entry, or nothing if the
    program was built without -grecord-command-line.
    """
    if producer.startswith("GNU ") and not producer.startswith("GNU AS"):
        return "gcc", _gcc_producer_flags(producer)
    match = _CLANG_RE.search(producer)
    if match:
        args = _split_clang_record(producer[match.end() :])
        # The recorded command starts with the driver's path.
        if args and not args[0].startswith("-"):
            args = args[1:]
        return "clang", clean_arguments(args)
    return "", ()


def _gcc_producer_flags(producer: str) -> tuple[str, ...]:
    # "GNU C17 12.2.0 (Debian 12.2.0-14) -O2 ...": switches start at the first
    # word beginning with "-"; the version remarks before it never do.
    start = re.search(r"(?:^|\s)-", producer)
    if start is None:
        return ()
    tokens = producer[start.start() :].split()
    flags: list[str] = []
    for i, token in enumerate(tokens):
        if token.startswith(_GCC_DROP_PREFIXES):
            continue
        if token.startswith(_GCC_KEEP_PREFIXES) or token in _GCC_KEEP_EXACT:
            flags.append(token)
        elif token == "--param" and i + 1 < len(tokens):
            flags.append(f"--param={tokens[i + 1]}")
    return tuple(flags)


def _split_clang_record(text: str) -> list[str]:
    # clang joins the arguments with spaces after escaping spaces and backslashes
    # with a backslash; quotes are literal, so shlex would be wrong here.
    args: list[str] = []
    current: list[str] = []
    in_arg = False
    chars = iter(text)
    for char in chars:
        if char == "\\":
            current.append(next(chars, "\\"))
            in_arg = True
        elif char.isspace():
            if in_arg:
                args.append("".join(current))
                current, in_arg = [], False
        else:
            current.append(char)
            in_arg = True
    if in_arg:
        args.append("".join(current))
    return args


# --- choosing the command ----------------------------------------------------


def get_compile_command(
    source: Path,
    *,
    cli_flags: Sequence[str] | None = None,
    compdb: Path | None = None,
    compile_unit: CompileUnit | None = None,
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
    "DWARF" (so clang compiles it) with only the -I flags, and a note saying the
    optimisation level is unknown.

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

    if cli_flags is not None:
        return CompileCommand(
            compiler=family or DEFAULT_COMPILER,
            flags=clean_arguments(list(cli_flags)),
            # Flags typed on a command line are relative to where they were typed.
            directory=Path.cwd(),
            source=source,
            origin=ORIGIN_COMMAND_LINE,
        )

    compdb = _explicit_compdb(compdb) if compdb is not None else find_compdb(source)
    missing: tuple[str, ...] = ()
    if compdb is not None:
        entry = find_compdb_entry(compdb, source, producer_flags)
        if entry is not None:
            notes = tuple(_consistency_notes(entry, family, producer_flags))
            return dataclasses.replace(entry, notes=notes)
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
        )
    return dataclasses.replace(cmd, notes=(*missing, *cmd.notes))


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
    notes: tuple[str, ...] = ()
    if not flags:
        notes = (
            f"{unit.producer} recorded no flags, so the optimisation level is unknown; "
            "build with -grecord-command-line or pass --cflags",
        )
    return CompileCommand(
        compiler=family,
        flags=(*flags, *includes),
        directory=directory,
        source=source,
        origin=ORIGIN_DWARF,
        source_arg=source_arg,
        notes=notes,
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


# --- refusals ----------------------------------------------------------------


def uses_lto(flags: Sequence[str]) -> bool:
    """Whether ``flags`` compile with link-time optimisation.

    As for the compiler, the last of ``-flto``/``-flto=...`` and ``-fno-lto``
    wins; tuning options such as ``-flto-partition=`` do not turn LTO on.
    """
    lto = False
    for flag in flags:
        if flag == "-flto" or flag.startswith("-flto="):
            lto = True
        elif flag == "-fno-lto":
            lto = False
    return lto


def without_lto(cmd: CompileCommand) -> CompileCommand:
    """``cmd`` compiling to machine code: LTO flags dropped, ``-fno-lto`` added.

    An LTO object holds compiler IR, not code relive can load.  The running
    program was optimised across files at link time; the recompiled file is
    not, which is correct but may inline less.  A note says so.
    """
    if not uses_lto(cmd.flags):
        return cmd
    kept = tuple(
        f
        for f in cmd.flags
        if not (f.startswith(("-flto", "-ffat-lto-objects")) or f == "-fuse-linker-plugin")
    )
    note = (
        f"{cmd.source.name} was built with -flto: recompiling it without LTO "
        "(an LTO object has no machine code to load)"
    )
    return dataclasses.replace(cmd, flags=(*kept, "-fno-lto"), notes=(*cmd.notes, note))

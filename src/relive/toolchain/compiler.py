"""Running gcc or clang to turn one C source file into a relocatable object.

The object is compiled with the original flags (see ``relive.toolchain.choice``) plus
only what relive needs to pick the result apart; anything that changes code
generation (-fPIC, -fno-common, ...) is left exactly as the user had it, since
the new code is compared with, and must behave like, the running code.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from relive.errors import BadObject, CompileError, ReliveError
from relive.toolchain.command import CompileCommand
from relive.toolchain.lto import without_lto
from relive.toolchain.priority import (
    compile_nice,
    lower_priority,
    started_in_background,
    stop_group,
)

__all__ = ["CompileResult", "compile_object", "read_dependencies"]

# Each function and variable in its own section, so the linker can bind and
# replace them one by one.
SECTION_FLAGS = ("-ffunction-sections", "-fdata-sections")

COMPILE_ERROR_HINT = "fix the error and save again; the program keeps running its current code"
NO_COMPILER_HINT = (
    "install that compiler, or name an installed one in a compile_commands.json (--compdb)"
)

_ELF_MAGIC = b"\x7fELF"
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# "demo.c:12:5: error: ..." and "demo.c:1:10: fatal error: ..." (gcc and clang).
_LOCATED_ERROR = re.compile(r"^\S.*?:\d+:\d+: (?:fatal )?error: ")
# "gcc: error: unrecognized command-line option ...", "cc1: fatal error: ...".
_ANY_ERROR = re.compile(r"(?:^|: )(?:fatal )?error: ")
# -g, -g2, -ggdb, -gdwarf-4, ...; a trailing 0 (-g0, -ggdb0) turns debug info off.
_DEBUG_LEVEL = re.compile(r"-g(?:gdb|dwarf(?:-\d+)?)?(\d?)")


@dataclass(frozen=True)
class CompileResult:
    """A successful compile.

    ``command`` is the argv that ran (in ``CompileCommand.directory``),
    ``warnings`` the compiler's stderr (usually empty), ``depfile`` the make-format
    dependency file written next to the object and ``dependencies`` its contents
    as absolute paths: the source and every non-system header it included.
    """

    object_path: Path
    command: list[str]
    milliseconds: float
    warnings: str
    depfile: Path | None = None
    dependencies: tuple[Path, ...] = ()


def compile_object(
    cmd: CompileCommand,
    out_dir: Path,
    on_wait: Callable[[], None] | None = None,
    interval: float = 1.0,
) -> CompileResult:
    """Compile ``cmd.source`` to ``out_dir/<stem>.o`` (and ``<stem>.d``).

    Adds ``-ffunction-sections -fdata-sections``, ``-g`` when the flags have no
    debug info, and ``-MMD -MF <stem>.d``.  An existing object of the same name
    in ``out_dir`` is replaced, so give sources with equal stems different
    folders.

    ``on_wait`` is called every ``interval`` seconds while the compiler runs (to
    report progress).  LTO flags are replaced by -fno-lto (see ``without_lto``).  Raises ReliveError
    for a missing compiler, CompileError (with the
    first error line as message and the compiler's output as details) if the
    compiler fails, and BadObject if what it wrote is not an ELF object.
    """
    cmd = without_lto(cmd)
    out_dir = out_dir.absolute()  # the compiler runs elsewhere
    out_dir.mkdir(parents=True, exist_ok=True)
    object_path = out_dir / f"{cmd.source.stem}.o"
    depfile = out_dir / f"{cmd.source.stem}.d"
    argv = [
        cmd.compiler,
        *cmd.flags,
        *extra_flags(cmd.flags),
        "-MMD",
        "-MF",
        str(depfile),
        "-c",
        cmd.source_argument,
        "-o",
        str(object_path),
    ]
    # A stale object must never pass for the result of a failed compile.
    object_path.unlink(missing_ok=True)
    depfile.unlink(missing_ok=True)

    start = time.perf_counter()
    proc = _run(argv, cmd, on_wait, interval)
    milliseconds = (time.perf_counter() - start) * 1000.0

    if proc.returncode != 0:
        raise CompileError(
            _error_summary(proc.stderr, cmd.compiler, proc.returncode),
            COMPILE_ERROR_HINT,
            details=proc.stderr,
        )
    _check_object(object_path, cmd.compiler)
    dependencies: tuple[Path, ...] = ()
    if depfile.is_file():
        dependencies = tuple(read_dependencies(depfile, directory=cmd.directory))
    return CompileResult(
        object_path=object_path,
        command=argv,
        milliseconds=milliseconds,
        warnings=proc.stderr,
        depfile=depfile if depfile.is_file() else None,
        dependencies=dependencies,
    )


def extra_flags(flags: Sequence[str]) -> tuple[str, ...]:
    """The flags relive adds after ``flags``: section per symbol, and -g if needed."""
    extra: list[str] = []
    if not _has_debug_info(flags):
        # Debug info does not change generated code, and it lets messages name
        # source lines of the new code.
        extra.append("-g")
    extra.extend(f for f in SECTION_FLAGS if f not in flags)
    return tuple(extra)


def _has_debug_info(flags: Sequence[str]) -> bool:
    on = False
    for flag in flags:
        match = _DEBUG_LEVEL.fullmatch(flag)
        if match:
            on = match.group(1) != "0"
    return on


def _run(
    argv: list[str], cmd: CompileCommand, on_wait: Callable[[], None] | None, interval: float
) -> subprocess.CompletedProcess[str]:
    if not cmd.directory.is_dir():
        raise ReliveError(
            f"cannot compile {cmd.source.name}: its build directory {cmd.directory} does not exist",
            "pass --cflags to compile it from here, or regenerate compile_commands.json",
        )
    # Error lines are found by their English "error:"; other message catalogues
    # would hide them.  Only messages change: LC_CTYPE (the input charset) stays.
    env = dict(os.environ, LC_MESSAGES="C")
    env.pop("LANGUAGE", None)
    nice = compile_nice()
    try:
        with started_in_background():
            compiler = subprocess.Popen(
                argv,
                cwd=cmd.directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                process_group=0 if nice else None,  # see relive.toolchain.priority
            )
    except FileNotFoundError as e:
        raise ReliveError(f"compiler not found: {cmd.compiler}", NO_COMPILER_HINT) from e
    except PermissionError as e:
        raise ReliveError(
            f"cannot run the compiler {cmd.compiler}: {e.strerror}", NO_COMPILER_HINT
        ) from e
    lower_priority(compiler.pid, nice)
    with compiler:
        try:
            while True:
                try:
                    stdout, stderr = compiler.communicate(timeout=interval)
                    break
                except subprocess.TimeoutExpired:  # nothing is lost: communicate again
                    if on_wait is not None:
                        on_wait()
        except BaseException:
            compiler.kill()  # interrupted (Ctrl+C): no compiler left behind
            if nice:
                stop_group(compiler.pid)  # nor what it started (not in relive's group)
            raise
    return subprocess.CompletedProcess(argv, compiler.returncode, stdout, stderr)


def _error_summary(stderr: str, compiler: str, returncode: int) -> str:
    lines = [_ANSI_ESCAPE.sub("", line).strip() for line in stderr.splitlines()]
    for pattern in (_LOCATED_ERROR, _ANY_ERROR):
        for line in lines:
            if pattern.search(line):
                return line
    if returncode < 0:
        return f"{compiler} was killed by signal {-returncode}"
    return f"{compiler} failed with exit status {returncode}"


def _check_object(object_path: Path, compiler: str) -> None:
    try:
        with object_path.open("rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise CompileError(
            f"{compiler} reported success but wrote no {object_path.name}",
            "check the flags for options that stop before code generation",
        ) from None
    if magic != _ELF_MAGIC:
        raise BadObject(
            f"{compiler} wrote {object_path.name}, which is not an ELF object",
            "remove -emit-llvm or similar options from the flags",
        )


# --- dependency files --------------------------------------------------------


def read_dependencies(depfile: Path, *, directory: Path | None = None) -> list[Path]:
    """Return the prerequisites listed in a make-format dependency file.

    Handles several rules (as -MP writes), backslash-newline continuations and
    make's escapes (``\\ `` for a space, ``\\#``, ``$$``).  Each path appears once,
    in file order.  Relative paths are joined to ``directory`` (the compiler's
    working directory) when it is given.  Raises ReliveError if the file cannot
    be read.
    """
    try:
        text = depfile.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as e:
        raise ReliveError(
            f"cannot read dependency file {depfile}: {e.strerror}",
            "compile the file again",
        ) from e
    seen: dict[str, None] = {}
    for _targets, prerequisites in _iter_rules(text):
        for name in prerequisites:
            seen.setdefault(name, None)
    paths = [Path(name) for name in seen]
    if directory is not None:
        paths = [Path(os.path.normpath(directory / p)) for p in paths]
    return paths


def _iter_rules(text: str) -> Iterator[tuple[list[str], list[str]]]:
    # A continuation is just more of the same logical line.
    text = re.sub(r"\\\r?\n", " ", text)
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        words, colon_at = _split_rule(line)
        if colon_at is not None:
            yield words[:colon_at], words[colon_at:]


def _split_rule(line: str) -> tuple[list[str], int | None]:
    words: list[str] = []
    current: list[str] = []
    colon_at: int | None = None

    def flush() -> None:
        if current:
            words.append("".join(current))
            current.clear()

    i, n = 0, len(line)
    while i < n:
        char = line[i]
        nxt = line[i + 1] if i + 1 < n else ""
        if char == "\\" and nxt in (" ", "\t", "#", ":"):
            current.append(nxt)
            i += 2
            continue
        if char == "$" and nxt == "$":
            current.append("$")
            i += 2
            continue
        if char in " \t":
            flush()
        elif char == ":" and colon_at is None and nxt in ("", " ", "\t"):
            # The rule's separator; a colon inside a word belongs to the name.
            flush()
            colon_at = len(words)
        else:
            current.append(char)
        i += 1
    flush()
    return words, colon_at

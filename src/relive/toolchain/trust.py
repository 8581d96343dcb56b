"""Never run code another user chose: screen recorded flags, check who owns the build.

relive often runs as root on another user's program.  Whatever that user
controls must not decide what root executes:

* flags recorded in the program's DWARF are the program owner's words: only
  options that shape the generated code pass (``-O``, ``-f``, ``-m``, ``-std``,
  ``-g``, ``--param``, and the preprocessor's ``-D/-U/-I/-include``); plugins,
  other tool directories (``-B``), spec files, wrappers, sysroots, response files
  and options that write files are dropped, with a notice;
* a compile_commands.json, or the compiler a command names, that a user other
  than relive's (or root) owns or that group/others may write, is refused unless
  the user says ``--trust-build``: its commands would run with relive's rights.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from relive.errors import ReliveError
from relive.toolchain.arguments import OPTIONS_WITH_VALUE

__all__ = ["UntrustedBuild", "check_trusted_file", "find_untrusted_reason", "screen_flags"]

TRUST_HINT = "--trust-build"

#: Options whose value is the next argument and that may pass the screen.
_KEEP_WITH_VALUE = frozenset(
    {"-D", "-U", "-I", "-include", "-isystem", "-iquote", "-idirafter", "--param"}
)
_KEEP_PREFIXES = (
    "-O", "-f", "-m", "-std=", "-g", "--param=", "-D", "-U", "-I", "-isystem",
    "-iquote", "-idirafter", "-include",
)  # fmt: skip
_KEEP_EXACT = frozenset({"-ansi", "-p", "-pg", "-pthread", "-w", "-pedantic"})
#: Code-generation-looking options that load code, name other tools or write files.
_DENY_PREFIXES = (
    "-fplugin", "-fpass-plugin", "-fdump-", "-fprofile-", "-fauto-profile",
    "-fcallgraph-info", "-fstack-usage", "-fsave-optimization-record",
    "-foptimization-record", "-fopt-info", "-fcrash-diagnostics", "-ftime-trace",
    "-fproc-stat-report", "-fuse-ld", "-fmodule", "-fprebuilt-module",
    "-fsanitize-ignorelist", "-fsanitize-blacklist", "-fxray-", "-fcompare-debug",
    "-mllvm", "-imacros", "-include-pch", "-iprefix", "-iwithprefix",
)  # fmt: skip


def screen_flags(flags: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split flags from an untrusted record into (kept, dropped).

    Kept are the code-shaping options listed in the module docstring; an ``-f``
    or ``-m`` option whose value names a path is dropped too (it reads or writes
    files the program's owner chose).
    """
    kept: list[str] = []
    dropped: list[str] = []
    i = 0
    while i < len(flags):
        flag = flags[i]
        if flag in OPTIONS_WITH_VALUE and i + 1 < len(flags):
            # The value goes with its option: "-Xclang -load" is not "-load".
            (kept if flag in _KEEP_WITH_VALUE else dropped).extend(flags[i : i + 2])
            i += 2
            continue
        (kept if _is_safe(flag) else dropped).append(flag)
        i += 1
    return tuple(kept), tuple(dropped)


def _is_safe(flag: str) -> bool:
    if flag.startswith(_DENY_PREFIXES):
        return False
    if flag in _KEEP_EXACT:
        return True
    if not flag.startswith(_KEEP_PREFIXES):
        return False
    names_a_path = "/" in flag.partition("=")[2]
    return not (flag.startswith(("-f", "-m")) and names_a_path)


class UntrustedBuild(ReliveError):
    """A build file or compiler that another user controls would run with relive's rights."""


def check_trusted_file(path: Path, role: str) -> None:
    """Raise UntrustedBuild when a user other than relive's (or root) controls ``path``.

    ``role`` says what the file is for in the message ("compile_commands.json",
    "the compiler").
    """
    reason = find_untrusted_reason(path)
    if reason is not None:
        who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
        raise UntrustedBuild(
            f"refusing {role} {path}: {reason}, and relive runs as {who}: "
            "that user would choose what relive executes",
            hint=f"check it, then pass {TRUST_HINT}; or pass --cflags",
        )


def find_untrusted_reason(path: Path) -> str | None:
    """Why ``path`` (the file and every folder above it, before and after symlinks)
    is controlled by another user; None when only relive's user and root control it."""
    absolute = Path(os.path.abspath(path))
    real = Path(os.path.realpath(absolute))
    # A symlink on the way is the file too: whoever owns it can point it elsewhere
    # between this check and the use (a link in a sticky folder such as /tmp).
    for link in (absolute, *absolute.parents):
        with contextlib.suppress(OSError):
            st = os.lstat(link)
            if stat.S_ISLNK(st.st_mode) and st.st_uid not in (os.geteuid(), 0):
                return f"the symlink {link} on its path belongs to uid {st.st_uid}"
    for candidate, is_file in _iter_controlling(absolute, real):
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        reason = _control_reason(candidate, st, is_file)
        if reason is not None:
            return reason
    return None


def _iter_controlling(absolute: Path, real: Path) -> Iterator[tuple[Path, bool]]:
    yield real, True
    seen: set[Path] = set()
    for path in (absolute, real):
        for folder in path.parents:
            if folder not in seen:
                seen.add(folder)
                yield folder, False


def _control_reason(path: Path, st: os.stat_result, is_file: bool) -> str | None:
    trusted = (os.geteuid(), 0)
    what = "it" if is_file else f"its folder {path}"
    if st.st_uid not in trusted:
        return f"{what} belongs to uid {st.st_uid}"
    sticky = not is_file and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
    if st.st_mode & 0o022 and not sticky:
        return f"{what} is writable by group or others (mode {st.st_mode & 0o777:o})"
    return None


def find_compiler(compiler: str, directory: Path) -> Path | None:
    """The file a compiler name runs (PATH lookup, or relative to ``directory``)."""
    if "/" in compiler:
        candidate = directory / compiler
        return candidate if candidate.is_file() else None
    found = shutil.which(compiler)
    return Path(found) if found else None

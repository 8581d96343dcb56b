"""``relive doctor``: check what a reload needs, each with its verdict and the fix.

Checks are reported as ``CheckResult`` events (verdict "ok", "warn", "fail" or
"skip").  Without a pid only the machine is checked (ptrace policy, compilers);
with one, also the program: a real stop-and-release of its threads, its
symbols and debug info, where each source's compile flags come from, and
whether /proc/PID/mem opens for writing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from relive.elf.dwarf import CompileUnit, iter_compile_units
from relive.errors import ReliveError
from relive.events import CheckResult, Verdict
from relive.patch.modules import RunningModule, get_main_module, load_running_modules
from relive.process import permissions
from relive.process.memory import ProcessMemory
from relive.process.threads import StoppedProcess
from relive.toolchain.command import ORIGIN_COMPDB, ORIGIN_DWARF
from relive.toolchain.producer import parse_producer
from relive.watch.sources import compile_command_for, find_units

__all__ = ["run_checks"]

_BUILD_FIX = (
    "write a compile_commands.json: `bear -- make`, or CMake with "
    "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON"
)
#: Sources listed one by one; more are summarised.
_MAX_SOURCES = 20


def run_checks(pid: int | None) -> Iterator[CheckResult]:
    """Every check, in order; a check that cannot run says why (verdict "skip")."""
    yield from _check_ptrace_policy()
    if pid is not None:
        yield from _check_target_ptrace(pid)
    try:
        modules = load_running_modules(pid) if pid is not None else []
        main = get_main_module(modules) if modules else None
    except ReliveError as error:
        yield CheckResult("program", Verdict.FAIL, error.message, error.hint)
        return
    yield from _check_compilers(modules)
    if pid is None or main is None:
        yield CheckResult(
            "program", Verdict.SKIP, "no process given", "pass -p PID to check a program"
        )
        return
    yield from _check_debug_info(main, modules)
    yield from _check_flags(modules)
    yield _check_memory(pid)


# -- ptrace --------------------------------------------------------------------


def _check_ptrace_policy() -> Iterator[CheckResult]:
    scope = permissions.read_yama_scope()
    capable = permissions.has_cap_sys_ptrace()
    if scope is None or scope == 0:
        detail = "Yama is not active" if scope is None else "Yama ptrace_scope is 0"
        yield CheckResult(
            "ptrace scope", Verdict.OK, f"{detail}: processes of the same user may attach"
        )
    elif scope == 3:
        block = permissions.find_yama_block(scope)
        assert block is not None
        yield CheckResult("ptrace scope", Verdict.FAIL, block.message, block.hint)
    elif capable:
        yield CheckResult(
            "ptrace scope",
            Verdict.OK,
            f"Yama ptrace_scope is {scope}, and relive has CAP_SYS_PTRACE",
        )
    else:
        block = permissions.find_yama_block(scope)
        why = block.message if block else f"Yama ptrace_scope is {scope}"
        yield CheckResult(
            "ptrace scope",
            Verdict.WARN if scope == 1 else Verdict.FAIL,
            f"{why}; `relive run` still works (it starts the program itself)",
            block.hint if block else "",
        )
    if os.geteuid() == 0 and not capable:
        missing = permissions.find_missing_capability()
        assert missing is not None
        yield CheckResult("ptrace capability", Verdict.FAIL, missing.message, missing.hint)
    else:
        who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
        has = "has" if capable else "does not need"
        yield CheckResult(
            "ptrace capability", Verdict.OK, f"relive runs as {who} and {has} CAP_SYS_PTRACE"
        )


def _check_target_ptrace(pid: int) -> Iterator[CheckResult]:
    try:
        other = permissions.find_other_tracer(pid) or permissions.find_other_user(pid)
    except ReliveError as error:
        yield CheckResult("ptrace attach", Verdict.FAIL, error.message, error.hint)
        return
    if other is not None:
        yield CheckResult("ptrace attach", Verdict.FAIL, other.message, other.hint)
        return
    try:
        with StoppedProcess.stop_all(pid) as stopped:
            threads = len(stopped.tids)
            stopped_us = stopped.stopped_seconds * 1e6
    except ReliveError as error:
        yield CheckResult("ptrace attach", Verdict.FAIL, error.message, error.hint)
        return
    yield CheckResult(
        "ptrace attach",
        Verdict.OK,
        f"stopped and released all {threads} thread{'s' if threads != 1 else ''} "
        f"of pid {pid} ({stopped_us:.0f} µs); no other tracer",
    )


# -- compilers -------------------------------------------------------------------


def _version(compiler: str) -> str:
    try:
        proc = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.splitlines()[0] if proc.stdout else ""


def _families(modules: list[RunningModule]) -> set[str]:
    families: set[str] = set()
    for module in modules:
        for unit in _units_of(module):
            family, _ = parse_producer(unit.producer or "")
            if family:
                families.add(family)
    return families


def _check_compilers(modules: list[RunningModule]) -> Iterator[CheckResult]:
    found = {name: shutil.which(name) for name in ("gcc", "clang")}
    needed = _families(modules) or {"gcc"}
    for family in sorted(needed):
        path = found.get(family)
        if path:
            yield CheckResult(f"compiler {family}", Verdict.OK, f"{path}: {_version(path)}")
        else:
            what = "the program was built with it" if modules else "relive's default compiler"
            yield CheckResult(
                f"compiler {family}",
                Verdict.FAIL,
                f"{family} not found on PATH ({what})",
                f"install {family} (e.g. `apt-get install {family}`)",
            )


# -- the program -------------------------------------------------------------------


def _units_of(module: RunningModule) -> list[CompileUnit]:
    try:
        return list(iter_compile_units(module.file))
    except ReliveError:
        return []


def _check_debug_info(main: RunningModule, modules: list[RunningModule]) -> Iterator[CheckResult]:
    if not main.image.has_symtab:
        yield CheckResult(
            "symbols",
            Verdict.FAIL,
            f"{main.name} is stripped: relive cannot find its functions and variables",
            "run an unstripped build (no -s, no `strip`); keep a copy before stripping",
        )
    else:
        yield CheckResult("symbols", Verdict.OK, f"{main.name} has its symbol table")
    units = _units_of(main)
    if not units:
        yield CheckResult(
            "debug info",
            Verdict.WARN,
            f"{main.name} has no DWARF: its sources and flags are unknown "
            "(relive compiles with gcc -g -O0 unless told otherwise)",
            "build with -g, or give the flags: --cflags or compile_commands.json",
        )
        return
    missing = [u.path for u in units if not os.path.isfile(u.path)]
    libraries = sum(1 for m in modules if not m.is_main and _units_of(m))
    detail = f"{main.name}: {len(units)} compile units"
    if libraries:
        detail += f"; {libraries} loaded librar{'ies' if libraries != 1 else 'y'} with DWARF"
    yield CheckResult("debug info", Verdict.OK, detail)
    if missing:
        yield CheckResult(
            "sources",
            Verdict.WARN,
            f"{len(missing)} source(s) named in the debug info are not on disk, e.g. {missing[0]}",
            "run relive where the program was built, or name the files explicitly",
        )


def _check_flags(modules: list[RunningModule]) -> Iterator[CheckResult]:
    units = find_units(modules)
    for count, (source, unit) in enumerate(sorted(units.items())):
        if count == _MAX_SOURCES:
            yield CheckResult("flags", Verdict.SKIP, f"... and {len(units) - count} more sources")
            return
        yield _check_source_flags(source, unit)


def _check_source_flags(source: Path, unit: CompileUnit) -> CheckResult:
    name = f"flags {source.name}"
    try:
        command = compile_command_for(source, unit, None, None)
    except ReliveError as error:
        return CheckResult(name, Verdict.FAIL, error.message, error.hint)
    flags = " ".join(command.flags)
    if command.origin == ORIGIN_COMPDB:
        return CheckResult(
            name, Verdict.OK, f"from compile_commands.json: {command.compiler} {flags}"
        )
    if command.origin == ORIGIN_DWARF:
        return CheckResult(
            name,
            Verdict.WARN,
            f"from DWARF only ({command.compiler} {flags}): no -D/-I recorded, "
            "a missing -D can silently change the code",
            _BUILD_FIX,
        )
    return CheckResult(
        name, Verdict.WARN, f"unknown, the default is used: {command.compiler} {flags}", _BUILD_FIX
    )


def _check_memory(pid: int) -> CheckResult:
    try:
        ProcessMemory(pid).close()
    except ReliveError as error:
        return CheckResult("/proc/PID/mem", Verdict.FAIL, error.message, error.hint)
    if _force_override() == "never":
        return CheckResult(
            "/proc/PID/mem",
            Verdict.WARN,
            f"/proc/{pid}/mem opens for writing, but proc_mem.force_override=never: "
            "code is written with PTRACE_POKEDATA instead (slower, still works)",
        )
    return CheckResult(
        "/proc/PID/mem", Verdict.OK, f"/proc/{pid}/mem opens for reading and writing"
    )


def _force_override() -> str:
    try:
        words = Path("/proc/cmdline").read_text().split()
    except OSError:
        return ""
    for word in words:
        if word.startswith("proc_mem.force_override="):
            return word.partition("=")[2]
    return ""

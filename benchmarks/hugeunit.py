"""The sqlite3-sized unit of ``make bench``: relive's own time and memory on a big file.

A 250k-line, 10,000-function translation unit (``targets.build_huge``) is linked
into the stall meter; a fresh target is reloaded twice from prebuilt objects at the
same path (so the second reload is compared with the first, as ``watch`` does):
first with ``compute()`` changed, then with one more function changed.  Measured
per reload: relive's own phases from ``--timings`` (there is no compile: prebuilt
objects), relive's peak resident memory (``ru_maxrss`` of the command) and the
command's CPU time (on a loaded machine the wall time is mostly a wait for a CPU).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import targets
from figures import median, read_reload

#: The phases of ``--timings`` that are relive's own work (compile excluded).
OWN_PHASES = ("attach", "link", "types", "patch")


def _run_measured(argv: list[str]) -> tuple[str, float, float, float]:
    """Run ``argv``; its stdout, wall time (ms), peak resident memory (MB) and CPU
    time (ms: user + system, the command's own process; on a loaded machine the
    wall time mostly measures the wait for a CPU)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall_ms = (time.monotonic() - started) * 1e3
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text = out.read()
        if proc.returncode != 0:
            raise RuntimeError(f"{argv} failed ({proc.returncode}):\n{text[-2000:]}{err.read()}")
    return text, wall_ms, usage.ru_maxrss / 1024, (usage.ru_utime + usage.ru_stime) * 1e3


def _reload(relive: str, pid: int, path: Path, expected: int) -> dict[str, float]:
    text, wall_ms, peak_mb, cpu_ms = _run_measured(
        [relive, "--json", "reload", "--timings", "-p", str(pid), str(path)]
    )
    figures: dict[str, float] = {"wall_ms": wall_ms, "peak_mb": peak_mb, "cpu_ms": cpu_ms}
    report = read_reload(text)
    figures.update({f"{phase}_ms": ms for phase, ms in report.phases_ms.items()})
    if report.stopped_ms is not None:
        figures["held_ms"] = report.stopped_ms
    if report.redirected != expected:
        raise RuntimeError(f"expected {expected} redirected functions, got {report.redirected}")
    figures["own_ms"] = sum(figures.get(f"{p}_ms", 0.0) for p in OWN_PHASES)
    return figures


def run_once(
    relive: str, huge: targets.HugeTarget, meter_class: Any, scratch: Path
) -> dict[str, float]:
    """One fresh target, reloaded twice; figures prefixed ``first_`` and ``next_``."""
    meter = meter_class(huge.target.exe)
    try:
        path = scratch / "huge.o"
        shutil.copy(huge.target.prebuilt, path)
        first = _reload(relive, meter.pid, path, len(huge.target.changed))
        meter.wait_for("NEW")
        shutil.copy(huge.next_prebuilt, path)
        later = _reload(relive, meter.pid, path, len(huge.next_changed))
        meter.wait_for("NEW")
    finally:
        meter.close()
    figures = {f"first_{k}": v for k, v in first.items()}
    figures.update({f"next_{k}": v for k, v in later.items()})
    return figures


def report_rows(summary: dict[str, Any]) -> list[tuple[str, float | None, float, str]]:
    """(label, median, goal, unit) rows for the targets table."""
    med = functools.partial(median, summary)
    return [
        ("huge unit, first reload: relive's phases (huge.o)", med("first_own_ms"), 1000.0, "ms"),
        ("huge unit, next reload: relive's phases (huge.o)", med("next_own_ms"), 500.0, "ms"),
        ("huge unit: relive's peak memory (first reload)", med("first_peak_mb"), 60.0, "MB"),
        ("huge unit: relive's peak memory (next reload)", med("next_peak_mb"), 60.0, "MB"),
    ]


def print_table(summary: dict[str, Any], lines: int, functions: int, runs: int) -> None:
    """The figures of the huge unit, per reload."""
    print(f"\nhuge.o: {lines:,}-line unit of {functions:,} functions ({runs} runs)")
    print(f"  {'':30} {'first':>10} {'next':>10}")
    for key in (*OWN_PHASES, "own", "held", "wall", "cpu"):
        first = summary.get(f"first_{key}_ms", {}).get("median")
        later = summary.get(f"next_{key}_ms", {}).get("median")
        if first is None and later is None:
            continue
        label = {"own": "relive's phases", "cpu": "CPU of the command"}.get(key, key)
        print(f"  {label + ' (ms)':30} {first or 0:>10.1f} {later or 0:>10.1f}")
    first = summary.get("first_peak_mb", {}).get("median", 0.0)
    later = summary.get("next_peak_mb", {}).get("median", 0.0)
    print(f"  {'peak memory (MB)':30} {first:>10.1f} {later:>10.1f}")

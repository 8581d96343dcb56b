"""Time the DWARF type and layout check of a reload (issue 10 §1), in-process.

    .venv/bin/python benchmarks/layout_check.py -p PID OBJECT.o [--source FILE.c] [--runs 5]

Plans a dry-run reload of OBJECT.o into the running process PID and reports how
long ``check_layouts`` took (wall and CPU time, medians).  With ``--source`` the
running module's unit of FILE.c is read first, as ``relive reload FILE.c`` does
while the compiler runs; without it the check reads both units itself.  Caches
are cleared between runs.  CPU time is the fairer figure on a busy machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import relive
import relive.elf.dwarf_types as dwarf_types
import relive.patch.layout_check as layout_check
import relive.patch.planning as planning
from relive.patch.modules import load_running_modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--pid", type=int, required=True)
    parser.add_argument("object", type=Path)
    parser.add_argument("--source", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    walls: list[float] = []
    cpus: list[float] = []
    original = layout_check.check_layouts

    def timed(*a: Any, **k: Any) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            original(*a, **k)
        finally:
            walls.append((time.perf_counter() - wall) * 1000)
            cpus.append((time.process_time() - cpu) * 1000)

    setattr(planning, "check_layouts", timed)  # noqa: B010 (planning imported it by name)
    redirected = 0
    for _ in range(args.runs):
        dwarf_types._cache.clear()
        if args.source is not None:
            layout_check.prepare_layout_check(load_running_modules(args.pid)[0], args.source)
            for thread in list(layout_check._warming):
                thread.join()  # the compiler usually takes longer than this
        result = relive.attach(args.pid).reload([args.object], dry_run=True)
        redirected = len(result.redirected)
    print(
        f"{args.object.name}: {redirected} redirected; check_layouts median "
        f"{statistics.median(walls):.1f} ms wall (range {min(walls):.1f}-{max(walls):.1f}), "
        f"{statistics.median(cpus):.1f} ms CPU (range {min(cpus):.1f}-{max(cpus):.1f})"
    )


if __name__ == "__main__":
    main()

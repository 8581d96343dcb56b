"""What the program was built from: which units changed on disk since its build.

The baseline of a watch is not the moment it started but the build the program
runs: a source (or a header it includes) saved after its module was built is
pending from the start, like make's rule (newer than the target), and stays
pending until a reload applies it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from relive.patch.modules import RunningModule
from relive.watch.deps import DependencyMap
from relive.watch.sources import find_units


def build_times(modules: Sequence[RunningModule]) -> dict[Path, float]:
    """When each unit's module was built (the mapped file's mtime), by real source path."""
    out: dict[Path, float] = {}
    for module in modules:
        try:
            built = os.stat(module.file).st_mtime
        except OSError:
            continue
        for unit in find_units([module]):
            out.setdefault(unit, built)
    return out


def changed_since_build(
    units: Iterable[Path], deps: DependencyMap, built: dict[Path, float]
) -> list[Path]:
    """The units whose source or an included file is newer than their module."""
    pending = []
    for unit in units:
        at = built.get(unit)
        if at is not None and any(_newer(f, at) for f in {unit, *deps.dependencies(unit)}):
            pending.append(unit)
    return sorted(pending)


def _newer(path: Path, than: float) -> bool:
    try:
        return os.stat(path).st_mtime > than
    except OSError:
        return False

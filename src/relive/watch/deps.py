"""Which translation units read which files: a saved header reloads the units that include it.

The map is filled twice over:

* when watching starts, by running the compiler's preprocessor on each unit
  with ``-MM`` (the unit's own compile flags; no code is generated, so this
  costs a few milliseconds per unit and runs in parallel);
* after every reload, from the dependency file of the real compile
  (``CompileResult.dependencies``, kept in ``Session.dependencies``),
  so a newly added ``#include`` is watched from then on.

System headers are left out (``-MM``/``-MMD``): they do not change under an edit.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from relive.errors import ReliveError
from relive.statedir import scratch_dir
from relive.toolchain.command import CompileCommand
from relive.toolchain.compiler import read_dependencies
from relive.watch.paths import real_path

__all__ = ["DependencyMap", "scan_all", "scan_dependencies"]

#: A dependency scan taking longer than this is abandoned (the unit still reloads).
SCAN_TIMEOUT_S = 30.0


class DependencyMap:
    """Units and the files each one reads (always including itself)."""

    def __init__(self) -> None:
        self._deps: dict[Path, frozenset[Path]] = {}
        self._users: dict[Path, set[Path]] = {}

    def record(self, unit: Path, files: Iterable[Path]) -> None:
        """Record that ``unit`` reads ``files`` (replacing what was known)."""
        for old in self._deps.get(unit, ()):
            users = self._users.get(old)
            if users is not None:
                users.discard(unit)
                if not users:
                    del self._users[old]
        deps = frozenset({unit, *(real_path(f) for f in files)})
        self._deps[unit] = deps
        for path in deps:
            self._users.setdefault(path, set()).add(unit)

    def units(self) -> list[Path]:
        """Every unit, sorted."""
        return sorted(self._deps)

    def files(self) -> set[Path]:
        """Every file some unit reads."""
        return set(self._users)

    def units_using(self, path: Path) -> set[Path]:
        """The units that read ``path`` (a real path); empty if none."""
        return set(self._users.get(path, ()))

    def dependencies(self, unit: Path) -> frozenset[Path]:
        """The files ``unit`` reads (itself included)."""
        return self._deps.get(unit, frozenset({unit}))


def scan_dependencies(cmd: CompileCommand) -> list[Path] | None:
    """The non-system files ``cmd.source`` includes, from the preprocessor; None on failure.

    A unit that does not preprocess (say it is mid-edit) gives None; its real
    dependencies are learnt from its first successful reload.
    """
    with scratch_dir() as scratch:
        depfile = scratch / "unit.d"
        argv = [cmd.compiler, *cmd.flags, "-MM", "-MF", str(depfile), cmd.source_argument]
        try:
            proc = subprocess.run(
                argv,
                cwd=cmd.directory,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=SCAN_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if proc.returncode != 0 or not depfile.is_file():
            return None
        try:
            return read_dependencies(depfile, directory=cmd.directory)
        except ReliveError:
            return None


def scan_all(
    commands: Mapping[Path, CompileCommand],
    scan: Callable[[CompileCommand], list[Path] | None] = scan_dependencies,
) -> dict[Path, list[Path] | None]:
    """``scan`` every unit's command, in parallel; unit -> its files (or None)."""
    if not commands:
        return {}
    workers = min(len(commands), os.cpu_count() or 2, 16)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="relive-deps") as pool:
        results = pool.map(scan, commands.values())
        return dict(zip(commands, results, strict=True))

"""Which processes a command acts on: ``-p PID``, ``-n NAME``, and ``--all``.

``-n NAME`` must name exactly one process unless ``--all`` is given; ``--all``
takes every process running the same executable file (the workers of a
pre-forking server), found by the identity (device, inode) of /proc/PID/exe.
Only /proc is read.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from relive.errors import ProcessGone, UsageError
from relive.process.procfs import PROC, check_alive, get_tgid, is_alive, iter_pids_by_name

__all__ = ["describe", "follow_executable", "resolve_pids"]

_Identity = tuple[int, int]


def _exe_identity(pid: int) -> _Identity | None:
    try:
        st = os.stat(PROC / str(pid) / "exe")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def describe(pid: int) -> str:
    """``pid (executable path and arguments)`` for messages: the full path tells apart
    programs that were all started as ``./prog``; long arguments are shortened."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return str(pid)
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    try:
        program = os.readlink(PROC / str(pid) / "exe")
    except OSError:
        program = argv[0] if argv else ""
    arguments = " ".join(argv[1:])
    if len(arguments) > 40:
        arguments = arguments[:37] + "..."
    text = f"{program} {arguments}".strip()
    return f"{pid} ({text})" if text else str(pid)


#: Other processes that are this command too, never a target found by name or
#: executable: the command server's child sets its client and the server here.
COMMAND_PIDS: set[int] = set()


def _is_command(pid: int) -> bool:
    return pid == os.getpid() or pid in COMMAND_PIDS


def _iter_same_executable(identity: _Identity) -> Iterator[int]:
    for entry in sorted((e for e in os.listdir(PROC) if e.isdigit()), key=int):
        pid = int(entry)
        if not _is_command(pid) and _exe_identity(pid) == identity and is_alive(pid):
            yield pid


def follow_executable(pid: int) -> Callable[[], list[int]]:
    """A function listing, each time it is called, the processes running the
    executable ``pid`` runs now (``watch --all`` follows workers forked later)."""
    identity = _exe_identity(pid)

    def running() -> list[int]:
        if identity is None:
            return []
        try:
            return list(_iter_same_executable(identity))
        except OSError:
            return []

    return running


def _by_name(name: str) -> list[int]:
    pids = [p for p in iter_pids_by_name(name) if not _is_command(p) and is_alive(p)]
    if not pids:
        raise ProcessGone(
            f"no process named {name}",
            hint="check the name with `pgrep -l NAME`, or pass -p PID",
        )
    return pids


def resolve_pids(pid: int | None, name: str | None, every: bool) -> list[int]:
    """The pids to act on; raises ProcessGone (none) or UsageError (ambiguous)."""
    if pid is not None:
        check_alive(pid)
        candidates = [get_tgid(pid)]  # a thread id names its process
    else:
        assert name is not None
        candidates = _by_name(name)
    if not every:
        if len(candidates) > 1:
            listing = ", ".join(describe(p) for p in candidates)
            raise UsageError(
                f"{len(candidates)} processes are named {name}: {listing}",
                hint="pass -p PID for one of them, or --all for every one",
            )
        return candidates
    groups: dict[_Identity | None, list[int]] = {}
    for candidate in candidates:
        groups.setdefault(_exe_identity(candidate), []).append(candidate)
    if len(groups) > 1:
        listing = "; ".join(", ".join(describe(p) for p in group) for group in groups.values())
        raise UsageError(
            f"processes named {name} run {len(groups)} different executables: {listing}",
            hint="--all reloads the processes of one executable: pass -p PID --all",
        )
    identity = next(iter(groups))
    pids = set(candidates)
    if identity is not None:
        with contextlib.suppress(OSError):
            pids.update(_iter_same_executable(identity))
    return sorted(pids)

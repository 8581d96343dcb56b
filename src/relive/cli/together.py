"""``reload --all``: the processes of one executable reloaded together.

The core (``relive.session.reload_together``) compiles once and switches the
processes back to back; here each process's events are held and printed after
its header, in the order of the pids, as if the processes had been reloaded one
after the other, each followed by its own error if it failed.
"""

from __future__ import annotations

from relive.cli.render import Renderer
from relive.errors import ReliveError
from relive.events import Event, TargetProcess
from relive.patch.options import ReloadOptions
from relive.process.procfs import get_process_name


def reload_processes(
    pids: list[int], files: list[str], options: ReloadOptions, out: Renderer
) -> int:
    """Reload ``files`` into every process of ``pids``; the first failure's exit code."""
    import relive
    from relive.session import Session, reload_together

    held: dict[int, list[Event]] = {pid: [] for pid in pids}
    names = {pid: _name(pid) for pid in pids}
    sessions: list[Session] = []
    failed: dict[int, ReliveError] = {}
    for pid in pids:
        try:
            sessions.append(relive.attach(pid, on_event=held[pid].append))
        except ReliveError as error:
            failed[pid] = error
    switched: list[Event] = []
    outcomes = reload_together(sessions, files, switched.append, options)
    for session, outcome in zip(sessions, outcomes, strict=True):
        if isinstance(outcome, ReliveError):
            failed[session.pid] = outcome
    code = 0
    for pid in pids:
        out(TargetProcess(pid, names[pid]))
        for event in held[pid]:
            out(event)
        if pid in failed:
            out.error(failed[pid], pid=pid)
            code = code or failed[pid].exit_code
    for event in switched:
        out(event)
    return code


def _name(pid: int) -> str:
    try:
        return get_process_name(pid)
    except ReliveError:
        return "?"

"""An epoll_wait interrupted by relive waits only for the time it had left.

The kernel fails epoll_wait/epoll_pwait with EINTR whenever a ptrace stop wakes
the thread; relive turns that into a restart on release (see
``Registers.make_interrupted_syscall_restart``), but a restart
re-enters the call with its original timeout: a 2 s wait interrupted after
1.6 s would last 3.6 s.  So before the threads are stopped, relive notes which
ones sit in such a wait and since when: ``se.exec_start`` in
/proc/PID/task/TID/sched is when the thread last ran, i.e. when it went to
sleep in the call, in the scheduler's clock; relive's own entry in the same
clock says what time it is now.  On release the restart gets the timeout
minus the time elapsed (at least 0: the call then reports its timeout).

Approximate by a scheduler tick at most (relive's own ``exec_start`` may lag
that much).  Without /proc/PID/task/TID/sched (a kernel without
CONFIG_SCHED_DEBUG), with epoll_pwait2 (its timeout is the program's memory),
or for a thread that entered its wait after the note was taken, the restart
keeps the full timeout.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

from relive.arch import host_registers
from relive.arch.base import RegisterBlock

_EXEC_START = "se.exec_start"


@dataclass(frozen=True)
class EpollWait:
    """A thread seen waiting in epoll_wait, and how long it had waited then."""

    epfd: int
    timeout_ms: int
    waited_ms: float
    seen_at: float  # time.monotonic() when it was seen


def note_epoll_waits(pid: int, tids: Iterable[int]) -> dict[int, EpollWait]:
    """The threads of ``tids`` waiting in epoll_wait with a timeout, and since when."""
    found: dict[int, EpollWait] = {}
    now_sched: float | None = None
    for tid in tids:
        call = _read_epoll_call(pid, tid)
        if call is None:
            continue
        slept_at = _read_exec_start(f"/proc/{pid}/task/{tid}/sched")
        if now_sched is None:
            now_sched = _read_exec_start("/proc/thread-self/sched")
        if slept_at is None or now_sched is None:
            continue
        epfd, timeout = call
        found[tid] = EpollWait(epfd, timeout, max(0.0, now_sched - slept_at), time.monotonic())
    return found


def shorten_restarted_wait(regs: RegisterBlock, wait: EpollWait | None) -> None:
    """Give the restart of the epoll wait in ``regs`` only the time it had left."""
    if wait is None or host_registers().epoll_wait_of(regs) != (wait.epfd, wait.timeout_ms):
        return  # not the call that was noted
    waited = wait.waited_ms + (time.monotonic() - wait.seen_at) * 1000
    host_registers().set_epoll_timeout(regs, math.ceil(wait.timeout_ms - waited))


def _read_epoll_call(pid: int, tid: int) -> tuple[int, int] | None:
    try:
        with open(f"/proc/{pid}/task/{tid}/syscall") as f:
            fields = f.read().split()
    except OSError:
        return None
    if not fields or not fields[0].isdigit():
        return None  # "running", or -1 (not in a syscall)
    try:
        args = [int(field, 16) for field in fields[1:7]]
    except ValueError:
        return None
    return host_registers().epoll_wait_call(int(fields[0]), args)


def _read_exec_start(path: str) -> float | None:
    """``se.exec_start`` (milliseconds, scheduler clock) from a sched file."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(_EXEC_START):
                    return float(line.rsplit(":", 1)[1])
    except (OSError, ValueError):
        return None
    return None

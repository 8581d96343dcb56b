"""The compiler's CPU priority: never above the program being reloaded.

A compile takes tens to thousands of milliseconds of CPU, on the cores the
program's own threads run on.  The compiler runs under ``SCHED_BATCH``: its
share of the CPU is unchanged (so is its compile time), but the scheduler
takes it for the background work it is, and its wake-ups do not preempt the
program's threads.  It may also run ``nice`` (``RELIVE_COMPILE_NICE``, 1-19;
unset or 0: not), which leaves the program's threads more of a core the
compiler competes for, at the price of compile time wherever cores are short:
on the project's loaded 2-core machine nice 10 made a small file's compile
about twice as long and nice 19 four to six times, and the stall the program
measured did not change within that load's noise; so the default is not to.

The compiler is started under ``SCHED_BATCH`` (the thread starting it takes that
policy for the moment it starts it: the compiler inherits it from the first
instruction on, and so does everything it starts); with a nice value it runs in
a process group of its own, given that value as soon as it started (whatever
it started by then included) and killed whole when a compile is interrupted.
Best effort: a compiler whose priority cannot be changed compiles as it is.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

__all__ = ["compile_nice", "lower_priority", "started_in_background", "stop_group"]

_VARIABLE = "RELIVE_COMPILE_NICE"


def compile_nice() -> int:
    """The nice value to give the compiler: ``RELIVE_COMPILE_NICE`` (0 to 19), else 0."""
    text = os.environ.get(_VARIABLE, "").strip()
    try:
        return max(0, min(19, int(text))) if text else 0
    except ValueError:
        return 0


@contextlib.contextmanager
def started_in_background() -> Iterator[None]:
    """Meanwhile, the calling thread (and what it starts) is under ``SCHED_BATCH``
    if it was under the normal policy; it is back under that policy afterwards."""
    try:
        normal = os.sched_getscheduler(0) == os.SCHED_OTHER
        if normal:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError:
        normal = False
    try:
        yield
    finally:
        if normal:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def lower_priority(group: int, nice: int) -> None:
    """Give process group ``group`` (the compiler's own) the nice value ``nice``
    (a group already nicer keeps its own); nothing for 0."""
    if nice > 0:
        with contextlib.suppress(OSError):
            if os.getpriority(os.PRIO_PGRP, group) < nice:
                os.setpriority(os.PRIO_PGRP, group, nice)


def stop_group(group: int) -> None:
    """Kill process group ``group`` (an interrupted compile): nothing of it is left."""
    with contextlib.suppress(OSError):
        os.killpg(group, signal.SIGKILL)

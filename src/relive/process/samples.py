"""Where a process's threads are, seen without stopping them.

``/proc/PID/task/TID/syscall`` gives the stack pointer and PC of a thread that
is blocked in a system call (and says "running" otherwise).  relive uses it
to guess, before it holds the threads, which functions they may be inside of,
so that only those are analysed; the decision itself is made while they are held.
"""

from __future__ import annotations

from relive.process.procfs import iter_thread_ids


def sample_positions(pid: int) -> list[tuple[int, int | None, int | None]]:
    """``(tid, pc, sp)`` per thread; ``(tid, None, None)`` when it is running or unknown."""
    found: list[tuple[int, int | None, int | None]] = []
    for tid in iter_thread_ids(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall", encoding="ascii") as handle:
                fields = handle.read().split()
        except OSError:
            fields = []
        if len(fields) >= 3 and fields[0] != "running":
            try:
                found.append((tid, int(fields[-1], 16), int(fields[-2], 16)))
                continue
            except ValueError:
                pass
        found.append((tid, None, None))
    return found

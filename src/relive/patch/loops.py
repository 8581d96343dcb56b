"""Refuse an entry jump that a running loop would jump into the middle of.

When a function's own branch goes back into the first bytes the entry jump
replaces (``main``'s loop at -O0 jumps to main+4; a -O1 worker loop starts
right after ``sub $8,%rsp``), a thread already inside the function would land
in the middle of the jump and crash.  Such a function is redirected only when
no thread is inside it: neither its PC nor a return address on its stack.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from relive.arch.base import Arch
from relive.errors import UnsafePatch
from relive.patch.active import iter_active_functions
from relive.process.memory import ProcessMemory
from relive.process.threads import StoppedProcess, stop_all

if TYPE_CHECKING:
    from relive.patch.entries import EntrySite


def refuse_running_loop_heads(
    pid: int, sites: Iterable[EntrySite], memory: ProcessMemory, arch: Arch
) -> None:
    """Raise UnsafePatch if a thread is inside a function whose loop re-enters its entry.

    Runs before anything is allocated or written.  Threads are held only to
    sample their PC and stack pointer; their stacks are scanned after release
    (the outer frames, where such loops live, do not move).  ``write_entries``
    checks again while it holds the threads for the jumps.
    """
    for name, tid in find_running_loop_heads(pid, sites, memory, arch):
        raise loop_head_refusal(name, tid)


def find_running_loop_heads(
    pid: int, sites: Iterable[EntrySite], memory: ProcessMemory, arch: Arch
) -> list[tuple[str, int]]:
    """``(function, tid)`` for each thread inside a function whose loop re-enters its
    entry; the threads are held only if there is such a function, to sample them."""
    looping = {s.decision.name: s.function for s in sites if s.loops_into_window()}
    if not looping:
        return []
    with stop_all(pid) as stopped:
        positions = list(stopped.iter_positions())
    return list(iter_active_functions(pid, memory, arch, looping, positions))


def loop_head_refusal(name: str, tid: int) -> UnsafePatch:
    """The error for a function whose running loop re-enters the bytes of its entry jump."""
    return UnsafePatch(
        f"{name} is running on thread {tid} and its loop jumps back into the first bytes "
        "the entry jump would replace: that thread would crash",
        hint=f"reload when no thread is inside {name}, or leave {name} as it is and "
        "reload the other functions with --function",
    )


def find_threads_in_loops(
    stopped: StoppedProcess,
    memory: ProcessMemory,
    arch: Arch,
    functions: dict[str, tuple[int, int]],
) -> list[tuple[int, str]]:
    """``(tid, name)`` for each held thread inside one of ``functions`` (PC or stack)."""
    if not functions:
        return []
    positions = list(stopped.iter_positions())
    found = iter_active_functions(stopped.pid, memory, arch, functions, positions)
    return [(tid, name) for name, tid in found]

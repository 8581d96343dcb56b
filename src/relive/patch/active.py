"""Which replaced functions are still running on some thread.

A thread inside a function keeps running its old code until that call
returns; a loop that never returns (``main``) never sees the new code.  The
user must hear that rather than "reloaded".  Threads are sampled while they
were held; their stacks are scanned after they run again (outer frames, the
ones that matter for long-running functions, have not moved).
"""

from __future__ import annotations

from collections.abc import Iterator

from relive.arch.base import Arch
from relive.errors import ReliveError
from relive.process.memory import ProcessMemory
from relive.process.procfs import Mapping, find_mapping, read_maps

#: How much of each stack to scan for return addresses.
STACK_SCAN_BYTES = 256 * 1024


def iter_active_functions(
    pid: int,
    memory: ProcessMemory,
    arch: Arch,
    ranges: dict[str, tuple[int, int]],
    positions: list[tuple[int, int, int]],
) -> Iterator[tuple[str, int]]:
    """``(function name, tid)`` for each replaced function a thread is inside of.

    ``ranges`` maps names to the old code's ``[start, end)``.  A thread is
    inside when its PC is, or when a word on its stack is a return address
    (it follows a call instruction) into that range.
    """
    maps = read_maps(pid)
    for tid, pc, sp in positions:
        found = {name for name, (lo, hi) in ranges.items() if lo <= pc < hi}
        found |= _names_on_stack(memory, arch, maps, ranges, sp)
        for name in sorted(found):
            yield name, tid


def _names_on_stack(
    memory: ProcessMemory,
    arch: Arch,
    maps: list[Mapping],
    ranges: dict[str, tuple[int, int]],
    sp: int,
) -> set[str]:
    stack = find_mapping(maps, sp)
    if stack is None:
        return set()
    size = min(stack.end - sp, STACK_SCAN_BYTES) & ~7
    try:
        words = memory.read(sp & ~7, size)
    except ReliveError:  # the stack went away meanwhile: nothing on it
        return set()
    found: set[str] = set()
    low = min(lo for lo, _ in ranges.values())
    high = max(hi for _, hi in ranges.values())
    for offset in range(0, len(words), 8):
        value = int.from_bytes(words[offset : offset + 8], "little")
        if not low < value <= high:
            continue
        for name, (lo, hi) in ranges.items():
            if lo < value <= hi and name not in found and _follows_call(memory, arch, value):
                found.add(name)
    return found


def _follows_call(memory: ProcessMemory, arch: Arch, address: int) -> bool:
    try:
        return arch.follows_call(memory.read(address - 8, 8))
    except ReliveError:  # not readable: not a return address
        return False

"""Where to put new code: a free gap near the module, so 32-bit references reach."""

from __future__ import annotations

from collections.abc import Iterator

from relive.elf.constants import PAGE_SIZE
from relive.patch.modules import RunningModule
from relive.process.procfs import Mapping, find_free_gaps

_GUARD = PAGE_SIZE
#: Keep clear of the space above the heap: brk grows into it.
_HEAP_CLEARANCE = 1 << 30
_USER_END = 1 << 47


def page_round(size: int) -> int:
    """``size`` rounded up to whole pages."""
    return (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


def reach_bounds(module: RunningModule, size: int, reach: int, low_memory: bool) -> tuple[int, int]:
    """Lowest and highest start of a ``size``-byte range every byte of which is
    within ``reach`` of every byte of the module (below 2 GiB for ``low_memory``)."""
    low = max(module.end - reach + _GUARD, PAGE_SIZE * 16)
    high = min(module.start + reach - size - _GUARD, _USER_END - size)
    if low_memory:
        high = min(high, (1 << 31) - size - _GUARD)
    return low, high


def iter_candidate_addresses(
    maps: list[Mapping],
    module: RunningModule,
    size: int,
    reach: int,
    low_memory: bool,
    alignment: int = PAGE_SIZE,
) -> Iterator[int]:
    """Page-aligned addresses for a ``size``-byte block, nearest to the module first.

    Every byte of the block must be within ``reach`` of every byte of the
    module (entry jumps and PC-relative data references go both ways).  For a
    non-PIE executable absolute 32-bit references need the block below 2 GiB.
    """
    size = page_round(size)
    alignment = max(alignment, PAGE_SIZE)
    low, high = reach_bounds(module, size, reach, low_memory)
    heap_end = max((m.end for m in maps if m.path == "[heap]"), default=0)
    candidates: list[int] = []
    for start, end in find_free_gaps(maps):
        below = min(end, module.start) - size - _GUARD
        below -= below % alignment
        if max(start + _GUARD, low) <= below <= high:
            candidates.append(below)
        above = max(start + _GUARD, module.end + _GUARD, low)
        if heap_end and above < heap_end + _HEAP_CLEARANCE and start < heap_end + _HEAP_CLEARANCE:
            above = max(above, heap_end + _HEAP_CLEARANCE)
        above = -(-above // alignment) * alignment
        if above + size + _GUARD <= end and low <= above <= high:
            candidates.append(above)
    yield from sorted(set(candidates), key=lambda a: abs(a - module.start))

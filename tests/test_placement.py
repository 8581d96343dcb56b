"""Unit tests of patch.placement: where a new block may go, on synthetic memory maps."""

from __future__ import annotations

import random
import sys

import pytest

from relive.elf.constants import PAGE_SIZE
from relive.elf.image import ElfImage
from relive.patch.modules import RunningModule
from relive.patch.placement import iter_candidate_addresses, page_round
from relive.process.procfs import Mapping

GIB = 1 << 30
REACH = (1 << 31) - 1  # a rel32 jump's reach
IMAGE = ElfImage.open(sys.executable)  # any ELF file: placement only uses the extents


def _map(start: int, end: int, path: str = "") -> Mapping:
    return Mapping(start, end, "r-xp", 0, "00:00", 0, path)


def _module(start: int, end: int) -> RunningModule:
    return RunningModule("/bin/prog", "/bin/prog", IMAGE, start, start, end, is_main=True)


def _within_reach(address: int, size: int, module: RunningModule, reach: int) -> bool:
    """Every byte of the block reaches every byte of the module and back."""
    return address + size - module.start <= reach and module.end - address <= reach


def _free(address: int, size: int, maps: list[Mapping]) -> bool:
    """The block and a guard page either side overlap no mapping."""
    return all(address + size + PAGE_SIZE <= m.start or m.end + PAGE_SIZE <= address for m in maps)


def test_page_round() -> None:
    assert [page_round(n) for n in (0, 1, PAGE_SIZE, PAGE_SIZE + 1)] == [
        0,
        PAGE_SIZE,
        PAGE_SIZE,
        2 * PAGE_SIZE,
    ]


def test_candidates_are_nearest_first_below_and_above_the_module() -> None:
    module = _module(0x5555_5555_0000, 0x5555_5556_0000)
    maps = [_map(module.start, module.end, "/bin/prog"), _map(0x7F00_0000_0000, 0x7F00_0010_0000)]
    size = 3 * PAGE_SIZE + 5
    found = list(iter_candidate_addresses(maps, module, size, REACH, low_memory=False))
    # Right below the module and right above it, each a guard page away.
    assert found[:2] == sorted(
        [module.start - page_round(size) - PAGE_SIZE, module.end + PAGE_SIZE],
        key=lambda a: abs(a - module.start),
    )
    distances = [abs(a - module.start) for a in found]
    assert distances == sorted(distances)


def test_no_candidate_when_every_gap_is_out_of_reach() -> None:
    module = _module(0x4000_0000_0000, 0x4000_0010_0000)
    # Everything within 4 GiB either side is taken.
    maps = [_map(module.start - 4 * GIB, module.end + 4 * GIB)]
    assert list(iter_candidate_addresses(maps, module, PAGE_SIZE, REACH, low_memory=False)) == []


def test_a_block_too_big_for_any_gap_in_reach_has_no_candidate() -> None:
    module = _module(0x4000_0000_0000, 0x4000_0010_0000)
    maps = [
        _map(module.start - 4 * GIB, module.start - 16 * PAGE_SIZE),
        _map(module.start, module.end, "/bin/prog"),
        _map(module.end + 16 * PAGE_SIZE, module.end + 4 * GIB),
    ]
    small = list(iter_candidate_addresses(maps, module, 8 * PAGE_SIZE, REACH, low_memory=False))
    assert small and all(_free(a, 8 * PAGE_SIZE, maps) for a in small)
    assert list(iter_candidate_addresses(maps, module, 15 * PAGE_SIZE, REACH, False)) == []


def test_low_memory_keeps_the_block_below_2_gib() -> None:
    module = _module(0x40_0000, 0x60_0000)  # a non-PIE executable
    maps = [_map(module.start, module.end, "/bin/prog")]
    found = list(iter_candidate_addresses(maps, module, 5 * PAGE_SIZE, REACH, low_memory=True))
    assert found
    assert all(a + 5 * PAGE_SIZE <= 1 << 31 for a in found)
    assert all(a >= 16 * PAGE_SIZE for a in found)  # never near address 0


def test_space_above_the_heap_is_left_for_brk() -> None:
    module = _module(0x5555_5555_0000, 0x5555_5556_0000)
    heap = _map(module.end + 0x10_0000, module.end + 0x50_0000, "[heap]")
    maps = [_map(module.start, module.end, "/bin/prog"), heap]
    found = list(iter_candidate_addresses(maps, module, PAGE_SIZE, REACH, low_memory=False))
    above_heap = [a for a in found if a >= heap.end]
    assert above_heap and all(a >= heap.end + GIB for a in above_heap)


@pytest.mark.parametrize("alignment", [PAGE_SIZE, 1 << 16, 1 << 21])
def test_alignment_is_honoured(alignment: int) -> None:
    module = _module(0x5555_5555_1000, 0x5555_5556_3000)
    maps = [_map(module.start, module.end, "/bin/prog")]
    found = list(
        iter_candidate_addresses(maps, module, PAGE_SIZE, REACH, False, alignment=alignment)
    )
    assert found and all(a % alignment == 0 for a in found)


def _check_random_maps(seed: int) -> int:
    """Random maps around a module: every candidate is free, aligned and in reach."""
    rng = random.Random(seed)
    low = rng.random() < 0.3  # a non-PIE executable, low in memory
    top = 0x4000_0000 if low else 0x7000_0000_0000
    base = rng.randrange(0x40_0000, top) // PAGE_SIZE * PAGE_SIZE
    module = _module(base, base + rng.randrange(1, 4096) * PAGE_SIZE)
    maps = [_map(module.start, module.end, "/bin/prog")]
    for _ in range(rng.randrange(0, 60)):
        start = module.start + rng.randrange(-3 * GIB, 3 * GIB) // PAGE_SIZE * PAGE_SIZE
        if start > PAGE_SIZE * 16:
            maps.append(_map(start, start + rng.randrange(1, 1 << 14) * PAGE_SIZE))
    size = rng.randrange(1, 1 << 24)
    reach = rng.choice([REACH, GIB, 1 << 28])
    found = list(iter_candidate_addresses(maps, module, size, reach, low_memory=low))
    for address in found:
        assert address % PAGE_SIZE == 0
        assert _free(address, page_round(size), maps), hex(address)
        assert _within_reach(address, page_round(size), module, reach), hex(address)
        if low:
            assert address + page_round(size) <= 1 << 31
    assert len(found) == len(set(found))
    return len(found)


def test_every_candidate_is_free_aligned_and_in_reach() -> None:
    counts = [_check_random_maps(seed) for seed in range(200)]
    assert sum(1 for n in counts if n) > 150  # most maps leave room: the checks ran

"""What a forked child inherited: its parent's patches, rebuilt from its own memory.

A child of a patched process runs the jumps its parent had at fork time, but
relive never touched it, so it has no journal of its own.  Its journal is
rebuilt, not copied: every entry whose bytes in the child's memory differ
from the module file and hold an entry jump is a patch (original bytes from
the file, written bytes from memory), named and attributed to a source through
the nearest ancestor's journal.  What the parent did after the fork is not in
the child's memory and so not in its journal; what the parent undid after the
fork still is.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterator

from relive.arch import get_arch
from relive.arch.base import Arch
from relive.elf.image import ImageSymbol
from relive.errors import ReliveError
from relive.patch.arena import is_chunk_mapped
from relive.patch.journal import ArenaKind, EntryPatch, Journal, LoadedBlock, SourceRecord
from relive.patch.modules import RunningModule, load_running_modules
from relive.patch.original import check_same_build
from relive.process.memory import ProcessMemory
from relive.process.procfs import Mapping, get_start_time, read_maps, read_status

_MAX_GENERATIONS = 16
_CHUNK = 4096
_PF_X = 1


def iter_ancestors(pid: int) -> Iterator[tuple[int, int]]:
    """(pid, start time) of the parent, grandparent, ... up to init."""
    for _ in range(_MAX_GENERATIONS):
        try:
            pid = int(read_status(pid).get("PPid", "0"))
            if pid <= 1:
                return
            yield pid, get_start_time(pid)
        except (ReliveError, ValueError):
            return


def inherit_journal(pid: int, start_time: int, ancestor: Journal) -> Journal:
    """The journal of ``pid`` (relive never touched it), rebuilt from its memory.

    ``ancestor`` is the journal of the nearest ancestor relive patched; its
    patches name the modules to look at and the sources of what is found.
    """
    journal = Journal(pid=pid, start_time=start_time)
    maps = read_maps(pid)
    modules = load_running_modules(pid, maps)
    if not modules:
        return journal
    arch = get_arch(modules[0].image.machine)
    paths = {p.module for p in ancestor.patches.values()} | {modules[0].path}
    known = {(p.module, p.entry): p for p in ancestor.patches.values()}
    with ProcessMemory(pid) as memory:
        for module in modules:
            if module.path not in paths:
                continue
            for patch in _iter_entry_jumps(module, memory, arch):
                parent = known.get((patch.module, patch.entry))
                if parent is not None and parent.written == patch.written:
                    patch.source, patch.count, patch.updated = (
                        parent.source,
                        parent.count,
                        parent.updated,
                    )
                elif parent is not None:
                    patch.source = parent.source
                journal.patches[Journal.patch_key(patch.module, patch.entry)] = patch
        journal.regions = [r for r in ancestor.regions if _is_mapped(maps, r)]
        _inherit_arenas(journal, ancestor, maps)
        ranges = journal.relive_ranges()
        for key, patch in ancestor.patches.items():
            # Entries of functions relive itself loaded live in inherited regions.
            if key not in journal.patches and _holds(ranges, patch.entry):
                written = bytes.fromhex(patch.written)
                if memory.read(patch.entry, len(written)) == written:
                    journal.patches[key] = patch
    for key, record in ancestor.sources.items():
        kept = SourceRecord(generations=record.generations)
        kept.definitions = {
            n: d for n, d in record.definitions.items() if _holds(ranges, d.address)
        }
        # No fingerprints: the parent's may describe reloads made after the fork.
        if kept.definitions:
            journal.sources[key] = kept
    return journal


def find_entry_jumps(pid: int, modules: list[RunningModule]) -> tuple[list[EntryPatch], list[str]]:
    """Every entry jump in the code of ``modules`` (named, without a source), and the
    names of the modules whose file is not the build in memory (not compared)."""
    if not modules:
        return [], []
    arch = get_arch(modules[0].image.machine)
    found: list[EntryPatch] = []
    unchecked: list[str] = []
    with ProcessMemory(pid) as memory:
        for module in modules:
            try:
                found.extend(_iter_entry_jumps(module, memory, arch))
            except ReliveError:
                unchecked.append(module.name)
    return found, unchecked


def _inherit_arenas(journal: Journal, ancestor: Journal, maps: list[Mapping]) -> None:
    """The ancestor's arenas the child has, each chunk wholly in use.

    The child may run code the ancestor reclaimed (and forgot) after the fork:
    its own entry jumps may lead there.  So nothing of an inherited chunk is free
    in the child; its own reloads go to new space.
    """
    journal.arenas = [dataclasses.replace(c) for c in ancestor.arenas if is_chunk_mapped(maps, c)]
    for chunk in journal.arenas:
        whole, empty = [chunk.address, chunk.size], [chunk.address, 0]
        code = chunk.kind is ArenaKind.CODE
        journal.blocks.append(
            LoadedBlock(
                "", chunk.module, whole if code else empty, empty if code else whole, escaped=True
            )
        )


def _holds(regions: list[tuple[int, int]], address: int) -> bool:
    return any(start <= address < start + size for start, size in regions)


def _is_mapped(maps: list[Mapping], region: tuple[int, int]) -> bool:
    start, size = region
    return any(m.start <= start and start + size <= m.end for m in maps)


def _iter_entry_jumps(
    module: RunningModule, memory: ProcessMemory, arch: Arch
) -> Iterator[EntryPatch]:
    """Entry jumps in ``module``'s code: entries whose memory differs from the file."""
    functions = [f for f in module.image.iter_functions() if f.size]
    starts = [f.value for f in functions]
    for segment in module.image.load_segments:
        if not segment.flags & _PF_X or not segment.filesz:
            continue
        check_same_build(module, memory.read)
        on_disk = module.image.read_vaddr(segment.vaddr, segment.filesz)
        in_memory = memory.read(module.runtime(segment.vaddr), segment.filesz)
        seen: set[int] = set()
        for offset in _iter_differences(on_disk, in_memory):
            vaddr = segment.vaddr + offset
            index = bisect.bisect_right(starts, vaddr) - 1
            if index < 0 or functions[index].value in seen:
                continue
            function = functions[index]
            seen.add(function.value)
            found = _entry_patch(module, function, on_disk, in_memory, segment.vaddr, arch)
            if found is not None:
                yield found


def _entry_patch(
    module: RunningModule,
    function: ImageSymbol,
    on_disk: bytes,
    in_memory: bytes,
    base: int,
    arch: Arch,
) -> EntryPatch | None:
    at = function.value - base
    pad = arch.find_landing_pad_size(on_disk[at : at + 16])
    site = at + pad
    size = arch.entry_jump_size
    written = in_memory[site : site + size]
    address = module.runtime(base + site)
    target = arch.decode_entry_jump(address, written)
    if target is None or written == on_disk[site : site + size]:
        return None
    return EntryPatch(
        name=function.name,
        source="",
        module=module.path,
        entry=address,
        original=on_disk[site : site + size].hex(),
        written=written.hex(),
        target=target,
    )


def _iter_differences(a: bytes, b: bytes) -> Iterator[int]:
    """Offsets of the first differing byte of each differing 4 KiB chunk and run."""
    for chunk in range(0, len(a), _CHUNK):
        left, right = a[chunk : chunk + _CHUNK], b[chunk : chunk + _CHUNK]
        if left == right:
            continue
        previous = -2
        for i, (x, y) in enumerate(zip(left, right, strict=False)):
            if x != y:
                if i != previous + 1:
                    yield chunk + i
                previous = i

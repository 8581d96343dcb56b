"""The block of new memory a reload links its code into: mapped, written, protected,
and given back if the reload fails.

The block is mapped read+write within reach of the module, the linked code and
data are written while the program runs (nothing refers to the block yet), then
its code pages become read+execute: no page is ever writable and executable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from relive.arch.base import Arch
from relive.errors import LinkError, ReliveError
from relive.link import Bound, LinkedImage, link
from relive.patch.placement import iter_candidate_addresses, page_round
from relive.patch.plan import ReloadPlan
from relive.process.memory import ProcessMemory
from relive.process.procfs import read_maps
from relive.process.remote import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    remote_mprotect,
    remote_munmap,
    try_remote_mmap_at,
)
from relive.process.threads import stop_one


def allocate_and_link(pid: int, plan: ReloadPlan, arch: Arch, reinit: bool = False) -> LinkedImage:
    """Link the plan at a reachable free address and map that memory in the target.

    A plan that loads nothing new (every function unchanged, or none selected;
    its strings and constants alone serve no one) maps nothing unless ``reinit``
    (initial values to copy may point into the block): its image is empty and
    the other steps skip it.
    """
    if not plan.layout.request.load or (plan.loads_nothing_new and not reinit):
        return LinkedImage(base=0, data=b"", layout=plan.layout)
    size = page_round(plan.layout.size)
    low_memory = not plan.module.image.is_pie_or_shared
    last_error: LinkError | None = None
    maps = read_maps(pid)
    candidates = iter_candidate_addresses(
        maps, plan.module, size, arch.jump_reach, low_memory, plan.layout.alignment
    )
    for address in candidates:
        try:
            image = link(plan.layout, address)
        except LinkError as error:
            last_error = error
            continue
        # One idle thread is enough: nothing refers to the new block yet, and a
        # mapping the program makes meanwhile only makes this address fail (EEXIST).
        with stop_one(pid) as stopped:
            mapped = try_remote_mmap_at(
                stopped,
                address,
                size,
                PROT_READ | PROT_WRITE,  # executable only once written: see protect_code
                MAP_PRIVATE | MAP_ANONYMOUS,
            )
        if mapped is not None:
            return image
    if last_error is not None:
        raise last_error
    raise ReliveError(
        f"no free address within reach of {plan.module.name} for {size} bytes of new code",
        hint="the address space near the module is full; restart the program",
    )


def link_across(plans: Sequence[ReloadPlan], images: Sequence[LinkedImage]) -> list[LinkedImage]:
    """Relink each block that uses a function or variable another block of the same
    reload defines, now that every block has its address.

    Until then such a symbol was bound to a provisional address in reach (see
    ``Binder.peers``): the layout, stubs and GOT slots do not depend on the value.
    """
    linked = list(images)
    for index, plan in enumerate(plans):
        refs = plan.binder.peer_refs
        if not refs:
            continue
        request = plan.layout.request
        resolved = {
            name: _peer_address(name, plans[peer], images[peer]) for name, peer in refs.items()
        }
        externals = {**request.externals, **resolved}
        layout = dataclasses.replace(
            plan.layout, request=dataclasses.replace(request, externals=externals)
        )
        linked[index] = link(layout, images[index].base)
    return linked


def _peer_address(name: str, plan: ReloadPlan, image: LinkedImage) -> Bound:
    """Where ``name``, defined by ``plan``, lives: in its block, or (when that file's
    definition was not loaded) wherever the plan binds it."""
    for symbol in plan.obj.symbols:
        if symbol.name == name and symbol.is_defined and not symbol.is_local:
            address = image.find_section_address(symbol.shndx)
            if address is not None:
                return Bound(address=address + symbol.value, size=symbol.size)
            bound = plan.layout.request.bound_sections.get(symbol.shndx)
            if bound is not None and bound.address is not None:
                return Bound(address=bound.address + symbol.value, size=symbol.size)
    raise LinkError(
        f"{name}: defined by {plan.source} but neither loaded nor bound",
        hint="this is a relive bug: please report it with both files",
    )


def write_block(memory: ProcessMemory, image: LinkedImage) -> None:
    """Write the new code and data (the program cannot reach it yet)."""
    if not image.data:
        return
    memory.write(image.base, image.data)


def protect_code(pid: int, image: LinkedImage) -> None:
    """Make the block's code pages read+execute (they were written read+write).

    No page is ever writable and executable at once.  Later entry jumps into
    this code are written through /proc/PID/mem, which the kernel allows on
    read-only pages for a tracer, as for the program's own text.
    """
    code = page_round(image.layout.code_size)
    if code and image.data:
        with stop_one(pid) as stopped:
            remote_mprotect(stopped, image.base, code, PROT_READ | PROT_EXEC)


def release_block(pid: int, image: LinkedImage) -> None:
    """Give back a block that will not be used (after a failure); ReliveError if it
    cannot be (the caller reports it: the block stays mapped, unused)."""
    if not image.data:
        return
    with stop_one(pid) as stopped:
        remote_munmap(stopped, image.base, page_round(len(image.data)))

"""The new memory one reload links its code and data into: allocated in the module's
arenas (``patch.arena``), written, and linked again across the files of a reload.

Code and data go to separate arenas (read+execute, read+write), relive's own
data (unwind table, GOT: freed with the code) apart from the object's; all are
written through /proc/PID/mem while the program runs (nothing refers to them
yet): no page is ever writable and executable, and no ``mprotect`` is needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from relive.errors import LinkError
from relive.link import Bound, LinkedImage, link
from relive.patch.arena import ArenaAllocator
from relive.patch.journal import ArenaKind
from relive.patch.plan import ReloadPlan
from relive.process.memory import ProcessMemory


def allocate_and_link(
    allocator: ArenaAllocator, plan: ReloadPlan, reinit: bool = False
) -> LinkedImage:
    """Allocate the plan's code and data in its module's arenas and link it there.

    A plan that loads nothing new (every function unchanged, or none selected;
    its strings and constants alone serve no one) allocates nothing unless
    ``reinit`` (initial values to copy may point into the block): its image is
    empty and the other steps skip it.
    """
    layout = plan.layout
    if not layout.request.load or (plan.loads_nothing_new and not reinit):
        return LinkedImage(base=0, data=b"", layout=layout)
    own = layout.size if layout.own_offset is None else min(layout.own_offset, layout.size)
    sizes = (layout.code_size, max(own - layout.data_offset, 0), max(layout.size - own, 0))
    code, data, mine = (
        allocator.allocate(kind, size, layout.alignment) if size else 0
        for kind, size in zip((ArenaKind.CODE, ArenaKind.DATA, ArenaKind.DATA), sizes, strict=True)
    )
    return link(layout, code, data, mine)


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
        image = images[index]
        linked[index] = link(layout, image.base, image.data_base, image.own_base)
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
    """Write the new code and data (the program cannot reach them yet)."""
    for address, part in image.part_bytes():
        memory.write(address, part)

"""Constants are not state: new code uses the new object's copy unless the running one is equal.

The compiler makes local read-only objects of its own: gcc's switch tables
(``CSWTCH.N``), ``__func__.N``, ``.compoundliteral.N``, ``static const``
locals (``name.N``), clang's ``switch.table.f``.  Their names are per compile
(the ``.N`` numbering shifts when a switch or a static is added before them),
so a name in the new object may name another object of the running program,
or none, or several.  Their content, not their name, is what the new code needs.

``.rodata*`` is never bound: it is loaded with the new code and compared by
content (``patch.diff``).  Const data holding pointers is writable in an
object (``.data.rel.ro*``, the dynamic linker relocates it) and would bind by
name like a variable; it binds only where the running object it names holds
the same bytes, pointing at the same things (checked by the caller), and
otherwise (different content, size, an ambiguous or missing name) gets a new
copy.  This holds whether or not the program was linked with RELRO.
"""

from __future__ import annotations

from relive.elf.objfile import Section
from relive.errors import LayoutChanged, LinkError
from relive.link import Bound
from relive.patch.binder import Binder

#: Sections of const data with relocations: writable in an object only so that
#: the dynamic linker can relocate them (``.data.rel.ro.local`` included).
_RELRO_DATA = ".data.rel.ro"


def is_constant_section(section: Section) -> bool:
    """Whether a loadable data section holds constants: no code writes to it."""
    if section.is_exec or section.is_tls or not section.is_alloc:
        return False
    if not section.is_write:
        return True
    name = section.name
    return name == _RELRO_DATA or name.startswith(_RELRO_DATA + ".")


def bind_constant(binder: Binder, index: int) -> Bound | None:
    """The running storage a constant section names, if any (the caller keeps it
    only when its content is equal); None where the names do not lead to one
    object of the same size: then the section gets a new copy."""
    try:
        return binder.bind_data_section(index)
    except (LinkError, LayoutChanged):
        return None

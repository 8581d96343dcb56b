"""``.eh_frame`` of the new block: the unwind table of the code relive loads.

The compiler's ``.eh_frame`` describes every function of the translation unit;
relive loads only the changed and new ones.  The table is relocated like code
(its FDEs point at functions PC-relatively) and the entries of functions that
were not loaded are disabled: their start address is zeroed, which is how a
linker marks the unwind entries of discarded code and what libgcc's
``__register_frame_info`` and gdb both skip.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from relive.errors import LinkError

#: The section's name in objects.
EH_FRAME = ".eh_frame"
#: A zero length word ends the table (crtend.o provides it in a linked program).
TERMINATOR = bytes(4)
#: Room for libgcc's ``struct object`` that ``__register_frame_info`` fills in
#: (seven pointer-sized words in GCC 12; kept generous for other versions).
UNWIND_OBJECT_SIZE = 128


def disable_fdes(data: bytearray, fields: Iterable[int]) -> None:
    """Disable the FDE whose ``pc_begin`` field is at each offset in ``fields``.

    Zeroes ``pc_begin`` and ``pc_range`` (4 bytes each: the ``pcrel|sdata4``
    encoding gcc and clang use on x86-64); offsets that are not an FDE's start
    address are left alone.
    """
    starts = set(_record_starts(data))
    for field in set(fields):
        if field - 8 in starts and field + 8 <= len(data):
            data[field : field + 8] = bytes(8)


def _record_starts(data: bytearray) -> Iterable[int]:
    pos = 0
    while pos + 4 <= len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        if length == 0:
            return
        if length == 0xFFFFFFFF:
            raise LinkError(
                "64-bit .eh_frame records are not supported", hint="please report the object"
            )
        yield pos
        pos += 4 + length

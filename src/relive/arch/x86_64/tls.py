"""Where the executable's static TLS block lies on x86-64 (TLS variant II)."""

from __future__ import annotations


def executable_tls_offset(memsz: int, align: int, vaddr: int) -> int:
    """How far below the thread pointer the executable's TLS block starts.

    glibc places the executable's block first, just below the thread pointer:
    offset = roundup(memsz - firstbyte, align) + firstbyte, with
    firstbyte = -p_vaddr mod align; a symbol's tpoff is then its value - offset.
    """
    align = max(align, 1)
    firstbyte = (-vaddr) & (align - 1)
    return -(-(memsz - firstbyte) // align) * align + firstbyte

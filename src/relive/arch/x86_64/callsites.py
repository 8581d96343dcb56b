"""Direct calls and jumps (``e8``/``e9`` rel32) to one address, found in code bytes."""

from __future__ import annotations

import struct

_REL32 = struct.Struct("<i")


def find_direct_branches_to(code: bytes, address: int, target: int) -> list[int]:
    """Addresses of the ``call rel32`` / ``jmp rel32`` in ``code`` (at ``address``)
    that go to ``target``.  A byte scan, not a decode: a match inside another
    instruction is possible but rare, and only names a caller in a message."""
    found = []
    for opcode in (b"\xe8", b"\xe9"):
        at = code.find(opcode)
        while 0 <= at <= len(code) - 5:
            site = address + at
            if site + 5 + _REL32.unpack_from(code, at + 1)[0] == target:
                found.append(site)
            at = code.find(opcode, at + 1)
    return sorted(found)

"""x86-64 entry jumps and far stubs."""

from __future__ import annotations

import struct

#: ``endbr64``: the landing pad -fcf-protection puts at function entries.  It is
#: kept in place so indirect calls (function pointers) still land on it.
ENDBR64 = b"\xf3\x0f\x1e\xfa"

JMP_REL32_SIZE = 5
#: ``jmp *0(%rip)`` followed by the 8-byte target: reaches anywhere and, unlike
#: ``movabs %rax; jmp *%rax``, clobbers no register (AL carries the vector
#: count of variadic calls).
FAR_STUB_SIZE = 14
REL32_REACH = 1 << 31


def encode_jmp_rel32(source: int, target: int) -> bytes:
    """``e9 rel32``: rel32 = target - (source + 5).  Raises if out of reach."""
    rel = target - (source + JMP_REL32_SIZE)
    if not -REL32_REACH <= rel < REL32_REACH:
        raise ValueError(f"jump from {source:#x} to {target:#x} is out of rel32 reach")
    return b"\xe9" + struct.pack("<i", rel)


def decode_jmp_rel32(source: int, code: bytes) -> int | None:
    """The target of an ``e9 rel32`` at ``source`` (None if ``code`` is not one)."""
    if len(code) < JMP_REL32_SIZE or code[0] != 0xE9:
        return None
    rel: int = struct.unpack("<i", code[1:JMP_REL32_SIZE])[0]
    return source + JMP_REL32_SIZE + rel


def encode_far_stub(source: int, target: int) -> bytes:
    """``ff 25 00000000`` (jmp *0(%rip)) then the absolute target; position independent."""
    del source  # the stub is position independent
    return b"\xff\x25\x00\x00\x00\x00" + struct.pack("<Q", target)


def find_landing_pad_size(code: bytes) -> int:
    """Bytes to keep at a function entry: 4 for endbr64, else 0."""
    return len(ENDBR64) if code.startswith(ENDBR64) else 0


def find_plt_slot(code: bytes, address: int) -> int | None:
    """The GOT slot a PLT entry jumps through: ``jmp *disp32(%rip)`` (``ff 25``),
    possibly after ``endbr64`` and a ``bnd`` prefix (``.plt.sec`` entries)."""
    at = code.find(b"\xff\x25")
    if at < 0 or at > 8 or at + 6 > len(code):
        return None
    disp = struct.unpack("<i", code[at + 2 : at + 6])[0]
    slot: int = address + at + 6 + disp
    return slot


def find_direct_calls(code: bytes, address: int, target: int) -> list[int]:
    """Addresses of ``call rel32`` (``e8``) and ``jmp rel32`` (``e9``, tail calls)
    in ``code`` (at ``address``) whose destination is ``target``.

    A byte scan, not a disassembly: any e8/e9 byte followed by the right
    displacement counts.  A false hit needs four bytes to equal the one value
    that reaches ``target`` from that very place, so it is vanishingly rare.
    """
    found: list[int] = []
    for opcode in (b"\xe8", b"\xe9"):
        at = code.find(opcode)
        while 0 <= at <= len(code) - 5:
            rel = struct.unpack_from("<i", code, at + 1)[0]
            if address + at + 5 + rel == target:
                found.append(address + at)
            at = code.find(opcode, at + 1)
    return sorted(found)

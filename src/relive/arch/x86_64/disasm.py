"""Instruction-level facts about x86-64 code, from capstone."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

#: Opcodes of direct branches with an 8-bit displacement: jcc, jmp, loop*, jrcxz.
_REL8_OPCODES = frozenset([*range(0x70, 0x80), 0xEB, 0xE0, 0xE1, 0xE2, 0xE3])
#: ``jmp rel32`` (e9) and ``jcc rel32`` (0f 80..8f), with their lengths.
_REL32_BRANCH = re.compile(rb"\xe9|\x0f[\x80-\x8f]")  # never overlap
#: A rel8 branch opcode followed by a negative displacement.
#: (The displacement is a lookahead, so that overlapping candidates are all found:
#: e0-e3 and eb are negative displacements themselves.)
_BACKWARD_REL8 = re.compile(rb"[\x70-\x7f\xe0-\xe3\xeb](?=[\x80-\xff])")


@cache
def _disassembler() -> Any:
    # capstone costs ~60 ms to import: only reloads that check branches pay it.
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


def branch_targets(code: bytes, address: int) -> frozenset[int]:
    """Targets of direct jumps inside ``code`` that land within ``code`` itself.

    A loop head at entry+k (k < jump size) would be overwritten by an entry
    jump; a thread inside the function jumping back there would execute half an
    instruction.  The patcher uses this to refuse while such a thread exists.
    """
    from capstone import CS_GRP_JUMP
    from capstone.x86 import X86_OP_IMM

    end = address + len(code)
    targets: set[int] = set()
    for insn in _disassembler().disasm(code, address):
        if not insn.group(CS_GRP_JUMP):
            continue
        for op in insn.operands:
            if op.type == X86_OP_IMM and address <= op.imm < end:
                targets.add(op.imm)
    return frozenset(targets)


def branches_into(code: bytes, address: int, low: int, high: int) -> bool:
    """Whether a direct branch inside ``code`` (at ``address``) lands in ``(low, high)``.

    Used for every function about to receive an entry jump, before the threads
    are stopped: a loop head inside the bytes the jump replaces would send a
    thread already in the function into the middle of the jump.  A byte scan
    finds every place that *could* encode such a branch (a superset); only then
    is the function disassembled, which costs far more.
    """
    if not _may_branch_into(code, address, low, high):
        return False
    return any(low < target < high for target in branch_targets(code, address))


def _may_branch_into(code: bytes, address: int, low: int, high: int) -> bool:
    start, end = low - address, high - address  # the window, as offsets into code
    # A rel8 branch reaches at most 128 bytes back, so only the first bytes matter,
    # and past the window only a backward one (negative displacement) can land in it.
    for i in range(min(len(code) - 1, end)):
        if code[i] in _REL8_OPCODES and start < i + 2 + _signed8(code[i + 1]) < end:
            return True
    for match in _BACKWARD_REL8.finditer(code, 0, end + 128):
        i = match.start()
        if start < i + 2 + _signed8(code[i + 1]) < end:
            return True
    for match in _REL32_BRANCH.finditer(code):
        field_end = match.end() + 4
        if field_end <= len(code):
            rel = int.from_bytes(code[match.end() : field_end], "little", signed=True)
            if start < field_end + rel < end:
                return True
    return False


def _signed8(byte: int) -> int:
    return byte - 256 if byte >= 128 else byte


def follows_call(before: bytes) -> bool:
    """Whether the bytes just before an address end with a call instruction.

    Used to tell return addresses from other numbers on a stack: ``e8 rel32``,
    or ``ff /2`` (indirect call) with a 0, 1, 4 or 5 byte operand after its
    ModRM byte (an optional REX prefix changes nothing here).
    """
    if len(before) >= 5 and before[-5] == 0xE8:
        return True
    for length in (2, 3, 4, 6, 7):
        if len(before) >= length and before[-length] == 0xFF:
            modrm = before[-length + 1]
            if (modrm >> 3) & 7 == 2:
                return True
    return False


def is_branch_field(code: bytes, field: int) -> bool:
    """Whether the rel32 at ``field`` is the operand of a direct call, jmp or jcc.

    Only meaningful for PC-relative fields: the byte before a RIP-relative
    displacement is otherwise a ModRM byte (mod 00, r/m 101), never e8/e9, and
    never 80-8f after a 0f.  Address-taking (``lea f(%rip)``) is not a branch.
    """
    if field < 1 or field > len(code):
        return False
    if code[field - 1] in (0xE8, 0xE9):
        return True
    return field >= 2 and code[field - 2] == 0x0F and 0x80 <= code[field - 1] <= 0x8F


def find_address_loads(code: bytes, address: int) -> list[tuple[int, int]]:
    """``(field offset, address)`` of each ``lea disp32(%rip), reg`` in ``code`` (at
    ``address``), found by its encoding (8d, then a ModRM byte with mod 00, r/m 101):
    a superset of the real ones, since the bytes may lie inside another instruction.

    The assembler resolves a ``lea`` to a label of the same section itself,
    leaving no relocation: this is how such an address-taking is found.
    """
    found = []
    at = code.find(b"\x8d")
    while at != -1:
        field = at + 2
        if field + 4 <= len(code) and code[at + 1] & 0xC7 == 0x05:
            displacement = int.from_bytes(code[field : field + 4], "little", signed=True)
            found.append((field, address + field + 4 + displacement))
        at = code.find(b"\x8d", at + 1)
    return found


def undo_got_relaxation(new: bytes, old: bytearray, field: int) -> bool:
    """If the linker relaxed the GOT load whose disp32 is at ``field``, restore it.

    ``ld`` turns ``mov foo@GOTPCREL(%rip), %reg`` (8b) into ``lea foo(%rip), %reg``
    (8d) and ``call *foo@GOTPCREL(%rip)`` (ff 15) into ``addr32 call foo`` (67 e8)
    when foo is local to the module; the field then holds foo's own PC-relative
    address.  On a match, ``old`` gets the unrelaxed opcode back (so the bytes
    compare equal) and True says: decode the field as a direct reference.
    """
    if field < 2 or len(new) < field or len(old) < field:
        return False
    if new[field - 2] == 0x8B and old[field - 2] == 0x8D and new[field - 1] == old[field - 1]:
        old[field - 2] = 0x8B
        return True
    if new[field - 2 : field] == b"\xff\x15" and old[field - 2 : field] == b"\x67\xe8":
        old[field - 2 : field] = b"\xff\x15"
        return True
    return False

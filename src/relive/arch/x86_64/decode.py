"""x86-64 instructions as the comparer needs them: what they do, not how encoded.

A short and a near jump to the same place are the same operation (``jmp``);
NOPs of every length are padding.  Only what a direct branch targets is
decoded; every other instruction is compared by its bytes.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from relive.arch.base import Instruction

_ADDRESS = re.compile(r"0x[0-9a-f]+|[0-9]")
_BRANCHES = frozenset({"jmp", "call", "loop", "loope", "loopne", "jrcxz", "jecxz", "jcxz"})


@cache
def _lite_disassembler() -> Any:
    import capstone

    return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


#: Instructions capstone decodes per call.  It fills one C array with every
#: instruction it returns (about 240 bytes each, grown by reallocation): a
#: 100 KiB function whole took several MB of relive's peak memory; a batch of
#: this many takes about 250 KB.
BATCH = 1024
#: The longest x86-64 instruction: a batch's bytes hold BATCH instructions.
_LONGEST = 15


def decode_instructions(code: bytes, address: int) -> list[Instruction]:
    """Every instruction of ``code`` (at ``address``) up to the first it cannot decode."""
    out: list[Instruction] = []
    disassembler = _lite_disassembler()
    start = 0
    while start < len(code):
        batch = code[start : start + BATCH * _LONGEST]
        count = 0
        for at, size, mnemonic, operands in disassembler.disasm_lite(batch, address + start, BATCH):
            out.append(_instruction(at, size, mnemonic, operands))
            count += 1
            start += size
        if count < BATCH:
            break  # the end of the code, or an instruction capstone cannot decode
    return out


def _instruction(at: int, size: int, mnemonic: str, operands: str) -> Instruction:
    # Prefixes such as ``bnd`` do not change where a branch goes.
    operation = mnemonic.rpartition(" ")[2]
    target = None
    if _is_branch(operation) and _ADDRESS.fullmatch(operands):
        # capstone writes addresses below 10 in decimal, the others in hex.
        target = int(operands, 0)
    return Instruction(at, size, operation, target, operation == "nop")


def _is_branch(operation: str) -> bool:
    return operation in _BRANCHES or (operation.startswith("j") and operation != "jmpf")

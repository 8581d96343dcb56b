"""x86-64 relocation table (System V psABI, AMD64 supplement, table 4.10/4.11).

One small handler per type; its docstring is the ABI formula.  Notation:
S symbol address, A addend, P place, G GOT-slot address (we give every
GOT-relative type an absolute slot address, so ``G + GOT`` of the ABI is our
``G``), GOT base of our GOT, T thread-pointer offset, D offset in the TLS
block, Z symbol size.  Types gcc 12 / clang 14 do not emit for user code
(GOT32, GOT64, PLTOFF64, TLSDESC) are left out on purpose: an object that uses
them is refused by name.
"""

from __future__ import annotations

from relive.arch.base import Need, Operands, Range, RelocationType
from relive.elf.constants import (
    R_X86_64_DTPMOD64,
    R_X86_64_DTPOFF64,
    R_X86_64_GLOB_DAT,
    R_X86_64_IRELATIVE,
    R_X86_64_JUMP_SLOT,
    R_X86_64_RELATIVE,
    R_X86_64_TPOFF64,
)


def _absolute(o: Operands) -> int:
    """S + A"""
    return o.S + o.A


def _pc_relative(o: Operands) -> int:
    """S + A - P"""
    return o.S + o.A - o.P


def _got_pc_relative(o: Operands) -> int:
    """G + GOT + A - P  (G + GOT is the slot's address)"""
    return o.G + o.A - o.P


def _got_base_pc_relative(o: Operands) -> int:
    """GOT + A - P"""
    return o.GOT + o.A - o.P


def _got_offset(o: Operands) -> int:
    """S + A - GOT"""
    return o.S + o.A - o.GOT


def _tp_offset(o: Operands) -> int:
    """tpoff(S) + A  (negative: x86-64 TLS variant II lies below the thread pointer)"""
    return o.T + o.A


def _dtp_offset(o: Operands) -> int:
    """dtpoff(S) + A"""
    return o.D + o.A


def _size(o: Operands) -> int:
    """Z + A"""
    return o.Z + o.A


def _entry(
    number: int, name: str, width: int, rng: Range, need: Need, fn: object
) -> RelocationType:
    assert callable(fn)
    pc_relative = fn in (_pc_relative, _got_pc_relative, _got_base_pc_relative)
    return RelocationType(number, name, width, rng, need, fn, pc_relative)


S32, U32, ANY = Range.SIGNED, Range.UNSIGNED, Range.ANY

_TYPES = [
    _entry(1, "R_X86_64_64", 8, ANY, Need.NOTHING, _absolute),
    _entry(2, "R_X86_64_PC32", 4, S32, Need.NOTHING, _pc_relative),
    _entry(4, "R_X86_64_PLT32", 4, S32, Need.CALL, _pc_relative),
    _entry(9, "R_X86_64_GOTPCREL", 4, S32, Need.GOT_SLOT, _got_pc_relative),
    _entry(10, "R_X86_64_32", 4, U32, Need.NOTHING, _absolute),
    _entry(11, "R_X86_64_32S", 4, S32, Need.NOTHING, _absolute),
    _entry(12, "R_X86_64_16", 2, U32, Need.NOTHING, _absolute),
    _entry(13, "R_X86_64_PC16", 2, S32, Need.NOTHING, _pc_relative),
    _entry(14, "R_X86_64_8", 1, U32, Need.NOTHING, _absolute),
    _entry(15, "R_X86_64_PC8", 1, S32, Need.NOTHING, _pc_relative),
    _entry(R_X86_64_DTPOFF64, "R_X86_64_DTPOFF64", 8, ANY, Need.DTPOFF, _dtp_offset),
    _entry(R_X86_64_TPOFF64, "R_X86_64_TPOFF64", 8, ANY, Need.TPOFF, _tp_offset),
    _entry(19, "R_X86_64_TLSGD", 4, S32, Need.GOT_TLS_PAIR, _got_pc_relative),
    _entry(20, "R_X86_64_TLSLD", 4, S32, Need.GOT_TLS_MODULE, _got_pc_relative),
    _entry(21, "R_X86_64_DTPOFF32", 4, S32, Need.DTPOFF, _dtp_offset),
    _entry(22, "R_X86_64_GOTTPOFF", 4, S32, Need.GOT_TPOFF, _got_pc_relative),
    _entry(23, "R_X86_64_TPOFF32", 4, S32, Need.TPOFF, _tp_offset),
    _entry(24, "R_X86_64_PC64", 8, ANY, Need.NOTHING, _pc_relative),
    _entry(25, "R_X86_64_GOTOFF64", 8, ANY, Need.GOT_BASE, _got_offset),
    _entry(26, "R_X86_64_GOTPC32", 4, S32, Need.GOT_BASE, _got_base_pc_relative),
    _entry(28, "R_X86_64_GOTPCREL64", 8, ANY, Need.GOT_SLOT, _got_pc_relative),
    _entry(29, "R_X86_64_GOTPC64", 8, ANY, Need.GOT_BASE, _got_base_pc_relative),
    _entry(32, "R_X86_64_SIZE32", 4, U32, Need.NOTHING, _size),
    _entry(33, "R_X86_64_SIZE64", 8, ANY, Need.NOTHING, _size),
    # GOTPCRELX / REX_GOTPCRELX only *allow* the linker to relax the load;
    # we keep the GOT load, which is always correct.
    _entry(41, "R_X86_64_GOTPCRELX", 4, S32, Need.GOT_SLOT, _got_pc_relative),
    _entry(42, "R_X86_64_REX_GOTPCRELX", 4, S32, Need.GOT_SLOT, _got_pc_relative),
]

#: Not supported (named so an error can say which): 3 GOT32, 5 COPY..8 RELATIVE
#: (dynamic only), 16 DTPMOD64 (dynamic only), 27 GOT64, 30 GOTPLT64,
#: 31 PLTOFF64, 34 GOTPC32_TLSDESC, 35 TLSDESC_CALL, 36 TLSDESC, 37 IRELATIVE.
UNSUPPORTED_NAMES = {
    3: "R_X86_64_GOT32",
    5: "R_X86_64_COPY",
    R_X86_64_GLOB_DAT: "R_X86_64_GLOB_DAT",
    R_X86_64_JUMP_SLOT: "R_X86_64_JUMP_SLOT",
    R_X86_64_RELATIVE: "R_X86_64_RELATIVE",
    R_X86_64_DTPMOD64: "R_X86_64_DTPMOD64",
    27: "R_X86_64_GOT64",
    30: "R_X86_64_GOTPLT64",
    31: "R_X86_64_PLTOFF64",
    34: "R_X86_64_GOTPC32_TLSDESC",
    35: "R_X86_64_TLSDESC_CALL",
    36: "R_X86_64_TLSDESC",
    R_X86_64_IRELATIVE: "R_X86_64_IRELATIVE",
}

R_X86_64_NONE = 0

RELOCATIONS: dict[int, RelocationType] = {t.number: t for t in _TYPES}

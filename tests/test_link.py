"""Tests for relive.link: GNU ld as the oracle, range checks, the relocation table,
trampolines and the layout.

The oracle tests compile small C files with gcc, let relive lay out and link them
at a chosen base, then ask GNU ld to put every section at exactly the address
relive gave it (a generated linker script, externals by ``--defsym``) and
compare the bytes of each section with what ld wrote there.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import capstone
import pytest
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from relive.arch.base import Need, Operands, Range, fits
from relive.arch.x86_64 import ARCH
from relive.arch.x86_64.relocations import RELOCATIONS, UNSUPPORTED_NAMES
from relive.arch.x86_64.trampoline import (
    ENDBR64,
    FAR_STUB_SIZE,
    JMP_REL32_SIZE,
    encode_far_stub,
    encode_jmp_rel32,
    find_landing_pad_size,
)
from relive.elf.constants import (
    EM_X86_64,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_TLS,
    SHF_WRITE,
    SHN_UNDEF,
    SHT_NOBITS,
    SHT_NULL,
    SHT_PROGBITS,
    STB_GLOBAL,
    STB_LOCAL,
    STT_FUNC,
    STT_NOTYPE,
    STT_OBJECT,
    STT_SECTION,
)
from relive.elf.objfile import ObjectFile, ObjSymbol, Relocation, Section
from relive.errors import LinkError
from relive.link import Bound, Layout, LinkedImage, LinkRequest, link, plan_layout

needs_toolchain = pytest.mark.skipif(
    shutil.which("gcc") is None or shutil.which("ld") is None,
    reason="gcc and GNU ld are needed for the oracle tests",
)

# Relocation type numbers, named after the psABI (independent of relive's table).
R_64 = 1
R_PC32 = 2
R_PLT32 = 4
R_GOTPCREL = 9
R_32 = 10
R_32S = 11
R_16 = 12
R_PC16 = 13
R_8 = 14
R_PC8 = 15
R_TPOFF32 = 23
R_PC64 = 24
R_GOTOFF64 = 25
R_GOTPC32 = 26
R_GOTPC64 = 29
R_SIZE32 = 32
R_SIZE64 = 33
R_GOTPCRELX = 41
R_REX_GOTPCRELX = 42

GOT_SLOT_TYPES = {R_GOTPCREL, R_GOTPCRELX, R_REX_GOTPCRELX}
GOT_BASE_TYPES = {R_GOTPC32, R_GOTPC64, R_GOTOFF64}

TWO_GB = 1 << 31
FOUR_GB = 1 << 32

CFLAGS = (
    "-c",
    "-O1",
    "-ffunction-sections",
    "-fdata-sections",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fcf-protection=none",
)

#: Small-model code: every kind of reference a C file makes (own data and code,
#: external functions and data, a pointer table, TLS) plus, through top-level
#: asm, the narrow absolute/relative and SIZE types gcc never emits itself.
SMALL_C = r"""
#include <stdio.h>
extern int ext_var;
extern int ext_arr[];
int counter = 5;
static int table_data[4] = {11, 22, 33, 44};
static const long constants[3] = {0x1122334455667788L, -2L, 3L};
int zeroed[8];
int *ptrs[] = {&counter, &ext_var, table_data + 2, &ext_arr[3]};
int get_ext(void) { return ext_var; }
int *addr_of(void) { return &counter; }
int *addr_of_ext(void) { return &ext_var; }
int idx(int i) { return table_data[i & 3]; }
int ext_idx(int i) { return ext_arr[i]; }
long get_const(int i) { return constants[i]; }
void hello(void) { puts("relive says hello"); }
int say(int x) { printf("value %d of %d\n", x, counter); return zeroed[x & 7]; }
int tail(const char *s) { return puts(s); }
void (*get_fn(void))(void) { return hello; }
int (*get_puts(void))(const char *) { return puts; }
#ifdef WITH_TLS
__thread int tls_counter = 3;
__thread long tls_zero;
int get_tls(void) { return tls_counter + (int)tls_zero; }
#endif
asm(".pushsection .data.asm_narrow,\"aw\",@progbits\n"
    ".word small_abs + 2\n"
    ".byte tiny_abs\n"
    ".byte asm_near - .\n"
    ".word counter - .\n"
    ".p2align 2\n"
    ".long counter@SIZE\n"
    ".popsection\n"
    ".pushsection .data.asm_near,\"aw\",@progbits\n"
    "asm_near: .byte 0x5a\n"
    ".popsection\n");
"""

#: Medium and large code models, position independent: GOT-relative data access.
#: (No external or global function is referenced: gcc would use GOT64/PLTOFF64,
#: which relive refuses by design.)
MODEL_C = r"""
static int big_table[20000] = {1, 2, 3};
static int local_table[4] = {7, 8, 9, 10};
static long local_bss[4];
__attribute__((noinline)) static int helper(int i) {
    return local_table[i & 3] + (int)local_bss[i & 3];
}
__attribute__((visibility("hidden"))) int hidden_var = 42;
int model_entry(int i) {
    local_bss[i & 3] = i;
    return helper(i) + hidden_var + big_table[i];
}
int (*model_fn(void))(int) { return helper; }
asm(".pushsection .data.asm_wide,\"aw\",@progbits\n"
    ".p2align 3\n"
    ".quad model_entry - . + 16\n"
    ".quad hidden_var@SIZE\n"
    ".popsection\n");
"""


# -- helpers ---------------------------------------------------------------------


def _align(value: int, alignment: int) -> int:
    alignment = max(alignment, 1)
    return (value + alignment - 1) // alignment * alignment


def _compile(tmp: Path, source: str, flags: Sequence[str], name: str) -> tuple[Path, ObjectFile]:
    src = tmp / f"{name}.c"
    src.write_text(source)
    out = tmp / f"{name}.o"
    subprocess.run(["gcc", *CFLAGS, *flags, "-o", str(out), str(src)], check=True)
    return out, ObjectFile.open(out)


def _loadable(obj: ObjectFile) -> frozenset[int]:
    """Every non-empty alloc section except thread-local templates."""
    return frozenset(s.index for s in obj.sections if s.is_alloc and s.size and not s.is_tls)


def _tls_sections(obj: ObjectFile) -> list[int]:
    return [s.index for s in obj.sections if s.is_alloc and s.size and s.is_tls]


def _read(data: bytes | bytearray, offset: int, fmt: str) -> int:
    (value,) = struct.unpack_from(fmt, data, offset)
    return int(value)


_FIELD_FORMAT = {1: "<b", 2: "<h", 4: "<i", 8: "<q"}


class LdImage:
    """The alloc sections and symbols of an executable GNU ld wrote."""

    def __init__(self, path: Path) -> None:
        self.sections: list[tuple[int, int, bytes | None]] = []
        self.symbols: dict[str, int] = {}
        self.tls: tuple[int, int, int] | None = None  # vaddr, memsz, align
        with open(path, "rb") as f:
            elf = ELFFile(f)
            for sec in elf.iter_sections():
                if sec["sh_flags"] & SH_FLAGS.SHF_ALLOC and sec["sh_size"]:
                    if sec["sh_flags"] & SH_FLAGS.SHF_TLS:
                        continue  # the TLS template is not at its address at run time
                    data = None if sec["sh_type"] == "SHT_NOBITS" else sec.data()
                    self.sections.append((sec["sh_addr"], sec["sh_size"], data))
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_TLS":
                    self.tls = (seg["p_vaddr"], seg["p_memsz"], seg["p_align"])
            symtab = elf.get_section_by_name(".symtab")
            assert isinstance(symtab, SymbolTableSection)
            for sym in symtab.iter_symbols():
                if sym.name:
                    self.symbols[sym.name] = sym["st_value"]

    def read(self, address: int, size: int) -> bytes:
        for start, length, data in self.sections:
            if start <= address and address + size <= start + length:
                if data is None:
                    return bytes(size)
                return data[address - start : address - start + size]
        raise AssertionError(f"ld wrote nothing at {address:#x} (+{size})")

    def tpoff(self, name: str) -> int:
        """The thread-pointer offset ld gives a TLS symbol (variant II: below the TP)."""
        assert self.tls is not None
        _, memsz, align = self.tls
        return self.symbols[name] - _align(memsz, align)


def _ld_link(
    tmp: Path,
    obj_path: Path,
    obj: ObjectFile,
    addresses: Mapping[int, int],
    externals: Mapping[str, int],
    got_at: int,
    tls_at: int,
) -> LdImage:
    """Link ``obj`` with ld, each loaded section at ``addresses[index]``."""
    lines = ["SECTIONS", "{"]
    for index, address in sorted(addresses.items(), key=lambda kv: kv[1]):
        name = obj.sections[index].name
        lines.append(f"  {name} {address:#x} : {{ *({name}) }}")
    lines += [
        f"  .tdata {tls_at:#x} : {{ *(.tdata .tdata.*) }}",
        "  .tbss : { *(.tbss .tbss.*) }",
        f"  .got {got_at:#x} : {{ *(.got) }}",
        "  .got.plt : { *(.got.plt) }",
        "  /DISCARD/ : { *(.comment) *(.note.GNU-stack) *(.note.gnu.property) *(.eh_frame) }",
        "}",
    ]
    script = tmp / f"{obj_path.stem}.ld"
    script.write_text("\n".join(lines) + "\n")
    exe = tmp / f"{obj_path.stem}.exe"
    cmd = [
        "ld",
        "-static",
        "-nostdlib",
        "--no-relax",  # keep GOTPCRELX loads as GOT loads, as relive does
        "-z",
        "norelro",
        "-z",
        "noexecstack",
        "--build-id=none",
        "-e",
        f"{min(addresses.values()):#x}",
        "-T",
        str(script),
        "-o",
        str(exe),
        str(obj_path),
        *(f"--defsym={name}={value:#x}" for name, value in externals.items()),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    return LdImage(exe)


@dataclasses.dataclass
class OracleResult:
    obj: ObjectFile
    image: LinkedImage
    ld: LdImage
    types: set[int]


def _symbol_address(image: LinkedImage, externals: Mapping[str, int], symbol: ObjSymbol) -> int:
    if not symbol.is_defined:
        return externals[symbol.name]
    return image.get_symbol_address(symbol)


def _check_against_ld(
    tmp: Path,
    source: str,
    flags: Sequence[str],
    name: str,
    base: int,
    externals: Mapping[str, int],
    relive_only_externals: Mapping[str, int] | None = None,
) -> OracleResult:
    """Link with relive and with ld at the same placement; compare every loaded section.

    Fields whose value depends on where each linker put its own GOT (GOT-slot
    loads, GOT-base arithmetic) are decoded and checked on both sides, then
    masked before the byte comparison.
    """
    obj_path, obj = _compile(tmp, source, flags, name)
    load = _loadable(obj)
    tls = _tls_sections(obj)
    names = [obj.sections[i].name for i in load]
    assert len(set(names)) == len(names), "the linker script selects sections by name"
    bound_externals = {n: Bound(address=a) for n, a in externals.items()}
    bound_externals.update({n: Bound(address=a) for n, a in (relive_only_externals or {}).items()})
    request = LinkRequest(
        obj=obj,
        arch=ARCH,
        load=load,
        bound_sections={i: Bound(tpoff=0) for i in tls},
        externals=bound_externals,
    )
    layout = plan_layout(request)
    addresses = {i: base + off for i, off in layout.section_offsets.items()}
    got_at = _align(base + layout.size, 0x1000) + 0x10000
    ld = _ld_link(tmp, obj_path, obj, addresses, externals, got_at, got_at + 0x10000)

    # The thread-pointer offsets of the running program are those ld chose for
    # its TLS segment; tell relive the same, per TLS section.
    if tls:
        tls_bound = {}
        for index in tls:
            symbol = next(s for s in obj.iter_section_symbols(index) if s.name)
            tls_bound[index] = Bound(tpoff=ld.tpoff(symbol.name) - symbol.value)
        request = dataclasses.replace(request, bound_sections=tls_bound)
        relaid = plan_layout(request)
        assert relaid.section_offsets == layout.section_offsets
        layout = relaid
    image = link(layout, base)
    assert len(image.data) == layout.size

    ld_got = ld.symbols.get("_GLOBAL_OFFSET_TABLE_")
    types: set[int] = set()
    for index in sorted(load):
        section = obj.sections[index]
        offset = layout.section_offsets[index]
        ours = bytearray(image.data[offset : offset + section.size])
        theirs = bytearray(ld.read(base + offset, section.size))
        for reloc in obj.relocations.get(index, ()):
            types.add(reloc.type)
            width = RELOCATIONS[reloc.type].width
            place = base + offset + reloc.offset
            field = slice(reloc.offset, reloc.offset + width)
            mine = _read(ours, reloc.offset, _FIELD_FORMAT[width])
            ld_value = _read(theirs, reloc.offset, _FIELD_FORMAT[width])
            where = f"{reloc.symbol.name}+{reloc.addend} in {section.name}+{reloc.offset:#x}"
            if reloc.type in GOT_SLOT_TYPES:
                target = _symbol_address(image, externals, reloc.symbol)
                slot = mine + place - reloc.addend
                assert base + layout.got_base <= slot < base + layout.size, where
                assert _read(image.data, slot - base, "<Q") == target, where
                ld_slot = ld_value + place - reloc.addend
                assert _read(ld.read(ld_slot, 8), 0, "<Q") == target, where
            elif reloc.type in (R_GOTPC32, R_GOTPC64):
                assert mine + place - reloc.addend == base + layout.got_base, where
                assert ld_value + place - reloc.addend == ld_got, where
            elif reloc.type == R_GOTOFF64:
                target = _symbol_address(image, externals, reloc.symbol) + reloc.addend
                assert mine + base + layout.got_base == target, where
                assert ld_got is not None and ld_value + ld_got == target, where
            elif reloc.type == R_TPOFF32:
                assert mine == ld.tpoff(reloc.symbol.name) + reloc.addend, where
            if reloc.type in GOT_SLOT_TYPES | GOT_BASE_TYPES:
                ours[field] = theirs[field] = bytes(width)
        if ours != theirs:
            diffs = [i for i in range(section.size) if ours[i] != theirs[i]]
            pytest.fail(
                f"{section.name}: relive and ld differ at offsets {[hex(d) for d in diffs]}\n"
                f"relive {bytes(ours).hex()}\nld     {bytes(theirs).hex()}"
            )
    return OracleResult(obj, image, ld, types)


# -- 1. GNU ld as oracle --------------------------------------------------------------


@needs_toolchain
def test_non_pic_code_below_2gib_matches_ld(tmp_path: Path) -> None:
    base = 0x1234_5000
    externals = {
        "puts": 0x0800_1230,
        "printf": 0x0800_2340,
        "ext_var": 0x0900_0010,
        "ext_arr": 0x0900_1000,
        "small_abs": 0x1234,
        "tiny_abs": 0x56,
    }
    result = _check_against_ld(
        tmp_path, SMALL_C, ["-fno-pic", "-DWITH_TLS"], "nopic", base, externals
    )
    assert {
        R_64,
        R_PC32,
        R_PLT32,
        R_32,
        R_32S,
        R_TPOFF32,
        R_16,
        R_8,
        R_PC16,
        R_PC8,
        R_SIZE32,
    } <= result.types


@needs_toolchain
def test_pie_code_high_in_memory_matches_ld(tmp_path: Path) -> None:
    base = 0x7F00_1234_0000
    externals = {
        "puts": base - 0x4000_0000 + 0x120,  # near: direct call, no stub
        "printf": base + 0x7000_0000,
        "ext_var": base + 0x1000_0010,
        "ext_arr": base - 0x2000_0000,
        "small_abs": 0x1234,
        "tiny_abs": 0x56,
    }
    result = _check_against_ld(tmp_path, SMALL_C, ["-fPIE", "-DWITH_TLS"], "pie", base, externals)
    assert {R_64, R_PC32, R_PLT32, R_REX_GOTPCRELX, R_TPOFF32, R_PC16, R_PC8} <= result.types


@needs_toolchain
@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        # -fno-plt: calls to externals are ``call *puts@GOTPCREL(%rip)``: GOTPCRELX.
        (["-fPIC", "-fno-plt"], {R_64, R_PC32, R_GOTPCRELX, R_REX_GOTPCRELX}),
        # An assembler that may not relax emits the plain GOTPCREL.
        (["-fPIC", "-Wa,-mrelax-relocations=no"], {R_64, R_PLT32, R_GOTPCREL}),
    ],
    ids=["pic-noplt", "pic-gotpcrel"],
)
def test_pic_code_through_the_got_matches_ld(
    tmp_path: Path, flags: list[str], expected: set[int]
) -> None:
    # No TLS here: ld would relax general-dynamic accesses to local-exec in a
    # static executable, so its bytes would not be comparable.
    base = 0x5555_0000_0000
    externals = {
        "puts": base + 0x10_0000,
        "printf": base - 0x10_0000,
        "ext_var": base + 0x4000_0000,
        "ext_arr": base - 0x4000_0000,
        "small_abs": 0x1234,
        "tiny_abs": 0x56,
    }
    result = _check_against_ld(tmp_path, SMALL_C, flags, "pic", base, externals)
    assert expected <= result.types
    assert R_GOTPCREL in result.types or R_REX_GOTPCRELX in result.types


@needs_toolchain
@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("medium", {R_GOTPC32, R_GOTOFF64, R_PC64, R_SIZE64}),
        ("large", {R_GOTPC64, R_GOTOFF64, R_PC64, R_SIZE64}),
    ],
)
def test_code_models_with_got_arithmetic_match_ld(
    tmp_path: Path, model: str, expected: set[int]
) -> None:
    # GOTPC32/GOTPC64 and GOTOFF64 depend on where each linker put its GOT:
    # _check_against_ld decodes them (the GOT base, and GOT + value == S + A).
    base = 0x6000_0000_0000
    result = _check_against_ld(
        tmp_path,
        MODEL_C,
        ["-fPIC", f"-mcmodel={model}"],
        model,
        base,
        {},
    )
    assert expected <= result.types


@needs_toolchain
def test_large_model_absolute_code_matches_ld(tmp_path: Path) -> None:
    base = 0x3_0000_0000  # above 4 GiB: only 64-bit absolute fields can reach it
    result = _check_against_ld(
        tmp_path, MODEL_C, ["-fno-pic", "-mcmodel=large"], "large_abs", base, {}
    )
    assert {R_64, R_PC64, R_SIZE64} <= result.types


@needs_toolchain
def test_got_base_relocations_need_no_address_for_global_offset_table(tmp_path: Path) -> None:
    _, obj = _compile(tmp_path, MODEL_C, ["-fPIC", "-mcmodel=large"], "gotpc")
    load = _loadable(obj)
    layout = plan_layout(LinkRequest(obj=obj, arch=ARCH, load=load))
    image = link(layout, 0x6000_0000_0000)  # _GLOBAL_OFFSET_TABLE_ is relive's own GOT
    assert len(image.data) == layout.size


# -- 2. range checks ----------------------------------------------------------------


@pytest.fixture(scope="module")
def range_objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ObjectFile]:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    tmp = tmp_path_factory.mktemp("range")
    return {
        # -O2 for the sibling call in tail().
        "pie": _compile(tmp, SMALL_C, ["-fPIE", "-O2"], "pie")[1],
        "nopic": _compile(tmp, SMALL_C, ["-fno-pic"], "nopic")[1],
    }


def _function_relocation(obj: ObjectFile, function: str, rtype: int, symbol: str) -> Relocation:
    section = obj.sections[obj.find_symbol(function).shndx]  # type: ignore[union-attr]
    found = [
        r
        for r in obj.relocations.get(section.index, ())
        if r.type == rtype and r.symbol.name == symbol
    ]
    assert len(found) == 1, f"{function}: {found}"
    return found[0]


def _link_function(
    obj: ObjectFile, function: str, base: int, externals: Mapping[str, int]
) -> tuple[LinkedImage, int]:
    """Load only ``function``'s section (and what it needs) at ``base``; return its offset."""
    index = obj.find_symbol(function).shndx  # type: ignore[union-attr]
    load: set[int] = set()
    todo = [index]
    while todo:  # what the function references, and what that references
        current = todo.pop()
        if current in load:
            continue
        load.add(current)
        for reloc in obj.relocations.get(current, ()):
            if reloc.symbol.is_defined and not reloc.symbol.is_absolute:
                todo.append(reloc.symbol.shndx)
    request = LinkRequest(
        obj=obj,
        arch=ARCH,
        load=frozenset(load),
        externals={n: Bound(address=a) for n, a in externals.items()},
    )
    layout = plan_layout(request)
    return link(layout, base), layout.section_offsets[index]


def _field(image: LinkedImage, offset: int, reloc: Relocation, fmt: str = "<i") -> int:
    return _read(image.data, offset + reloc.offset, fmt)


BASE = 0x7F00_0000_0000


def _pc32_limits(obj: ObjectFile, function: str, rtype: int, symbol: str) -> tuple[int, int]:
    """The lowest and highest target a rel32 at its place reaches, for BASE."""
    reloc = _function_relocation(obj, function, rtype, symbol)
    _, offset = _link_function(obj, function, BASE, {symbol: BASE})
    place = BASE + offset + reloc.offset
    return place - reloc.addend - TWO_GB, place - reloc.addend + TWO_GB - 1


@pytest.mark.parametrize("side", ["low", "high"])
def test_pc32_in_reach_is_exact_and_out_of_reach_raises(
    range_objects: dict[str, ObjectFile], side: str
) -> None:
    obj = range_objects["pie"]
    reloc = _function_relocation(obj, "get_ext", R_PC32, "ext_var")
    low, high = _pc32_limits(obj, "get_ext", R_PC32, "ext_var")
    edge, beyond = (low, low - 1) if side == "low" else (high, high + 1)
    image, offset = _link_function(obj, "get_ext", BASE, {"ext_var": edge})
    place = BASE + offset + reloc.offset
    assert place + _field(image, offset, reloc) - reloc.addend == edge
    with pytest.raises(LinkError) as info:
        _link_function(obj, "get_ext", BASE, {"ext_var": beyond})
    assert "R_X86_64_PC32" in info.value.message
    assert "ext_var" in info.value.message


def test_pc32_far_away_never_truncates(range_objects: dict[str, ObjectFile]) -> None:
    obj = range_objects["pie"]
    for distance in (3 << 30, FOUR_GB, 5 * FOUR_GB + 8, -(3 << 30), -FOUR_GB):
        with pytest.raises(LinkError, match=r"R_X86_64_PC32 against ext_var"):
            _link_function(obj, "get_ext", BASE, {"ext_var": BASE + distance})


def test_pc32_to_far_bound_data_names_it(range_objects: dict[str, ObjectFile]) -> None:
    obj = range_objects["pie"]
    index = obj.find_symbol("get_ext").shndx  # type: ignore[union-attr]
    counter = obj.find_symbol("counter")
    assert counter is not None
    say = obj.find_symbol("say")
    assert say is not None
    request = LinkRequest(
        obj=obj,
        arch=ARCH,
        load=frozenset({index, say.shndx}),
        bound_sections={counter.shndx: Bound(address=BASE + 3 * FOUR_GB)},
        externals={"ext_var": Bound(address=BASE), "printf": Bound(address=BASE)},
    )
    layout = plan_layout(request)
    with pytest.raises(LinkError, match=r"R_X86_64_PC32 against .*counter"):
        link(layout, BASE)


def test_plt32_to_a_far_external_goes_through_a_stub(
    range_objects: dict[str, ObjectFile],
) -> None:
    obj = range_objects["pie"]
    reloc = _function_relocation(obj, "hello", R_PLT32, "puts")
    low, high = _pc32_limits(obj, "hello", R_PLT32, "puts")
    for target in (high, low):  # at the edge of reach: called directly
        image, offset = _link_function(obj, "hello", BASE, {"puts": target})
        place = BASE + offset + reloc.offset
        assert place + _field(image, offset, reloc) - reloc.addend == target
    for target in (high + 1, low - 1, BASE + 40 * FOUR_GB, 0x1000):
        image, offset = _link_function(obj, "hello", BASE, {"puts": target})
        layout = image.layout
        stub = BASE + layout.stub_offsets[reloc.symbol.index]
        place = BASE + offset + reloc.offset
        assert place + _field(image, offset, reloc) - reloc.addend == stub
        stub_bytes = image.data[stub - BASE : stub - BASE + FAR_STUB_SIZE]
        assert stub_bytes == b"\xff\x25\x00\x00\x00\x00" + struct.pack("<Q", target)
        assert stub - BASE + FAR_STUB_SIZE <= layout.code_size
        insn = next(_disassemble(stub_bytes, stub))
        assert (insn.mnemonic, insn.op_str) == ("jmp", "qword ptr [rip]")


def test_tail_call_to_a_far_external_goes_through_the_stub(
    range_objects: dict[str, ObjectFile],
) -> None:
    obj = range_objects["pie"]
    reloc = _function_relocation(obj, "tail", R_PLT32, "puts")
    image, offset = _link_function(obj, "tail", BASE, {"puts": BASE + 7 * FOUR_GB})
    stub = BASE + image.layout.stub_offsets[reloc.symbol.index]
    code = image.data[offset : offset + obj.sections[obj.find_symbol("tail").shndx].size]  # type: ignore[union-attr]
    jumps = [i for i in _disassemble(code, BASE + offset) if i.mnemonic == "jmp"]
    assert [int(i.op_str, 16) for i in jumps] == [stub]


@pytest.mark.parametrize(
    ("function", "rtype", "symbol", "fits_at", "fails_at"),
    [
        # R_X86_64_32 zero-extends: [0, 4 GiB); 32S sign-extends: [-2 GiB, 2 GiB).
        ("addr_of_ext", R_32, "ext_var", [0, TWO_GB, FOUR_GB - 1], [FOUR_GB, 9 * FOUR_GB]),
        ("ext_idx", R_32S, "ext_arr", [0, TWO_GB - 1], [TWO_GB, FOUR_GB - 1, 9 * FOUR_GB]),
    ],
    ids=["R_X86_64_32", "R_X86_64_32S"],
)
def test_32_bit_absolute_out_of_range_raises(
    range_objects: dict[str, ObjectFile],
    function: str,
    rtype: int,
    symbol: str,
    fits_at: list[int],
    fails_at: list[int],
) -> None:
    obj = range_objects["nopic"]
    reloc = _function_relocation(obj, function, rtype, symbol)
    fmt = "<I" if rtype == R_32 else "<i"
    for address in fits_at:
        image, offset = _link_function(obj, function, 0x40_0000, {symbol: address})
        assert _field(image, offset, reloc, fmt) == address + reloc.addend
    name = RELOCATIONS[rtype].name
    for address in fails_at:
        with pytest.raises(LinkError) as info:
            _link_function(obj, function, 0x40_0000, {symbol: address})
        assert f"{name} against {symbol}" in info.value.message


def test_32_bit_absolute_to_own_code_above_4gib_raises(
    range_objects: dict[str, ObjectFile],
) -> None:
    obj = range_objects["nopic"]
    # get_fn is ``mov $hello, %eax``: fine at 4 GiB - 1 page, not above 4 GiB.
    puts = {"puts": 0x40_0000}  # hello() calls it
    _link_function(obj, "get_fn", FOUR_GB - 0x10_0000, puts)
    # Whichever absolute reference is relocated first (hello's, or hello's string's).
    with pytest.raises(LinkError, match=r"R_X86_64_32 against .*does not fit 32 bits"):
        _link_function(obj, "get_fn", FOUR_GB, puts)


def test_size_relocation_against_external_uses_its_definition() -> None:
    symbols = [
        _sym(0, "", shndx=SHN_UNDEF, type_=STT_NOTYPE, bind=STB_LOCAL),
        _sym(1, "ext_buf", shndx=SHN_UNDEF, type_=STT_NOTYPE),
    ]
    sections = [_null_section(), _section(1, ".data.sz", SHF_ALLOC | SHF_WRITE, 8, 8)]
    obj = _object(sections, symbols, {1: [Relocation(0, R_SIZE64, symbols[1], 0)]})
    request = LinkRequest(
        obj=obj,
        arch=ARCH,
        load=frozenset({1}),
        externals={"ext_buf": Bound(address=0x1000, size=4096)},
    )
    image = link(plan_layout(request), 0x10_0000)
    # GNU ld, linking this against a definition ``.size ext_buf, 4096``, writes 4096.
    assert _read(image.data, image.layout.section_offsets[1], "<Q") == 4096


# -- 3. the relocation table ----------------------------------------------------------

#: The psABI (AMD64 supplement, table 4.10 and the TLS supplement): number ->
#: (name, field bytes, ABI formula).  ``L`` (PLT entry) is our S: the linker makes
#: calls go to a stub or to the function itself.
PSABI = {
    1: ("R_X86_64_64", 8, "S + A"),
    2: ("R_X86_64_PC32", 4, "S + A - P"),
    4: ("R_X86_64_PLT32", 4, "S + A - P"),
    9: ("R_X86_64_GOTPCREL", 4, "G + GOT + A - P"),
    10: ("R_X86_64_32", 4, "S + A"),
    11: ("R_X86_64_32S", 4, "S + A"),
    12: ("R_X86_64_16", 2, "S + A"),
    13: ("R_X86_64_PC16", 2, "S + A - P"),
    14: ("R_X86_64_8", 1, "S + A"),
    15: ("R_X86_64_PC8", 1, "S + A - P"),
    17: ("R_X86_64_DTPOFF64", 8, "D + A"),
    18: ("R_X86_64_TPOFF64", 8, "T + A"),
    19: ("R_X86_64_TLSGD", 4, "G + GOT + A - P"),
    20: ("R_X86_64_TLSLD", 4, "G + GOT + A - P"),
    21: ("R_X86_64_DTPOFF32", 4, "D + A"),
    22: ("R_X86_64_GOTTPOFF", 4, "G + GOT + A - P"),
    23: ("R_X86_64_TPOFF32", 4, "T + A"),
    24: ("R_X86_64_PC64", 8, "S + A - P"),
    25: ("R_X86_64_GOTOFF64", 8, "S + A - GOT"),
    26: ("R_X86_64_GOTPC32", 4, "GOT + A - P"),
    28: ("R_X86_64_GOTPCREL64", 8, "G + GOT + A - P"),
    29: ("R_X86_64_GOTPC64", 8, "GOT + A - P"),
    32: ("R_X86_64_SIZE32", 4, "Z + A"),
    33: ("R_X86_64_SIZE64", 8, "Z + A"),
    41: ("R_X86_64_GOTPCRELX", 4, "G + GOT + A - P"),
    42: ("R_X86_64_REX_GOTPCRELX", 4, "G + GOT + A - P"),
}

#: Field ranges: 32 zero-extends, 32S and the PC-relative/GOT types sign-extend.
UNSIGNED_TYPES = {10, 12, 14, 32}


def _evaluate(formula: str, o: Operands) -> int:
    """Evaluate an ABI formula with relive's operands.

    relive's ``G`` is already the slot's absolute address (the ABI's G + GOT;
    see the module docstring of relocations.py), so ``G + GOT`` reads as ``G``.
    ``tpoff(S)``/``dtpoff(S)`` are the operands T and D.
    """
    expression = formula.split("  (")[0].strip()
    expression = expression.replace("G + GOT", "G")
    expression = expression.replace("dtpoff(S)", "D").replace("tpoff(S)", "T")
    assert re.fullmatch(r"[A-Z]+( [+-] [A-Z]+)*", expression), formula
    env = dataclasses.asdict(o)
    value: int = eval(expression, {"__builtins__": {}}, env)
    return value


def test_table_is_keyed_by_number_and_disjoint_from_unsupported() -> None:
    assert all(number == entry.number for number, entry in RELOCATIONS.items())
    assert not set(RELOCATIONS) & set(UNSUPPORTED_NAMES)
    assert 0 not in RELOCATIONS  # R_X86_64_NONE is skipped by the linker, not computed
    assert ARCH.relocations is RELOCATIONS


@pytest.mark.parametrize("number", sorted(RELOCATIONS))
def test_entry_matches_psabi(number: int) -> None:
    entry = RELOCATIONS[number]
    name, width, formula = PSABI[number]
    assert entry.name == name
    assert entry.width == width
    assert entry.formula, f"{name} has no formula docstring"
    expected_range = Range.UNSIGNED if number in UNSIGNED_TYPES else Range.SIGNED
    assert entry.range is (Range.ANY if width == 8 else expected_range)
    assert entry.pc_relative == formula.endswith("- P")
    normalised = entry.formula.split("  (")[0].replace("dtpoff(S)", "D").replace("tpoff(S)", "T")
    assert normalised == formula


def test_every_psabi_type_is_either_handled_or_refused_by_name() -> None:
    assert set(PSABI) == set(RELOCATIONS)
    for number in (3, 16, 27, 30, 31, 34, 35, 36, 37):
        assert number in UNSUPPORTED_NAMES


@pytest.mark.parametrize("number", sorted(RELOCATIONS))
def test_need_matches_the_operands_the_formula_uses(number: int) -> None:
    entry = RELOCATIONS[number]
    formula = PSABI[number][2]
    if number == R_PLT32:
        assert entry.need is Need.CALL
    elif "G + GOT" in formula:
        assert entry.need in (
            Need.GOT_SLOT,
            Need.GOT_TPOFF,
            Need.GOT_TLS_PAIR,
            Need.GOT_TLS_MODULE,
        )
    elif "GOT" in formula:
        assert entry.need is Need.GOT_BASE
    elif "T" in formula.split():
        assert entry.need is Need.TPOFF
    elif "D" in formula.split():
        assert entry.need is Need.DTPOFF
    else:
        assert entry.need is Need.NOTHING


@pytest.mark.parametrize(
    ("width", "kind", "low", "high"),
    [
        (1, Range.SIGNED, -128, 127),
        (1, Range.UNSIGNED, 0, 255),
        (2, Range.SIGNED, -32768, 32767),
        (2, Range.UNSIGNED, 0, 65535),
        (4, Range.SIGNED, -(1 << 31), (1 << 31) - 1),
        (4, Range.UNSIGNED, 0, (1 << 32) - 1),
        (8, Range.ANY, -(1 << 63), (1 << 64) - 1),
    ],
)
def test_fits_boundaries(width: int, kind: Range, low: int, high: int) -> None:
    assert fits(low, width, kind)
    assert fits(high, width, kind)
    assert fits(0, width, kind)
    assert not fits(low - 1, width, kind)
    assert not fits(high + 1, width, kind)


def _random_operands(rng: random.Random) -> Operands:
    def address() -> int:
        return rng.choice([rng.randrange(0, 1 << 47), rng.randrange(0, 1 << 32)])

    return Operands(
        S=address(),
        A=rng.randrange(-(1 << 31), 1 << 31),
        P=address(),
        G=address(),
        GOT=address(),
        T=rng.randrange(-(1 << 20), 0),
        D=rng.randrange(0, 1 << 20),
        Z=rng.randrange(0, 1 << 32),
    )


@pytest.mark.parametrize("number", sorted(RELOCATIONS))
def test_handler_computes_its_docstring_formula(number: int) -> None:
    entry = RELOCATIONS[number]
    rng = random.Random(number)
    for _ in range(200):
        o = _random_operands(rng)
        assert entry.compute(o) == _evaluate(entry.formula, o), (entry.name, o)
        assert entry.compute(o) == _evaluate(PSABI[number][2], o), (entry.name, o)


# -- 4. trampolines -------------------------------------------------------------------


def _disassemble(code: bytes, address: int) -> Iterator[capstone.CsInsn]:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    return iter(md.disasm(code, address))


def _jmp_cases() -> list[tuple[int, int]]:
    rng = random.Random(1234)
    cases = [
        (0x40_0000, 0x40_0000),  # jump to itself
        (0x40_0000, 0x40_0005),  # rel32 0
        (0x7F00_0000_0000, 0x7F00_0000_0000 + 5 + TWO_GB - 1),  # farthest forward
        (0x7F00_0000_0000, 0x7F00_0000_0000 + 5 - TWO_GB),  # farthest backward
    ]
    for _ in range(50):
        source = rng.randrange(TWO_GB, 1 << 47)
        cases.append((source, source + rng.randrange(-TWO_GB, TWO_GB) + 5))
    return cases


def test_jmp_rel32_decodes_to_jmp_target() -> None:
    for source, target in _jmp_cases():
        code = encode_jmp_rel32(source, target)
        assert len(code) == JMP_REL32_SIZE == ARCH.entry_jump_size
        insn = next(_disassemble(code, source))
        assert insn.mnemonic == "jmp"
        assert insn.size == JMP_REL32_SIZE
        assert int(insn.op_str, 16) == target


def test_jmp_rel32_out_of_reach_raises() -> None:
    source = 0x7F00_0000_0000
    for target in (source + 5 + TWO_GB, source + 5 - TWO_GB - 1, source + 10 * FOUR_GB, 0):
        with pytest.raises(ValueError, match="out of rel32 reach"):
            encode_jmp_rel32(source, target)
    assert ARCH.jump_reach == TWO_GB


@pytest.mark.parametrize(
    ("source", "target"),
    [(0x40_0000, 0x7FFF_F7A1_2345), (0x7F00_0000_0000, 0x1000), (0, (1 << 64) - 1)],
)
def test_far_stub_decodes_to_jmp_through_the_following_address(source: int, target: int) -> None:
    stub = encode_far_stub(source, target)
    assert len(stub) == FAR_STUB_SIZE == ARCH.far_stub_size
    insn = next(_disassemble(stub, source))
    assert (insn.mnemonic, insn.op_str, insn.size) == ("jmp", "qword ptr [rip]", 6)
    assert _read(stub, insn.size, "<Q") == target
    assert encode_far_stub(source + 0x1234_5678, target) == stub  # position independent


@pytest.mark.parametrize(
    ("code", "size"),
    [
        (ENDBR64 + b"\x55\x48\x89\xe5", 4),  # endbr64; push rbp; mov rbp, rsp
        (ENDBR64, 4),
        (b"\x55\x48\x89\xe5", 0),
        (b"\xf3\x0f\x1e\xfb", 0),  # endbr32
        (b"", 0),
    ],
)
def test_landing_pad_size(code: bytes, size: int) -> None:
    assert find_landing_pad_size(code) == size
    assert ARCH.find_landing_pad_size(code) == size
    if size:
        assert next(_disassemble(code, 0)).mnemonic == "endbr64"


# -- 5. layout ------------------------------------------------------------------------


def _null_section() -> Section:
    return Section(0, "", SHT_NULL, 0, 0, 0, b"", 0, 0, 0)


def _section(
    index: int,
    name: str,
    flags: int,
    size: int,
    align: int,
    nobits: bool = False,
    data: bytes | None = None,
) -> Section:
    if nobits:
        contents = b""
    else:
        contents = data if data is not None else bytes((index * 17 + i) & 0xFF for i in range(size))
    return Section(
        index,
        name,
        SHT_NOBITS if nobits else SHT_PROGBITS,
        flags,
        size,
        align,
        contents,
        0,
        0,
        0,
    )


def _sym(
    index: int,
    name: str,
    *,
    shndx: int,
    type_: int = STT_FUNC,
    bind: int = STB_GLOBAL,
    value: int = 0,
    size: int = 0,
) -> ObjSymbol:
    return ObjSymbol(index, name, value, size, type_, bind, shndx, None)


def _object(
    sections: list[Section], symbols: list[ObjSymbol], relocations: dict[int, list[Relocation]]
) -> ObjectFile:
    return ObjectFile("synthetic.o", EM_X86_64, sections, symbols, relocations)


CODE = SHF_ALLOC | SHF_EXECINSTR
DATA = SHF_ALLOC | SHF_WRITE
RODATA = SHF_ALLOC
TLS = SHF_ALLOC | SHF_WRITE | SHF_TLS


def _synthetic() -> ObjectFile:
    """Two functions (one calls an external, one loads another through the GOT
    and calls the first), data of several alignments, a .bss and TLS."""
    call = b"\xe8\x00\x00\x00\x00\xc3\x90"  # call ext_fn; ret; nop
    got_load = b"\x48\x8b\x05\x00\x00\x00\x00\xe8\x00\x00\x00\x00\xc3"  # mov; call local; ret
    sections = [
        _null_section(),
        _section(1, ".text.a", CODE, len(call), 16, data=call),
        _section(2, ".data.x", DATA, 12, 8),
        _section(3, ".text.b", CODE, len(got_load), 4, data=got_load),
        _section(4, ".bss.z", DATA, 100, 64, nobits=True),
        _section(5, ".rodata.r", RODATA, 5, 32),
        _section(6, ".tdata.t", TLS, 4, 4),
        _section(7, ".tbss.u", TLS, 8, 8, nobits=True),
    ]
    symbols = [
        _sym(0, "", shndx=SHN_UNDEF, type_=STT_NOTYPE, bind=STB_LOCAL),
        _sym(1, ".text.a", shndx=1, type_=STT_SECTION, bind=STB_LOCAL),
        _sym(2, "ext_fn", shndx=SHN_UNDEF, type_=STT_NOTYPE),
        _sym(3, "ext_data", shndx=SHN_UNDEF, type_=STT_NOTYPE),
        _sym(4, "a", shndx=1, size=len(call)),
        _sym(5, "x", shndx=2, type_=STT_OBJECT, size=12),
    ]
    relocations = {
        1: [Relocation(1, R_PLT32, symbols[2], -4)],
        3: [
            Relocation(3, R_REX_GOTPCRELX, symbols[3], -4),
            Relocation(8, R_PLT32, symbols[4], -4),
        ],
    }
    return _object(sections, symbols, relocations)


def _request(obj: ObjectFile, load: set[int]) -> LinkRequest:
    return LinkRequest(
        obj=obj,
        arch=ARCH,
        load=frozenset(load),
        externals={"ext_fn": Bound(address=0x1000), "ext_data": Bound(address=0x2000)},
    )


def _extents(layout: Layout) -> dict[str, list[tuple[int, int]]]:
    obj = layout.request.obj
    kinds: dict[str, list[tuple[int, int]]] = {"code": [], "stub": [], "data": [], "got": []}
    for index, offset in layout.section_offsets.items():
        section = obj.sections[index]
        kinds["code" if section.is_exec else "data"].append((offset, offset + section.size))
    for offset in layout.stub_offsets.values():
        kinds["stub"].append((offset, offset + ARCH.far_stub_size))
    sizes = {Need.GOT_SLOT: 8, Need.GOT_TPOFF: 8, Need.GOT_TLS_PAIR: 16, Need.GOT_TLS_MODULE: 16}
    for key, offset in layout.got_offsets.items():
        kinds["got"].append((offset, offset + sizes[key.kind]))
    return kinds


def _check_layout(layout: Layout) -> None:
    obj = layout.request.obj
    kinds = _extents(layout)
    ordered = [kinds["code"], kinds["stub"], kinds["data"], kinds["got"]]
    present = [k for k in ordered if k]
    for before, after in itertools.pairwise(present):
        assert max(end for _, end in before) <= min(start for start, _ in after)
    everything = sorted(e for k in ordered for e in k)
    if not everything:
        return
    for (_, end), (start, _) in itertools.pairwise(everything):
        assert end <= start, "overlap"
    assert everything[-1][1] <= layout.size
    code_end = max((end for _, end in kinds["code"] + kinds["stub"]), default=0)
    assert code_end <= layout.code_size
    assert all(start >= layout.code_size for start, _ in kinds["data"] + kinds["got"])
    for index, offset in layout.section_offsets.items():
        assert offset % max(obj.sections[index].align, 1) == 0, obj.sections[index].name
    for offset in layout.stub_offsets.values():
        assert offset % 16 == 0
    for offset in layout.got_offsets.values():
        assert offset % 8 == 0
    assert layout.got_base <= min((s for s, _ in kinds["got"]), default=layout.got_base)


def test_layout_orders_code_stubs_data_got() -> None:
    obj = _synthetic()
    layout = plan_layout(_request(obj, {1, 2, 3, 4, 5}))
    _check_layout(layout)
    assert set(layout.stub_offsets) == {2}  # ext_fn; the call to "a" stays direct
    assert {(k.kind, k.symbol_index) for k in layout.got_offsets} == {(Need.GOT_SLOT, 3)}
    offsets = layout.section_offsets
    assert offsets[1] < offsets[3] < layout.stub_offsets[2] < offsets[2] < offsets[4]


def test_linked_sections_honour_alignment_zero_fill_and_contents() -> None:
    obj = _synthetic()
    layout = plan_layout(_request(obj, {1, 2, 3, 4, 5}))
    base = 0x7F12_3456_0000  # page aligned, as allocated memory is
    image = link(layout, base)
    for index in layout.section_offsets:
        section = obj.sections[index]
        address = image.find_section_address(index)
        assert address is not None and address % section.align == 0
        content = image.data[address - base : address - base + section.size]
        if section.is_nobits:
            assert content == bytes(section.size)
        elif index in (2, 5):  # no relocations: copied verbatim
            assert content == section.data
    assert image.find_section_address(6) is None
    a = obj.symbols[4]
    assert image.get_symbol_address(a) == base + layout.section_offsets[1]
    # The GOT slot of ext_data holds its address, and the load reads that slot.
    slot = base + next(iter(layout.got_offsets.values()))
    assert _read(image.data, slot - base, "<Q") == 0x2000
    load_place = base + layout.section_offsets[3] + 3
    assert load_place + 4 + _read(image.data, load_place - base, "<i") == slot
    # Stub: the call to ext_fn (0x1000, far from base) goes through it.
    stub = base + layout.stub_offsets[2]
    call_place = base + layout.section_offsets[1] + 1
    assert call_place + 4 + _read(image.data, call_place - base, "<i") == stub
    assert image.data[stub - base : stub - base + FAR_STUB_SIZE] == encode_far_stub(stub, 0x1000)
    # The local call is direct.
    local_place = base + layout.section_offsets[3] + 8
    target = local_place + 4 + _read(image.data, local_place - base, "<i")
    assert target == base + layout.section_offsets[1]


def test_nobits_section_is_zero_even_where_the_block_had_bytes() -> None:
    # A .bss placed after data with contents: its bytes come out zero, and the
    # data before it is intact.
    sections = [
        _null_section(),
        _section(1, ".data.full", DATA, 70, 1, data=b"\xff" * 70),
        _section(2, ".bss.zero", DATA, 33, 2, nobits=True),
        _section(3, ".data.tail", DATA, 3, 1, data=b"\xee" * 3),
    ]
    obj = _object(sections, [_sym(0, "", shndx=SHN_UNDEF, bind=STB_LOCAL)], {})
    layout = plan_layout(_request(obj, {1, 2, 3}))
    _check_layout(layout)
    image = link(layout, 0x10_0000)
    o1, o2, o3 = (layout.section_offsets[i] for i in (1, 2, 3))
    assert image.data[o1 : o1 + 70] == b"\xff" * 70
    assert image.data[o2 : o2 + 33] == bytes(33)
    assert image.data[o3 : o3 + 3] == b"\xee" * 3


def test_layout_alignment_for_random_sections() -> None:
    rng = random.Random(42)
    for _ in range(30):
        count = rng.randrange(1, 12)
        sections = [_null_section()]
        for index in range(1, count + 1):
            flags = rng.choice([CODE, DATA, RODATA])
            align = rng.choice([0, 1, 2, 4, 8, 16, 32, 64, 4096])
            nobits = flags == DATA and rng.random() < 0.3
            size = rng.randrange(0, 300)
            sections.append(_section(index, f".s{index}", flags, size, align, nobits=nobits))
        obj = _object(sections, [_sym(0, "", shndx=SHN_UNDEF, bind=STB_LOCAL)], {})
        load = {i for i in range(1, count + 1) if rng.random() < 0.8}
        layout = plan_layout(_request(obj, load))
        assert set(layout.section_offsets) == load
        _check_layout(layout)
        image = link(layout, 0x5000_0000)
        for index in load:
            section = sections[index]
            offset = layout.section_offsets[index]
            expected = bytes(section.size) if section.is_nobits else section.data
            assert image.data[offset : offset + section.size] == expected


@pytest.mark.parametrize("tls_index", [6, 7], ids=[".tdata", ".tbss"])
def test_tls_sections_in_load_are_refused(tls_index: int) -> None:
    obj = _synthetic()
    name = obj.sections[tls_index].name
    with pytest.raises(LinkError, match=re.escape(name)) as info:
        plan_layout(_request(obj, {1, tls_index}))
    assert "thread-local" in info.value.message
    assert info.value.hint


@needs_toolchain
def test_compiled_tls_variable_in_load_is_refused(tmp_path: Path) -> None:
    _, obj = _compile(tmp_path, SMALL_C, ["-fPIE", "-DWITH_TLS"], "tls")
    tls = _tls_sections(obj)
    assert len(tls) == 2
    for index in tls:
        with pytest.raises(LinkError, match="thread-local"):
            plan_layout(LinkRequest(obj=obj, arch=ARCH, load=_loadable(obj) | {index}))


def test_unknown_relocation_is_refused_by_name() -> None:
    sections = [_null_section(), _section(1, ".text.f", CODE, 16, 16)]
    symbols = [
        _sym(0, "", shndx=SHN_UNDEF, bind=STB_LOCAL),
        _sym(1, "ext_var", shndx=SHN_UNDEF, type_=STT_NOTYPE),
    ]
    obj = _object(sections, symbols, {1: [Relocation(2, 27, symbols[1], 0)]})  # GOT64
    request = LinkRequest(
        obj=obj, arch=ARCH, load=frozenset({1}), externals={"ext_var": Bound(address=0x1000)}
    )
    with pytest.raises(LinkError, match=r"R_X86_64_GOT64 \(27\) against ext_var in \.text\.f"):
        link(plan_layout(request), 0x10_0000)

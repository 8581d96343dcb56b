"""Tests for relive.elf: real C compiled by gcc/clang at test time, readelf as oracle."""

from __future__ import annotations

import os
import random
import re
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from relive.elf.constants import (
    EM_AARCH64,
    EM_X86_64,
    R_X86_64_DTPMOD64,
    R_X86_64_DTPOFF64,
    R_X86_64_GLOB_DAT,
    R_X86_64_IRELATIVE,
    R_X86_64_JUMP_SLOT,
    R_X86_64_TPOFF64,
    SHN_LORESERVE,
    SHT_RELA,
    STB_GLOBAL,
    STB_LOCAL,
    STT_FUNC,
    STT_GNU_IFUNC,
    STT_OBJECT,
    STT_TLS,
)
from relive.elf.image import ElfImage
from relive.elf.objfile import ObjectFile
from relive.errors import BadObject
from support import need_program

LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6")

# Instruction relocations, named here only to check what the compilers emit.
R_X86_64_PC32 = 2
R_X86_64_PLT32 = 4
R_X86_64_GOTPCREL = 9
R_X86_64_GOTPCRELX = 41
R_X86_64_REX_GOTPCRELX = 42

OBJ_FLAGS = ("-c", "-g", "-O1", "-fPIC", "-ffunction-sections", "-fdata-sections")

DEMO_C = """\
#include <stdio.h>
int counter;
void bump(void) { counter++; printf("count=%d\\n", counter); }
int f(void) { static int count; return ++count; }
"""


def build(tmp: Path, sources: dict[str, str], *flags: str, out: str, cc: str = "gcc") -> Path:
    """Write ``sources`` into ``tmp`` and run ``cc`` there (so STT_FILE names are relative)."""
    need_program(cc)
    for name, text in sources.items():
        (tmp / name).write_text(text)
    cmd = [cc, *flags, *sources, "-o", out]
    done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr}"
    return tmp / out


def section_named(obj: ObjectFile, name: str) -> int:
    return next(s.index for s in obj.sections if s.name == name)


# -- relocatable objects ---------------------------------------------------------


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_object_sections_symbols_relocations(tmp_path: Path, cc: str) -> None:
    obj = ObjectFile.open(build(tmp_path, {"demo.c": DEMO_C}, *OBJ_FLAGS, out="demo.o", cc=cc))
    assert obj.machine == EM_X86_64
    assert obj.source_name == "demo.c"
    assert obj.sections[0].index == 0 and obj.symbols[0].name == ""

    bump = obj.find_symbol("bump")
    assert bump is not None and bump.is_function and bump.is_defined and not bump.is_local
    assert bump.bind == STB_GLOBAL and bump.file is None
    text = obj.sections[bump.shndx]
    assert text.name == ".text.bump" and text.is_exec and text.is_alloc and not text.is_write
    assert len(text.data) == text.size > 0
    assert {s.name for s in obj.iter_functions()} == {"bump", "f"}
    in_text = list(obj.iter_section_symbols(bump.shndx))
    assert bump in in_text and not any(s.is_section for s in in_text)

    counter = obj.find_symbol("counter")
    assert counter is not None and counter.type == STT_OBJECT and counter.size == 4
    bss = obj.sections[counter.shndx]
    assert bss.name == ".bss.counter" and bss.is_nobits and bss.is_write and bss.data == b""

    relocs = obj.relocations[bump.shndx]
    assert all(0 <= r.offset < text.size for r in relocs)
    by_name = {r.symbol.name: r for r in relocs}
    got_or_pc = {R_X86_64_PC32, R_X86_64_GOTPCREL, R_X86_64_GOTPCRELX, R_X86_64_REX_GOTPCRELX}
    assert by_name["counter"].type in got_or_pc
    assert by_name["printf"].type == R_X86_64_PLT32
    assert not by_name["printf"].symbol.is_defined
    # The string literal: gcc refers to a local .LC0, clang to .L.str or the
    # section symbol; either way a local in a .rodata string section.
    (string,) = [r for r in relocs if r.symbol.is_local]
    assert string.type == R_X86_64_PC32
    assert string.symbol.is_section or string.symbol.name.startswith(".L")
    rodata = obj.sections[string.symbol.shndx]
    assert rodata.name.startswith(".rodata") and rodata.is_alloc
    # PC32 addend is -4 past the field: the literal sits at value + addend + 4.
    start = string.symbol.value + string.addend + 4
    assert rodata.content()[start:].startswith(b"count=%d\n")

    # .rela.debug_* are parsed too.
    debug_info = section_named(obj, ".debug_info")
    assert obj.relocations[debug_info]
    assert 12345 not in obj.relocations


@pytest.mark.parametrize(("cc", "static_name"), [("gcc", "count.0"), ("clang", "f.count")])
def test_static_locals_carry_their_file(tmp_path: Path, cc: str, static_name: str) -> None:
    obj = ObjectFile.open(build(tmp_path, {"demo.c": DEMO_C}, *OBJ_FLAGS, out="demo.o", cc=cc))
    count = obj.find_symbol(static_name)
    assert count is not None
    assert count.is_local and count.bind == STB_LOCAL and count.type == STT_OBJECT
    assert count.file == "demo.c" and count.size == 4
    assert obj.sections[count.shndx].name == f".bss.{static_name}"
    (use,) = {r.symbol.shndx for r in obj.relocations[section_named(obj, ".text.f")]}
    assert use == count.shndx


def test_object_with_3000_function_sections(tmp_path: Path) -> None:
    source = "\n".join(f"int f{i}(int x) {{ return x * {i} + 1; }}" for i in range(3000))
    obj = ObjectFile.open(
        build(tmp_path, {"many.c": source}, "-c", "-O0", "-ffunction-sections", out="many.o")
    )
    functions = {s.name: s for s in obj.iter_functions()}
    assert len(functions) == 3000
    for i in range(3000):
        section = obj.sections[functions[f"f{i}"].shndx]
        assert section.name == f".text.f{i}" and section.is_exec


def test_extended_section_numbering(tmp_path: Path) -> None:
    # More than 0xff00 sections: e_shnum, e_shstrndx and st_shndx overflow into
    # section 0 and .symtab_shndx. gcc would need ~33,000 functions; the
    # assembler makes the same object in a second.
    n = 0xFF00 + 100
    asm = "".join(
        f'.section .text.f{i},"ax",@progbits\n.globl f{i}\n.type f{i},@function\n'
        f"f{i}: ret\n.size f{i},1\n"
        for i in range(n)
    )
    obj = ObjectFile.open(build(tmp_path, {"wide.s": asm}, "-c", out="wide.o"))
    assert len(obj.sections) > SHN_LORESERVE
    assert any(s.name == ".symtab_shndx" for s in obj.sections)
    functions = {s.name: s for s in obj.iter_functions()}
    assert len(functions) == n
    for i in (0, 1000, SHN_LORESERVE, n - 1):
        assert obj.sections[functions[f"f{i}"].shndx].name == f".text.f{i}"
    assert all(obj.sections[s.shndx].name == f".text.{s.name}" for s in functions.values())


# -- refusals --------------------------------------------------------------------


def test_refuses_text_file(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("hello, not ELF\n" * 10)
    with pytest.raises(BadObject) as err:
        ObjectFile.open(path)
    assert str(err.value) == f"{path} is not an ELF object file"
    assert "pass a .c source or a .o built by gcc/clang" in err.value.one_line()
    assert err.value.exit_code == 6
    with pytest.raises(BadObject, match="not an ELF"):
        ElfImage.open(path)
    with pytest.raises(BadObject, match="cannot read"):
        ObjectFile.open(tmp_path / "missing.o")


def test_refuses_executable_as_object(tmp_path: Path) -> None:
    exe = build(tmp_path, {"m.c": "int main(void) { return 0; }"}, out="m")
    with pytest.raises(BadObject, match="not a relocatable object") as err:
        ObjectFile.open(exe)
    assert err.value.hint == "compile with -c"


def test_refuses_32_bit_object(tmp_path: Path) -> None:
    (tmp_path / "t.c").write_text("int f(void) { return 1; }\n")
    done = subprocess.run(
        ["gcc", "-m32", "-c", "t.c", "-o", "t.o"], cwd=tmp_path, capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("gcc -m32 -c does not work here (no 32-bit toolchain)")
    with pytest.raises(BadObject, match="is a 32-bit object") as err:
        ObjectFile.open(tmp_path / "t.o")
    assert "without -m32" in err.value.hint
    with pytest.raises(BadObject, match="32-bit"):
        ElfImage.open(tmp_path / "t.o")


def test_machine_check(tmp_path: Path) -> None:
    path = build(tmp_path, {"t.c": "int f(void) { return 1; }\n"}, "-c", out="t.o")
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, 18, EM_AARCH64)
    path.write_bytes(bytes(data))
    with pytest.raises(BadObject, match="is an AArch64 object but the target is x86-64"):
        ObjectFile.open(path)
    assert ObjectFile.open(path, expected_machines=(EM_AARCH64,)).machine == EM_AARCH64


def test_refuses_stripped_rel_and_truncated_objects(tmp_path: Path) -> None:
    path = build(tmp_path, {"t.c": DEMO_C}, "-c", "-fPIC", out="t.o")
    data = path.read_bytes()

    # Turn the first SHT_RELA section into SHT_REL.
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    (shnum,) = struct.unpack_from("<H", data, 0x3C)
    rela = next(
        i for i in range(shnum) if struct.unpack_from("<I", data, shoff + 64 * i + 4)[0] == SHT_RELA
    )
    rel = bytearray(data)
    struct.pack_into("<I", rel, shoff + 64 * rela + 4, 9)
    (tmp_path / "rel.o").write_bytes(bytes(rel))
    with pytest.raises(BadObject, match="REL relocations"):
        ObjectFile.open(tmp_path / "rel.o")

    (tmp_path / "cut.o").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadObject, match="truncated"):
        ObjectFile.open(tmp_path / "cut.o")

    need_program("strip")
    subprocess.run(["strip", "--strip-all", str(path)], check=True)
    with pytest.raises(BadObject, match="no symbol table"):
        ObjectFile.open(path)


def test_image_refuses_relocatable_object(tmp_path: Path) -> None:
    path = build(tmp_path, {"t.c": "int f(void) { return 1; }\n"}, "-c", out="t.o")
    with pytest.raises(BadObject, match="is a relocatable object, not an executable"):
        ElfImage.open(path)


# -- linked executables ------------------------------------------------------------

PROG_SOURCES = {
    "main.c": """\
#include <stdio.h>
int a_bump(void);
int b_bump(void);
int initialised = 0x12345678;
int main(void) {
    puts("hi");
    fputs("ho\\n", stdout);
    return a_bump() + b_bump() + initialised;
}
""",
    "a.c": "static int counter;\nint a_bump(void) { return ++counter; }\n",
    "b.c": "static int counter = 7;\nint b_bump(void) { return counter += 2; }\n",
}


@pytest.fixture(scope="module")
def prog(tmp_path_factory: pytest.TempPathFactory) -> ElfImage:
    return ElfImage.open(build(tmp_path_factory.mktemp("prog"), PROG_SOURCES, "-O0", out="prog"))


def test_executable_headers(prog: ElfImage) -> None:
    assert prog.machine == EM_X86_64 and prog.has_symtab and prog.soname is None
    assert prog.load_segments and prog.first_load_vaddr % 0x1000 == 0
    assert prog.first_load_vaddr == min(s.vaddr for s in prog.load_segments) & ~0xFFF
    assert prog.tls_segment is None
    assert ElfImage.open(prog.path) is prog


def test_non_pie_executable(tmp_path: Path) -> None:
    path = build(tmp_path, {"m.c": "int main(void) { return 0; }"}, "-no-pie", "-fno-pie", out="m")
    image = ElfImage.open(path)
    assert not image.is_pie_or_shared and image.first_load_vaddr == 0x400000


def test_find_global(prog: ElfImage) -> None:
    main = prog.find_global("main")
    assert main is not None and main.type == STT_FUNC and main.bind == STB_GLOBAL
    assert prog.is_pie_or_shared and main.value > prog.first_load_vaddr
    assert prog.find_global("counter") is None  # static: only a file local
    assert prog.find_global("relive_no_such_symbol") is None
    assert prog.find_global("puts") is None  # imported, not defined
    initialised = prog.find_global("initialised")
    assert initialised is not None and initialised.type == STT_OBJECT
    assert prog.read_vaddr(initialised.value, 4) == struct.pack("<I", 0x12345678)
    # A PIE copies libc's stdout into its .bss; .symtab names the copy
    # "stdout@GLIBC_2.2.5" (with "@@" in some toolchains): the version is ignored.
    stdout = prog.find_global("stdout")
    assert stdout is not None and stdout.type == STT_OBJECT and stdout.is_defined
    assert stdout.name.startswith("stdout")


def test_file_locals(prog: ElfImage) -> None:
    assert {"main.c", "a.c", "b.c"} <= set(prog.iter_file_names())
    (a,) = prog.find_file_local("counter", "a.c")
    (b,) = prog.find_file_local("counter", "b.c")
    assert a.file == "a.c" and b.file == "b.c" and a.value != b.value
    assert a.type == STT_OBJECT and a.bind == STB_LOCAL
    # The STT_FILE name is what gcc was given; any spelling with that basename matches.
    assert prog.find_file_local("counter", "/elsewhere/src/a.c") == [a]
    assert prog.read_vaddr(a.value, 4) == bytes(4)  # .bss
    assert prog.read_vaddr(b.value, 4) == struct.pack("<i", 7)
    assert "counter" in {s.name for s in prog.iter_file_locals("b.c")}
    assert all(s.file == "b.c" for s in prog.iter_file_locals("b.c"))
    assert prog.find_file_local("counter", "main.c") == []


def test_file_local_index_agrees_with_a_scan(prog: ElfImage) -> None:
    """The per-group name index gives what a walk over the group gives, for every
    local of every file, asked again and again (the index is built once)."""
    for file in ["main.c", "a.c", "b.c", "/elsewhere/b.c", ""]:
        scanned = list(prog.iter_file_locals(file))
        assert scanned or file not in ("a.c", "b.c", "/elsewhere/b.c")
        for _ in range(2):
            for name in {s.name for s in scanned} | {"relive_no_such_local"}:
                expected = [s for s in scanned if s.name == name]
                assert prog.find_file_local(name, file) == expected


def test_functions_and_next_symbol_address(prog: ElfImage) -> None:
    functions = list(prog.iter_functions())
    starts = [f.value for f in functions]
    assert starts == sorted(starts)
    names = {f.name for f in functions}
    assert {"main", "a_bump", "b_bump"} <= names
    for f in functions:
        nxt = prog.find_next_symbol_address(f.value)
        assert nxt is not None and nxt >= f.value + f.size
        assert not any(f.value < s < nxt for s in starts)
    main = prog.find_global("main")
    a_bump = prog.find_global("a_bump")
    assert main is not None and a_bump is not None
    # main.c is linked before a.c: a_bump follows main (gcc -O0 does not pad).
    assert prog.find_next_symbol_address(main.value) == a_bump.value
    code = prog.read_vaddr(main.value, main.size)
    assert len(code) == main.size and code.endswith(b"\xc3")  # ret


def test_read_vaddr_matches_sections(prog: ElfImage) -> None:
    from elftools.elf.elffile import ELFFile

    with open(prog.path, "rb") as f:
        elf = ELFFile(f)
        text, bss = elf.get_section_by_name(".text"), elf.get_section_by_name(".bss")
        assert text is not None and bss is not None
        data, addr = text.data(), text["sh_addr"]
        bss_addr, bss_size = bss["sh_addr"], bss["sh_size"]
    assert prog.read_vaddr(addr, len(data)) == data
    assert prog.read_vaddr(bss_addr, bss_size) == bytes(bss_size)
    # The last function of .text may run up to the end of .text, no further.
    last = max(f.value for f in prog.iter_functions() if addr <= f.value < addr + len(data))
    assert prog.find_next_symbol_address(last) == addr + len(data)
    with pytest.raises(BadObject, match="no loadable segment"):
        prog.read_vaddr(0x7FFF_0000_0000, 8)


@pytest.mark.parametrize(("flags", "expected"), [((), None), (("-fno-plt",), R_X86_64_GLOB_DAT)])
def test_find_got_slot(tmp_path: Path, flags: tuple[str, ...], expected: int | None) -> None:
    image = ElfImage.open(build(tmp_path, PROG_SOURCES, "-O0", *flags, out="prog"))
    slot = image.find_got_slot("puts")
    assert slot is not None
    (reloc,) = [r for r in image.dynamic_relocations if r.offset == slot]
    assert reloc.symbol == "puts"
    assert reloc.type in (R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT)
    if expected is not None:
        assert reloc.type == expected
    assert image.find_got_slot("relive_no_such_symbol") is None


def test_cache_follows_file_identity(tmp_path: Path) -> None:
    path = build(tmp_path, {"m.c": "int main(void) { return 0; }"}, out="m")
    first = ElfImage.open(path)
    assert ElfImage.open(str(path)) is first
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    second = ElfImage.open(path)
    assert second is not first
    main = second.find_global("main")
    assert main is not None
    # Rewritten in place after parsing: reads refuse rather than return new bytes.
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(BadObject, match="changed on disk"):
        second.read_vaddr(main.value, main.size)


# -- thread-local storage ------------------------------------------------------------


def test_tls_segment(tmp_path: Path) -> None:
    source = "__thread int t = 5;\nint main(void) { return t; }\n"
    image = ElfImage.open(build(tmp_path, {"tls.c": source}, out="tls"))
    tls = image.tls_segment
    assert tls is not None and tls.filesz >= 4 and tls.memsz >= tls.filesz and tls.align >= 4
    t = image.find_global("t")
    assert t is not None and t.type == STT_TLS
    assert image.read_vaddr(tls.vaddr + t.value, 4) == struct.pack("<i", 5)


@pytest.mark.parametrize(
    ("model", "kind", "number"),
    [
        ("global-dynamic", "DTPMOD64", R_X86_64_DTPMOD64),
        ("initial-exec", "TPOFF64", R_X86_64_TPOFF64),
    ],
)
def test_tls_got_slots(
    tmp_path: Path, model: str, kind: Literal["TPOFF64", "DTPMOD64"], number: int
) -> None:
    source = "__thread int tv = 3;\nint get(void) { return tv; }\n"
    flags = ("-shared", "-fPIC", f"-ftls-model={model}")
    image = ElfImage.open(build(tmp_path, {"lib.c": source}, *flags, out="libtls.so"))
    slot = image.find_tls_got_slot("tv", kind)
    assert slot is not None
    by_offset = {r.offset: r for r in image.dynamic_relocations}
    assert by_offset[slot].type == number and by_offset[slot].symbol == "tv"
    if kind == "DTPMOD64":
        assert by_offset[slot + 8].type == R_X86_64_DTPOFF64
    assert image.find_tls_got_slot("get", kind) is None


# -- shared libraries ----------------------------------------------------------------

VERSIONED_C = """\
int old_impl(void) { return 1; }
int new_impl(void) { return 2; }
int plain(void) { return 3; }
__asm__(".symver old_impl,api@VER_1");
__asm__(".symver new_impl,api@@VER_2");
"""


def test_versioned_symbols_prefer_default(tmp_path: Path) -> None:
    (tmp_path / "ver.map").write_text(
        "VER_1 { global: api; plain; local: *; };\nVER_2 { global: api; } VER_1;\n"
    )
    flags = ("-shared", "-fPIC", "-Wl,--version-script=ver.map")
    image = ElfImage.open(build(tmp_path, {"ver.c": VERSIONED_C}, *flags, out="libver.so"))
    assert image.is_pie_or_shared and image.has_symtab
    # Symbols a version script (or hidden visibility) demotes become locals of
    # the linker's own STT_FILE "" group, not of ver.c.
    assert image.find_file_local("new_impl", "ver.c") == []
    (new_impl,) = image.find_file_local("new_impl", "")
    (old_impl,) = image.find_file_local("old_impl", "")
    for found in (image.find_global("api"), image.find_dynamic_symbol("api")):
        assert found is not None and found.value == new_impl.value != old_impl.value
    plain_sym = image.find_global("plain")
    assert plain_sym is not None and image.find_dynamic_symbol("plain") == plain_sym
    assert image.find_dynamic_symbol("new_impl") is None  # local: not exported


def readelf_dynsyms(path: Path) -> Iterator[tuple[str, bool, int, str]]:
    """(name, is_default_version, value, type) of defined .dynsym entries, per readelf."""
    out = subprocess.run(
        ["readelf", "-W", "--dyn-syms", str(path)], capture_output=True, text=True, check=True
    ).stdout
    pattern = re.compile(r"^\s*\d+:\s+([0-9a-f]+)\s+\S+\s+(\w+)\s+\w+\s+\w+\s+(\S+)\s+(\S+)")
    for line in out.splitlines():
        m = pattern.match(line)
        if m is None or m[3] == "UND":
            continue
        name, at, version = m[4].partition("@")
        yield name, not at or version.startswith("@"), int(m[1], 16), m[2]


@pytest.fixture(scope="module")
def libc() -> ElfImage:
    if not LIBC.exists():
        pytest.skip(f"{LIBC} is not present")
    return ElfImage.open(LIBC)


def test_libc_ifunc_and_irelative(libc: ElfImage) -> None:
    assert libc.soname == "libc.so.6" and libc.is_pie_or_shared
    for name in ("strlen", "memcpy"):
        sym = libc.find_dynamic_symbol(name)
        assert sym is not None and sym.type == STT_GNU_IFUNC and sym.bind == STB_GLOBAL
        slot = libc.find_irelative_slot(sym.value)
        assert slot is not None
        (reloc,) = [r for r in libc.dynamic_relocations if r.offset == slot]
        assert reloc.type == R_X86_64_IRELATIVE and reloc.addend == sym.value
        assert libc.find_global(name) == sym
    assert libc.find_irelative_slot(1) is None
    assert libc.find_dynamic_symbol("relive_no_such_symbol") is None
    assert libc.tls_segment is not None


def test_libc_gnu_hash_agrees_with_bulk_table(libc: ElfImage) -> None:
    bulk: dict[str, list[tuple[int, int]]] = {}
    for sym in libc.iter_dynamic_symbols():
        if sym.is_defined and not sym.is_local:
            bulk.setdefault(sym.name, []).append((sym.value, sym.type))
    rng = random.Random(20240607)
    names = [*rng.sample(sorted(bulk), 200), "memcpy", "strlen", "printf", "environ"]
    for name in names:
        found = libc.find_dynamic_symbol(name)
        assert found is not None, name
        assert (found.value, found.type) in bulk[name], name
    need_program("readelf")
    default = {name: (value, kind) for name, ok, value, kind in readelf_dynsyms(LIBC) if ok}
    for name in names:
        if name in default:
            found = libc.find_dynamic_symbol(name)
            assert found is not None and found.value == default[name][0], name


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_a_relocation_found_by_offset_is_the_decoded_one(tmp_path: Path, cc: str) -> None:
    """``relocation_at`` decodes one entry of a debug section's table (a big unit's
    ``.debug_info`` has hundreds of thousands): it must be the entry a full decode
    gives at that offset, and None where nothing is relocated."""
    need_program(cc)
    path = build(tmp_path, {"demo.c": DEMO_C}, *OBJ_FLAGS, out="demo.o", cc=cc)
    info = section_named(ObjectFile.open(path), ".debug_info")
    looked_up = ObjectFile.open(path)  # nothing decoded yet: the one-entry path
    decoded = ObjectFile.open(path).relocations[info]
    assert len(decoded) >= 3  # clang's DWARF 5 puts most addresses in .debug_addr
    for reloc in decoded:
        assert looked_up.relocation_at(info, reloc.offset) == reloc
    relocated = {r.offset for r in decoded}
    free = next(o for o in range(1, max(relocated)) if o not in relocated)
    assert looked_up.relocation_at(info, free) is None
    assert looked_up.relocation_at(info, max(relocated) + 1) is None


def _rela_of(data: bytes, target: int) -> tuple[int, int]:
    """(file offset, size) of the SHT_RELA section that applies to section ``target``."""
    shoff, shnum = struct.unpack_from("<Q", data, 0x28)[0], struct.unpack_from("<H", data, 0x3C)[0]
    for i in range(shnum):
        at = shoff + 64 * i
        kind, info = (
            struct.unpack_from("<I", data, at + 4)[0],
            struct.unpack_from("<I", data, at + 44)[0],
        )
        if kind == SHT_RELA and info == target:
            offset, size = struct.unpack_from("<QQ", data, at + 24)
            return offset, size
    raise AssertionError(f"no relocation table for section {target}")


def test_a_relocation_table_out_of_order_is_looked_up_whole(tmp_path: Path) -> None:
    """The bisection over a RELA table's offsets holds only for a table in offset
    order, as gcc writes it: the same object with its ``.rela.debug_info`` reversed
    gives the same relocations by offset, and the same DWARF."""
    path = build(tmp_path, {"demo.c": DEMO_C}, *OBJ_FLAGS, out="demo.o")
    data = path.read_bytes()
    ordered = ObjectFile.open(path)
    info = section_named(ordered, ".debug_info")
    offset, size = _rela_of(data, info)
    entries = [data[offset + k : offset + k + 24] for k in range(0, size, 24)]
    assert len(entries) >= 3
    reversed_path = tmp_path / "reversed.o"
    reversed_path.write_bytes(data[:offset] + b"".join(reversed(entries)) + data[offset + size :])
    shuffled = ObjectFile.open(reversed_path)
    decoded = ordered.relocations[info]
    for reloc in decoded:
        assert shuffled.relocation_at(info, reloc.offset) == reloc
    assert shuffled.relocation_at(info, max(r.offset for r in decoded) + 1) is None
    unit, same_unit = ordered.dwarf().find_unit(), shuffled.dwarf().find_unit()
    assert unit is not None and same_unit is not None
    assert (same_unit.name, same_unit.comp_dir) == (unit.name, unit.comp_dir)


def test_debug_sections_are_views_of_the_one_read(tmp_path: Path) -> None:
    """What the program never maps (DWARF, symbols, relocations) is not copied out of
    the bytes read from the file, and the object's DWARF reads those same bytes."""
    obj = ObjectFile.open(build(tmp_path, {"demo.c": DEMO_C}, *OBJ_FLAGS, out="demo.o"))
    assert obj.contents is not None
    info = obj.sections[section_named(obj, ".debug_info")]
    assert isinstance(info.data, memoryview) and info.data.obj is obj.contents
    code = obj.sections[section_named(obj, ".text.bump")]
    assert isinstance(code.data, bytes) and code.content() is code.data
    assert obj.dwarf().data is obj.contents
    assert obj.dwarf() is obj.dwarf()


def test_symbols_by_section_agree_with_a_scan(tmp_path: Path) -> None:
    """The index of symbols by section (two arrays) gives what a walk over the
    symbols gives, in symbol order, for every section and the special indices."""
    source = (
        DEMO_C
        + "int tentative;\nstatic int two(void) { return 2; }\nint use(void) { return two(); }\n"
    )
    obj = ObjectFile.open(build(tmp_path, {"demo.c": source}, *OBJ_FLAGS, "-fcommon", out="demo.o"))
    wanted = {s.shndx for s in obj.symbols} | set(range(len(obj.sections))) | {0xFFF1, 0xFFF2}
    assert 0xFFF2 in {s.shndx for s in obj.symbols}  # a tentative definition: SHN_COMMON
    for index in sorted(wanted):
        expected = [s for s in obj.symbols if s.shndx == index and s.shndx and not s.is_section]
        assert list(obj.iter_section_symbols(index)) == expected, index

"""The light walk over a unit's function statics against pyelftools, the oracle.

``relive.elf.dwarf_statics`` skips every attribute it does not need by its
form's size and names only the functions that hold a static.  pyelftools decodes
every DIE; both must list the same statics (function, name, location, position
of the address operand), in the same order: gcc and clang, DWARF 4 and 5, -O0
and -O2 (inlined functions, out-of-line instances named through their origin),
relocatable objects and linked executables.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile

from relive.elf import dwarf_statics
from relive.elf.dwarf_statics import FunctionStatic, function_statics, iter_function_statics
from relive.elf.dwarf_types import Malformed, TypeUnit, open_dwarf
from support import need_program

SOURCE = r"""
#include <stdio.h>
static int file_level;
struct pair { int a, b; };
static inline int shared(int x) {
    static int inlined_calls;
    return x + ++inlined_calls;
}
__attribute__((noinline)) int counter(int n) {
    static int count = 3;
    static const char *last;
    extern int elsewhere;
    last = "counter";
    if (n > 2) {
        static long count = 7;
        count += n;
        {
            static struct pair deep = {1, 2};
            deep.a += (int)count;
            n += deep.a;
        }
    }
    return ++count + n + shared(n) + (last != 0) + elsewhere;
}
int elsewhere = 4;
__attribute__((noinline)) int plain(int x) { int y = x * 2; return y + file_level++; }
int (*keep)(int) = shared;
int main(int argc, char **argv) {
    (void)argv;
    static char buffer[16];
    buffer[0] = (char)argc;
    printf("%d\n", counter(argc) + plain(argc) + shared(argc) + keep(1) + buffer[0]);
    return 0;
}
"""

BUILDS = [
    pytest.param(compiler, version, level, id=f"{compiler}-dwarf{version}{level}")
    for compiler in ("gcc", "clang")
    for version in (4, 5)
    for level in ("-O0", "-O2")
]

_LOCAL_BLOCKS = {"DW_TAG_lexical_block"}
_BLOCK_LENGTHS = {"DW_FORM_exprloc": 0, "DW_FORM_block": 0, "DW_FORM_block1": 1}


def _uleb_size(value: int) -> int:
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def _name(die: Any, hops: int = 3) -> str | None:
    for _ in range(hops):
        if "DW_AT_name" in die.attributes:
            return str(die.attributes["DW_AT_name"].value.decode())
        for attr in ("DW_AT_abstract_origin", "DW_AT_specification"):
            if attr in die.attributes:
                die = die.get_DIE_from_attribute(attr)
                break
        else:
            return None
    return None


def _oracle(
    path: Path, forms: tuple[str, ...] = tuple(_BLOCK_LENGTHS)
) -> list[tuple[str, str, int, int]]:
    """(function, name, location length, operand position) by pyelftools, for the
    locations given in one of ``forms``."""
    found: list[tuple[str, str, int, int]] = []
    with path.open("rb") as f:
        dwarf = ELFFile(f).get_dwarf_info()
        for cu in dwarf.iter_CUs():
            for function in cu.get_top_DIE().iter_children():
                if function.tag != "DW_TAG_subprogram":
                    continue
                found.extend(_oracle_statics(function, _name(function), forms))
    return found


def _oracle_statics(
    block: Any, function: str | None, forms: tuple[str, ...]
) -> list[tuple[str, str, int, int]]:
    found: list[tuple[str, str, int, int]] = []
    for child in block.iter_children():
        if child.tag in _LOCAL_BLOCKS:
            found.extend(_oracle_statics(child, function, forms))
            continue
        location = child.attributes.get("DW_AT_location")
        if child.tag != "DW_TAG_variable" or location is None:
            continue
        if location.form not in forms:
            continue
        value = location.value
        if len(value) != 9 or value[0] != 0x03:
            continue
        name = _name(child)
        if function is None or name is None:
            continue
        length = _BLOCK_LENGTHS[location.form] or _uleb_size(len(value))
        found.append((function, name, len(value), location.offset + length + 1))
    return found


def _ours(path: Path) -> list[FunctionStatic]:
    unit = open_dwarf(path).find_unit(str(path.with_name("statics.c")))
    assert unit is not None
    return list(iter_function_statics(unit))


def _build(tmp_path: Path, compiler: str, version: int, level: str) -> tuple[Path, Path]:
    need_program(compiler)
    (tmp_path / "statics.c").write_text(SOURCE)
    flags = [f"-gdwarf-{version}", level, "-fno-omit-frame-pointer"]
    obj, exe = tmp_path / "statics.o", tmp_path / "statics"
    subprocess.run([compiler, *flags, "-c", "statics.c", "-o", obj.name], cwd=tmp_path, check=True)
    subprocess.run([compiler, *flags, "statics.c", "-o", exe.name], cwd=tmp_path, check=True)
    return obj, exe


@pytest.mark.parametrize(("compiler", "version", "level"), BUILDS)
def test_statics_match_pyelftools(tmp_path: Path, compiler: str, version: int, level: str) -> None:
    obj, exe = _build(tmp_path, compiler, version, level)
    for path in (obj, exe):
        ours = _ours(path)
        expected = _oracle(path)
        assert [(s.function, s.name, len(s.location), s.operand) for s in ours] == expected
        names = {(s.function, s.name) for s in ours}
        if compiler == "clang" and version >= 5:
            # clang's DWARF 5 locates statics by DW_OP_addrx: not read (binding by name).
            assert names == set()
            continue
        assert ("counter", "count") in names
        if compiler == "gcc" or level == "-O0":
            # clang -O2 folds the block's static and main's buffer away.
            assert {("counter", "deep"), ("main", "buffer")} <= names
        assert all(s.location[0] == 0x03 for s in ours)
        assert not any(s.name in ("file_level", "elsewhere") for s in ours)
    # A linked program's operands hold the statics' addresses.
    with exe.open("rb") as f:
        info = ELFFile(f).get_section_by_name(".debug_info")
        assert info is not None
        data = info.data()
    for static in _ours(exe):
        assert static.operand is not None
        operand = data[static.operand : static.operand + 8]
        assert static.location[1:] == operand
        assert int.from_bytes(operand, "little") != 0


#: A unit written by hand: forms no compiler emits for C (DW_FORM_indirect for a
#: name, a location and an attribute before one; block1 locations, as DWARF 2
#: and 3 give them), in a function, a lexical block and at the top level.
INDIRECT = r"""
    .text
    .globl main
main:
    xorl %eax, %eax
    ret
    .bss
file_level: .zero 8
count_a: .zero 8
count_b: .zero 8
tail: .zero 8
    .section .note.GNU-stack,"",@progbits
    .section .debug_abbrev,"",@progbits
abbrevs:
    .uleb128 1, 0x11; .byte 1; .uleb128 0x03, 0x08, 0x1b, 0x08, 0, 0
    .uleb128 2, 0x2e; .byte 1; .uleb128 0x03, 0x08, 0x3f, 0x19, 0, 0
    .uleb128 3, 0x34; .byte 0; .uleb128 0x03, 0x16, 0x02, 0x16, 0, 0
    .uleb128 4, 0x0b; .byte 1; .uleb128 0, 0
    .uleb128 5, 0x34; .byte 0; .uleb128 0x3b, 0x16, 0x03, 0x08, 0x02, 0x18, 0, 0
    .uleb128 6, 0x34; .byte 0; .uleb128 0x03, 0x08, 0x02, 0x0a, 0, 0
    .uleb128 7, 0x05; .byte 0; .uleb128 0x03, 0x16, 0x02, 0x18, 0, 0
    .byte 0
    .section .debug_info,"",@progbits
    .long end - start
start:
    .short 4
    .long abbrevs
    .byte 8
    .uleb128 1; .asciz "statics.c"; .asciz "COMP_DIR"
    .uleb128 6; .asciz "file_level"; .byte 9, 0x03; .quad file_level
    .uleb128 2; .asciz "f"
    .uleb128 7; .uleb128 0x08; .asciz "n"; .uleb128 2; .byte 0x91, 0x6c
    .uleb128 3; .uleb128 0x08; .asciz "count"; .uleb128 0x18, 9; .byte 0x03; .quad count_a
    .uleb128 4
    .uleb128 5; .uleb128 0x0b; .byte 7; .asciz "count"; .uleb128 9; .byte 0x03; .quad count_b
    .byte 0
    .uleb128 6; .asciz "tail"; .byte 9, 0x03; .quad tail
    .byte 0
    .byte 0
end:
"""


def test_indirect_forms_and_blocks_match_pyelftools(tmp_path: Path) -> None:
    need_program("gcc")
    (tmp_path / "statics.s").write_text(INDIRECT.replace("COMP_DIR", str(tmp_path)))
    obj, exe = tmp_path / "statics.o", tmp_path / "statics"
    subprocess.run(["gcc", "-c", "statics.s", "-o", obj.name], cwd=tmp_path, check=True)
    subprocess.run(["gcc", "statics.o", "-o", exe.name], cwd=tmp_path, check=True)
    for path in (obj, exe):
        ours = _ours(path)
        expected = _oracle(path, forms=("DW_FORM_exprloc", "DW_FORM_block1"))
        assert [(s.function, s.name) for s in ours] == [("f", "count")] * 2 + [("f", "tail")]
        # A location given through DW_FORM_indirect has no operand position (as the
        # general reader gives none); the others are where pyelftools finds them.
        assert ours[0].operand is None
        assert [(s.function, s.name, len(s.location)) for s in ours] == [e[:3] for e in expected]
        assert [s.operand for s in ours[1:]] == [e[3] for e in expected[1:]]


def test_running_side_walked_once_for_concurrent_readers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The running program's statics are read while the compiler runs and again
    when binding: one walk, whoever comes second waits for it."""
    _, exe = _build(tmp_path, "gcc", 5, "-O2")
    unit = open_dwarf(exe).find_unit(str(tmp_path / "statics.c"))
    assert unit is not None
    walks: list[int] = []
    walk = dwarf_statics.iter_function_statics

    def counted(unit: TypeUnit) -> Iterator[FunctionStatic]:
        walks.append(unit.start)
        time.sleep(0.2)  # the second reader arrives while the first walks
        return walk(unit)

    monkeypatch.setattr(dwarf_statics, "iter_function_statics", counted)
    answers: list[tuple[FunctionStatic, ...]] = []
    readers = [
        threading.Thread(target=lambda: answers.append(function_statics(unit))) for _ in range(2)
    ]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    assert walks == [unit.start]
    assert answers[0] is answers[1]
    assert answers[0] == tuple(walk(unit))
    assert function_statics(unit) is answers[0]


#: Units with a DW_AT_sibling that leads backwards: of a function (the index jumps
#: over it, the statics' walk enters it), or of a struct (both jump over it: the
#: sibling comes first, at a fixed place).
BACKWARDS = r"""
    .section .note.GNU-stack,"",@progbits
    .section .debug_abbrev,"",@progbits
abbrevs:
    .uleb128 1, 0x11; .byte 1; .uleb128 0x03, 0x08, 0, 0
    .uleb128 2, 0x2e; .byte 1; .uleb128 0x03, 0x08, 0x01, 0x13, 0, 0
    .uleb128 3, 0x34; .byte 0; .uleb128 0x03, 0x08, 0, 0
    .uleb128 4, 0x13; .byte 1; .uleb128 0x01, 0x13, 0x03, 0x08, 0, 0
    .uleb128 5, 0x0d; .byte 0; .uleb128 0x03, 0x08, 0, 0
    .byte 0
    .section .debug_info,"",@progbits
unit:
    .long end - start
start:
    .short 4
    .long abbrevs
    .byte 8
    .uleb128 1; .asciz "statics.c"
first:
    BODY
    .byte 0
end:
"""
FUNCTIONS = """
    .uleb128 2; .asciz "f"; .long second - unit
    .uleb128 3; .asciz "x"
    .byte 0
second:
    .uleb128 2; .asciz "g"; .long first - unit
    .uleb128 3; .asciz "y"
    .byte 0
"""
STRUCT = """
    .uleb128 4; .long first - unit; .asciz "s"
    .uleb128 5; .asciz "m"
    .byte 0
"""


@pytest.mark.parametrize(("body", "walked"), [(FUNCTIONS, True), (STRUCT, False)])
def test_a_sibling_leading_backwards_is_malformed(tmp_path: Path, body: str, walked: bool) -> None:
    """A reader that jumps over subtrees must not loop on a DW_AT_sibling that
    leads back: the index and the statics' walk call the DWARF malformed."""
    need_program("gcc")
    (tmp_path / "statics.s").write_text(BACKWARDS.replace("BODY", body))
    obj = tmp_path / "statics.o"
    subprocess.run(["gcc", "-c", "statics.s", "-o", obj.name], cwd=tmp_path, check=True)
    unit = open_dwarf(obj).find_unit()
    assert unit is not None
    with pytest.raises(Malformed, match="backwards"):
        unit.index()
    if walked:  # entered, not jumped over: nothing there is a static
        assert list(iter_function_statics(unit)) == []
    else:
        with pytest.raises(Malformed, match="backwards"):
            list(iter_function_statics(unit))

"""The block's unwind table holds the CIEs and FDEs of the code it loads, and no more.

Pure link tests read the table relive links with pyelftools (through the debug
object, the ELF file tools load) and compare each kept record with the object's
own; the live test reloads one function of a many-function C program and checks
the table in the target's memory and that ``backtrace()`` walks through the new
code.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from elftools.dwarf.callframe import CIE, FDE
from elftools.elf.elffile import ELFFile

from relive.arch.x86_64 import ARCH
from relive.elf.objfile import ObjectFile
from relive.link import Bound, LinkedImage, LinkRequest, link, plan_layout
from relive.link.debuginfo import build_debug_object
from relive.patch.debugfiles import list_debug_objects
from support import BACKTRACE_PROG, SpawnFactory, compile_c, reload

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed")

#: Functions of the generated files; each has its own frame (calls, locals).
FUNCTIONS = 300


def _many_functions(count: int) -> str:
    body = ["int sink;"]
    for n in range(count):
        body.append(
            f"__attribute__((noinline)) int f{n}(int x) {{ volatile char b[{16 + n % 7}]; "
            f"for (int i = 0; i < x; i++) b[i % sizeof b] = (char)(x + i); "
            f"sink += b[x % sizeof b]; return x * {n + 1}; }}"
        )
    return "\n".join(body) + "\n"


#: A function with a cleanup (an LSDA and a personality routine: a second CIE under
#: -fexceptions) beside plain ones.
CLEANUP = r"""
__attribute__((noinline)) void release(int *p) { sink += *p; }
int (*volatile hook)(int) = f1;  /* a call that may throw: the cleanup needs an LSDA */
__attribute__((noinline)) int guarded(int x) {
    __attribute__((cleanup(release))) int held = x;
    return hook(held) + 1;
}
"""


def _compile(tmp: Path, source: str, *flags: str) -> ObjectFile:
    (tmp / "unit.c").write_text(source)
    out = tmp / "unit.o"
    subprocess.run(
        ["gcc", "-c", "-g", "-O2", "-fPIE", "-ffunction-sections", *flags, "-o", out, "unit.c"],
        check=True,
        cwd=tmp,
    )
    return ObjectFile.open(out)


def _link(
    obj: ObjectFile, *functions: str, also: frozenset[int] = frozenset()
) -> tuple[LinkedImage, dict[str, int]]:
    """Load the sections of ``functions`` and what they refer to (in this file, not
    the other functions: each is called, not inlined), and ``also``; the functions'
    runtime addresses."""
    load: set[int] = set(also)
    todo = [obj.find_symbol(f).shndx for f in functions]  # type: ignore[union-attr]
    while todo:
        index = todo.pop()
        if index not in load:
            load.add(index)
            todo.extend(
                r.symbol.shndx
                for r in obj.relocations.get(index, ())
                if r.symbol.is_defined and not r.symbol.is_absolute
            )
    externals = {  # (_Unwind_Resume, under -fexceptions), somewhere near
        s.name: Bound(address=0x5555_2000_0000) for s in obj.symbols if s.name and not s.is_defined
    }
    request = LinkRequest(obj=obj, arch=ARCH, load=frozenset(load), externals=externals)
    image = link(plan_layout(request), 0x5555_0000_0000)
    return image, {f: image.get_symbol_address(obj.find_symbol(f)) for f in functions}  # type: ignore[arg-type]


def _entries(image: LinkedImage) -> list[CIE | FDE]:
    elf = ELFFile(BytesIO(build_debug_object(image, "unit.c")))
    return [e for e in elf.get_dwarf_info().EH_CFI_entries() if isinstance(e, CIE | FDE)]


def _records(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of each record of an ``.eh_frame``, up to its terminator."""
    pos = 0
    while pos + 4 <= len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        if length == 0:
            return
        yield pos, data[pos : pos + 4 + length]
        pos += 4 + length


def _object_fde(obj: ObjectFile, function: str) -> bytes:
    """The object's own FDE of ``function``: the record whose start is relocated
    against its section."""
    [section] = [s for s in obj.sections if s.name == ".eh_frame"]
    shndx = obj.find_symbol(function).shndx  # type: ignore[union-attr]
    [start] = [
        r.offset - 8 for r in obj.relocations.get(section.index, ()) if r.symbol.shndx == shndx
    ]
    return dict(_records(bytes(section.data)))[start]


@needs_gcc
def test_one_function_of_many_links_one_fde(tmp_path: Path) -> None:
    obj = _compile(tmp_path, _many_functions(FUNCTIONS))
    image, addresses = _link(obj, "f150")
    entries = _entries(image)
    fdes = [e for e in entries if isinstance(e, FDE)]
    assert len(fdes) == 1 and len(entries) == 2  # the function's FDE and its CIE
    [fde] = fdes
    function = obj.find_symbol("f150")
    assert function is not None
    assert fde.header.initial_location == addresses["f150"]
    assert fde.header.address_range == function.size
    # The record is the object's own, moved: same length, same call frame program.
    offset = image.layout.eh_frame_offset
    table = image.layout.eh_frame
    assert offset is not None and table is not None
    linked = image.data[offset : offset + table.size + 4]
    [(_, cie), (_, kept)] = list(_records(linked))
    original = _object_fde(obj, "f150")
    assert len(kept) == len(original) and kept[12:] == original[12:]
    assert linked[-4:] == bytes(4)  # the terminator follows
    assert table.size == len(cie) + len(kept) and table.fde_count == 1
    eh_frame = next(s for s in obj.sections if s.name == ".eh_frame")
    assert table.size * 50 < eh_frame.size  # 2 records of 301


@needs_gcc
def test_kept_fdes_find_their_own_cie_and_lsda(tmp_path: Path) -> None:
    source = _many_functions(40) + CLEANUP
    obj = _compile(tmp_path, source, "-fexceptions")
    [except_table] = [s.index for s in obj.sections if s.name.startswith(".gcc_except_table")]
    image, addresses = _link(obj, "f3", "guarded", "f30", also=frozenset({except_table}))
    entries = _entries(image)
    fdes = {e.header.initial_location: e for e in entries if isinstance(e, FDE)}
    loaded = [
        image.get_symbol_address(symbol)
        for symbol in obj.symbols
        if symbol.is_function and symbol.shndx in image.layout.section_offsets
    ]
    assert sorted(fdes) == sorted(loaded)  # f3, guarded, f30 and what they refer to
    assert len(loaded) < 10
    cies = [e for e in entries if isinstance(e, CIE)]
    assert len(cies) == 2  # the plain one and the one with a personality routine
    guarded = fdes[addresses["guarded"]]
    assert guarded.cie is not None and b"P" in guarded.cie.header.augmentation
    # Its LSDA pointer, relocated in the moved record, leads to the loaded table.
    assert guarded.lsda_pointer == image.find_section_address(except_table)
    for name in ("f3", "f30"):  # plain ones
        plain = fdes[addresses[name]]
        assert plain.cie is not None and plain.cie.header.augmentation == b"zR"
        assert plain.header.address_range == obj.find_symbol(name).size  # type: ignore[union-attr]


@needs_gcc
def test_code_without_fdes_gets_no_table(tmp_path: Path) -> None:
    obj = _compile(tmp_path, _many_functions(3), "-fno-asynchronous-unwind-tables")
    image, _ = _link(obj, "f1")
    assert image.layout.eh_frame is None and image.eh_frame_address is None


def _records_in_memory(pid: int, address: int) -> list[bytes]:
    """The records of the unwind table at ``address`` in the process, read from its
    memory up to the terminator."""
    records: list[bytes] = []
    with open(f"/proc/{pid}/mem", "rb") as mem:
        while True:
            mem.seek(address)
            (length,) = struct.unpack("<I", mem.read(4))
            if length == 0:
                return records
            mem.seek(address)
            records.append(mem.read(4 + length))
            address += 4 + length


BACKTRACE = BACKTRACE_PROG.replace(
    'printf("frames=%d\\n", depth1())', 'printf("frames=%d sink=%d\\n", depth1(), f7(1))'
)


def test_one_function_reload_registers_one_fde_and_backtrace_walks_it(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = compile_c(
        tmp_path, _many_functions(FUNCTIONS) + BACKTRACE, flags=("-g", "-O0", "-ffunction-sections")
    )
    target = spawn([exe])
    before = int(target.wait_for(r"frames=(\d+)").group(1))
    source = tmp_path / "prog.c"
    source.write_text(source.read_text().replace("depth3() + 0", "depth3() + 1000"))
    reload(target.pid, source)
    after = int(target.wait_for(r"frames=(1\d\d\d)", after=target.mark()).group(1))
    assert after - 1000 == before  # every frame found, through the new depth2
    [debug_object] = list_debug_objects(target.pid)
    manifest = json.loads((debug_object.path.parent / "manifest.json").read_text())
    [table_address] = [e["unwind_table"] for e in manifest]
    assert table_address is not None  # registered with the program's unwinder
    records = _records_in_memory(target.pid, table_address)
    fdes = [data for data in records if struct.unpack_from("<I", data, 4)[0] != 0]
    assert len(fdes) == 1 and len(records) == 2  # depth2's FDE and its CIE

"""relive's .eh_frame reader agrees with pyelftools on every row of real binaries."""

from __future__ import annotations

from pathlib import Path

import pytest
from elftools.dwarf.callframe import FDE
from elftools.elf.elffile import ELFFile

from relive.elf.cfi import FrameTable, load_frame_table
from support import compile_c

PROG = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((noinline)) long walk(long n) {
    long a[n + 1];  /* a variable-length array: the CFA moves to the frame pointer */
    a[n] = n;
    return n ? walk(n - 1) + a[n] : 0;
}
int main(int argc, char **argv) { (void)argv; printf("%ld\n", walk(argc + 3)); return 0; }
"""

LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6")


def _compare(path: Path, limit: int) -> int:
    table = load_frame_table(str(path))
    assert table is not None
    checked = 0
    with path.open("rb") as handle:
        entries = ELFFile(handle).get_dwarf_info().EH_CFI_entries()
        for entry in entries:
            if not isinstance(entry, FDE):
                continue
            for line in entry.get_decoded().table:
                row = table.find_row(line["pc"])
                assert row is not None, hex(line["pc"])
                cfa = line["cfa"]
                if cfa.expr is None:
                    assert (row.cfa_register, row.cfa_offset) == (cfa.reg, cfa.offset)
                else:
                    assert row.cfa_expression
                for register, rule in line.items():
                    if isinstance(register, int) and rule.type == "OFFSET":
                        mine = row.rules[register]
                        assert (mine.kind, mine.value) == ("offset", rule.arg), hex(line["pc"])
                checked += 1
            if checked >= limit:
                break
    return checked


def test_rows_of_a_compiled_program_match(tmp_path: Path) -> None:
    exe = compile_c(tmp_path, PROG, flags=("-g", "-O2"))
    assert _compare(exe, 10_000) > 5


@pytest.mark.skipif(not LIBC.exists(), reason="no glibc at the Debian path")
def test_rows_of_libc_match() -> None:
    assert _compare(LIBC, 3_000) >= 3_000


def _eh_sections(path: Path) -> tuple[bytes, int, bytes, int]:
    with path.open("rb") as handle:
        elf = ELFFile(handle)
        frames = elf.get_section_by_name(".eh_frame")
        header = elf.get_section_by_name(".eh_frame_hdr")
        assert frames is not None and header is not None
        return frames.data(), frames["sh_addr"], header.data(), header["sh_addr"]


@pytest.mark.parametrize("which", ["program", "libc"])
def test_the_eh_frame_hdr_index_agrees_with_reading_every_fde(tmp_path: Path, which: str) -> None:
    path = compile_c(tmp_path, PROG, flags=("-O2",)) if which == "program" else LIBC
    if not path.exists():
        pytest.skip(f"{path} not found")
    frames, address, header, header_address = _eh_sections(path)
    indexed = FrameTable.from_search_table(frames, address, header, header_address)
    scanned = FrameTable.from_section(frames, address)
    assert indexed is not None and not indexed.ends  # the fast path, FDEs not read
    assert indexed.starts == scanned.starts and indexed.offsets == scanned.offsets
    probes = {a + d for a in scanned.starts for d in (-1, 0, 1)}
    probes |= {e + d for e in scanned.ends for d in (-1, 0)}
    for probe in sorted(probes):
        assert indexed.find_row(probe) == scanned.find_row(probe), hex(probe)
    unusual = bytes((1, 0x1B, 0x03, 0x1B)) + header[4:]  # a table encoding we do not read
    assert FrameTable.from_search_table(frames, address, unusual, header_address) is None

"""relive's .eh_frame reader agrees with pyelftools on every row of real binaries."""

from __future__ import annotations

from pathlib import Path

import pytest
from elftools.dwarf.callframe import FDE
from elftools.elf.elffile import ELFFile

from relive.elf.cfi import load_frame_table
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

"""A reload loads only the data its new code can reach (a linker's --gc-sections).

A unit's read-only tables that the changed function never refers to stay out of
the block: its data part holds the changed function's own constants and strings,
which it reads correctly while the program runs, and no copy of the big table.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from relive.patch.journal import load_journal
from support import RELIVE, SpawnFactory, compile_c, edit, kinds, read_memory, reload

#: Entries of the unrelated table (4 bytes each: 256 KiB), as SOURCE defines them.
BIG_ENTRIES = 65536

SOURCE = r"""
#include <stdio.h>
#include <unistd.h>
#define BIG_ENTRIES 65536 /* as in the test */
#define ROW(n) n##1u, n##2u, n##3u, n##4u, n##5u, n##6u, n##7u, n##8u
#define ROWS(n) ROW(n##1), ROW(n##2), ROW(n##3), ROW(n##4), \
                ROW(n##5), ROW(n##6), ROW(n##7), ROW(n##8)
/* Irregular values: never all zeros (that would be .bss), never bound by name. */
static const unsigned big[BIG_ENTRIES] = { ROWS(1), ROWS(2), ROWS(3), ROWS(4) };
volatile unsigned three = 3;
__attribute__((noinline)) unsigned lookup(unsigned i) {
    return big[i * 977u % (unsigned)BIG_ENTRIES];
}
__attribute__((noinline)) int compute(unsigned k) {
    static const int mine[8] = {11, 22, 33, 44, 55, 66, 77, 88};
    return mine[k & 7] + 1;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) {
        printf("lookup %u compute %d\n", lookup(three), compute(three));
        usleep(20000);
    }
}
"""


def _data_bytes(pid: int) -> tuple[int, int]:
    """(address, size) of the object's data the newest block loaded."""
    block = load_journal(pid).blocks[-1]
    address, size = block.data
    return address, size


def test_one_function_reload_loads_its_own_table_not_the_units_big_one(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = compile_c(tmp_path, SOURCE, flags=("-g", "-O2"))
    target = spawn([exe])
    target.wait_for(r"^lookup \d+ compute 45$")
    source = tmp_path / "prog.c"
    edit(source, "{11, 22, 33, 44, 55, 66, 77, 88}", "{11, 22, 33, 47, 55, 66, 77, 88}")
    edit(source, "return mine[k & 7] + 1;", "return mine[k & 7] + 2;")
    events = reload(target.pid, source)
    assert kinds(events).get("redirected") == ["compute"]
    target.wait_for(r"^lookup \d+ compute 49$", after=target.mark())
    address, size = _data_bytes(target.pid)
    # The changed function's own table is there, new values and all...
    assert 8 * 4 <= size < BIG_ENTRIES * 4 // 16, size
    loaded = read_memory(target.pid, address, size)
    mine = b"".join(v.to_bytes(4, "little") for v in (11, 22, 33, 47, 55, 66, 77, 88))
    assert mine in loaded
    # ...and no part of the unit's big table, which nothing loaded refers to.
    assert (111).to_bytes(4, "little") + (112).to_bytes(4, "little") not in loaded
    if shutil.which("gdb") is not None:
        # The reload's debug object does not claim the table: gdb reads the program's.
        gdb = subprocess.run(
            [*RELIVE, "gdb", "-p", str(target.pid), "--", "-batch", "-ex", "print big[1]"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert re.search(r"^\$1 = 112$", gdb.stdout, re.M), gdb.stdout + gdb.stderr


CHAINED = r"""
#include <stdio.h>
#include <unistd.h>
volatile unsigned three = 3;
/* A table of pointers to strings (.data.rel.ro.local -> .rodata.str1.1), and a
   switch gcc -O2 turns into a jump table (.rodata -> the function's code). */
__attribute__((noinline)) const char *name(unsigned k) {
    static const char *const names[] = {"zero", "one", "two", "three", "four"};
    return names[k % 5];
}
__attribute__((noinline)) int jump(unsigned k) {
    switch (k) {
    case 0: return three * 2; case 1: return three + 40; case 2: return three * 9;
    case 3: return three - 7; case 4: return three * three; case 5: return three + 3;
    case 6: return three << 4; default: return -1;
    }
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { printf("name %s jump %d\n", name(three), jump(three)); usleep(20000); }
}
"""


def test_loaded_code_reads_tables_it_reaches_through_pointers_and_jump_tables(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = compile_c(tmp_path, CHAINED, flags=("-g", "-O2"))
    target = spawn([exe])
    target.wait_for(r"^name three jump -4$")
    source = tmp_path / "prog.c"
    edit(source, '"two", "three", "four"', '"two", "trois", "four"')
    edit(source, "case 3: return three - 7;", "case 3: return three - 8;")
    events = reload(target.pid, source)
    assert sorted(kinds(events).get("redirected", [])) == ["jump", "name"]
    target.wait_for(r"^name trois jump -5$", after=target.mark())


MAIN = r"""
#include <stdio.h>
#include <unistd.h>
int base(void);
__attribute__((noinline)) void tick(void) { printf("value=%d\n", base()); }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { tick(); usleep(20000); }
}
"""

BASE = "int base(void) { return 1; }\n"
#: A new global no code of its own file uses.
BASE_WITH_GLOBAL = "int added_global = 41;\nint base(void) { return 1; }\n"


@pytest.mark.parametrize("together", [False, True])
def test_a_new_global_is_loaded_for_other_files_even_when_its_own_file_does_not_use_it(
    tmp_path: Path, spawn: SpawnFactory, together: bool
) -> None:
    exe = compile_c(tmp_path, MAIN, extra_sources={"base.c": BASE})
    target = spawn([exe])
    target.wait_for(r"^value=1$")
    (tmp_path / "base.c").write_text(BASE_WITH_GLOBAL)
    main = tmp_path / "prog.c"
    edit(main, "int base(void);", "int base(void);\nextern int added_global;")
    edit(main, "base())", "base() + added_global)")
    if together:
        events = reload(target.pid, tmp_path / "base.c", main)
    else:
        reload(target.pid, tmp_path / "base.c")
        events = reload(target.pid, main)
    assert "tick" in kinds(events)["redirected"]
    target.wait_for(r"^value=42$", after=target.mark())

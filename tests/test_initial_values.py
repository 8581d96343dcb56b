"""Initial values of tables of pointers that the dynamic linker fills in at start-up.

A library's pointer in data to one of its own exported functions, or to libc's,
is written by the dynamic linker as symbol + addend (R_X86_64_64); the file
holds zeros there.  relive compares a variable's new initial value with the one
the program started with, so it must read those words as the dynamic linker
wrote them: sqlite3's ``aSyscall`` (libc functions) and ``sqlite3Apis`` (its own
API) were reported as "initial value changed" at every reload of sqlite3.c.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from relive.elf.constants import R_X86_64_64
from relive.elf.image import ElfImage
from relive.events import Notice
from support import SpawnFactory, compile_c, edit, kinds, reload

LIBRARY = r"""
#include <stdio.h>
#include <string.h>
int api_version(void) { return 1; }
size_t api_length(const char *s) { return 40 + strlen(s); }
/* Pointers the dynamic linker writes: to an export of this library, to libc. */
static struct ops {
    int (*version)(void);
    size_t (*length)(const char *);
    int (*print)(const char *);
} ops = { api_version, strlen, puts };
/* Never called: it keeps gcc from folding ops' pointers into api_tick (as sqlite3's
   xSetSystemCall keeps aSyscall a table). */
void api_set_print(int (*print)(const char *)) { ops.print = print; }
__attribute__((noinline)) void api_tick(int n) {
    char line[64];
    snprintf(line, sizeof line, "tick %d v%d len %zu", n, ops.version(), ops.length("abc"));
    ops.print(line);
}
"""
MAIN = r"""
#include <stdio.h>
#include <unistd.h>
void api_tick(int n);
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int n = 0;; n++) { api_tick(n); usleep(20000); }
}
"""


def test_pointers_the_loader_wrote_are_the_initial_value_not_a_change(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    source = tmp_path / "libapi.c"
    source.write_text(LIBRARY)
    library = tmp_path / "libapi.so"
    subprocess.run(
        ["gcc", "-g", "-O1", "-fPIC", "-shared", "-o", library, source], cwd=tmp_path, check=True
    )
    # The case this is about: ops holds symbol relocations, not relative ones.
    words = [r for r in ElfImage.open(library).dynamic_relocations if r.type == R_X86_64_64]
    assert {"api_version", "strlen", "puts"} <= {r.symbol for r in words}
    link = (f"-L{tmp_path}", "-lapi", f"-Wl,-rpath,{tmp_path}")
    target = spawn([compile_c(tmp_path, MAIN, link_flags=link)], cwd=tmp_path)
    target.wait_for(r"^tick \d+ v1 len 3$")

    edit(source, '"tick %d', '"TICK %d')
    events = reload(target.pid, source)
    assert kinds(events)["redirected"] == ["api_tick"]
    assert [e.message for e in events if isinstance(e, Notice)] == []
    target.wait_for(r"^TICK \d+ v1 len 3$")

    # A real change of the table is still said, and the program keeps its value.
    edit(source, "strlen, puts }", "api_length, puts }")
    events = reload(target.pid, source)
    assert [e.message for e in events if isinstance(e, Notice)] == [
        "ops: initial value changed; the program keeps its current value "
        "(--reinit ops copies the new initial value in)"
    ]
    mark = target.mark()
    target.wait_for(r"^TICK \d+ v1 len 3$", after=mark)

"""Every edit takes effect, or relive refuses it and says why (issue 10, sections 2-5).

Real programs are compiled, run, edited and reloaded while they run; refusals
leave the target with its old code and nothing mapped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support import SpawnFactory, compile_c
from test_reload import edit, kinds, reload

IDENTITY = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) void handler(void) { printf("old handler\n"); }
static __attribute__((noinline)) void quiet(void) { printf("old quiet\n"); }
void (*saved)(void);
void (*saved_quiet)(void);
__attribute__((noinline)) void check(void) {
    printf("same %d %d\n", saved == &handler, saved_quiet == &quiet);
    handler();
    quiet();
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    saved = &handler;
    saved_quiet = &quiet;
    for (;;) { check(); usleep(20000); }
}
"""


@pytest.mark.parametrize("pie", ["-fPIE", "-no-pie"])
@pytest.mark.parametrize("opt", ["-O0", "-O2"])
@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_address_of_a_replaced_function_stays_its_original_entry(
    tmp_path: Path, spawn: SpawnFactory, compiler: str, opt: str, pie: str
) -> None:
    flags = ("-g", opt, pie)
    exe = compile_c(tmp_path, IDENTITY, compiler=compiler, flags=flags)
    target = spawn([exe])
    target.wait_for(r"^same 1 1$")
    source = tmp_path / "prog.c"
    edit(source, "old handler", "new handler")
    edit(source, "old quiet", "new quiet")
    edit(source, '"same %d %d\\n"', '"SAME %d %d\\n"')
    events = reload(target.pid, source)
    assert {"handler", "quiet", "check"} <= set(kinds(events)["redirected"])
    # the new check() compares with &handler taken in new code: still the entry
    # main() saved, and calls go to the new bodies
    target.wait_for(r"^SAME 1 1$")
    target.wait_for(r"^new handler$")
    target.wait_for(r"^new quiet$")

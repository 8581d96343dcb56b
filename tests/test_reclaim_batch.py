"""A program with more than a little memory has its superseded code checked in batches
(issue 13 §3): the check copies the program's memory with its threads held, so
such a program pays it once enough superseded code has gathered, not at every
reload.
"""

from __future__ import annotations

import re
from pathlib import Path

from relive.patch.journal import load_journal
from relive.patch.reclaim import CHECK_EVERY_RELOAD_BELOW, RECLAIM_BATCH
from relive.process.procfs import find_anonymous_resident
from support import SpawnFactory, compile_c, reload

#: ``big()`` is padded past the batch with a jump over filler bytes.
PROGRAM = rf"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* Strings: each block holds data, so a reclaimed one stays in the journal. */
__attribute__((noinline)) int value(int x) {{ if (x < 0) puts("never"); return x + 1; }}
__attribute__((noinline)) int big(int x) {{
    if (x < 0) puts("nor this");
    __asm__ volatile("jmp 1f\n.fill {RECLAIM_BATCH + 4096}, 1, 0xcc\n1:");
    return x + 100;
}}
int main(void) {{
    setvbuf(stdout, NULL, _IONBF, 0);
    size_t size = {4 * CHECK_EVERY_RELOAD_BELOW};
    char *ballast = malloc(size);
    memset(ballast, 1, size);  /* resident: more than a check at every reload */
    for (;;) {{ printf("value %d big %d\n", value(0), big(0)); usleep(2000); }}
}}
"""


def edit(source: Path, function: str, n: int) -> None:
    text = source.read_text()
    pattern = rf"(int {function}\(int x\) {{.*?return x \+ )\d+;"
    source.write_text(re.sub(pattern, rf"\g<1>{n};", text, count=1, flags=re.S))


def test_a_bigger_program_reclaims_once_a_batch_of_superseded_code_gathered(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = compile_c(tmp_path, PROGRAM)
    target = spawn([exe])
    target.wait_for(r"^value 1 big 100$")
    resident = find_anonymous_resident(target.pid)
    assert resident is not None and resident > CHECK_EVERY_RELOAD_BELOW
    source = tmp_path / "prog.c"
    for n in (2, 3, 4):
        edit(source, "value", n)
        reload(target.pid, source)
        target.wait_for(rf"^value {n} big 100$", after=target.mark())
    blocks = load_journal(target.pid).blocks
    assert len(blocks) == 3
    assert not any(b.reclaimed for b in blocks)  # two superseded, far below the batch

    for n in (200, 300):
        edit(source, "big", n)
        reload(target.pid, source)
        target.wait_for(rf"^value 4 big {n}$", after=target.mark())
    blocks = load_journal(target.pid).blocks
    first_big = blocks[3]
    assert first_big.code[1] > RECLAIM_BATCH
    # The second reload of big() superseded more than the batch: that stop checked
    # everything superseded so far and freed it.
    assert [b.reclaimed for b in blocks] == [True, True, False, True, False]
    target.wait_for(r"^value 4 big 300$", after=target.mark())

"""Several files in one reload compile at once; order and errors stay as if one by one."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from relive.errors import CompileError
from relive.events import Compiled
from support import (
    SpawnFactory,
    Target,
    assert_maps_unchanged,
    compile_c,
    edit,
    reload,
    remember_maps,
)

PROG = textwrap.dedent(
    """
    #include <stdio.h>
    #include <unistd.h>
    int part_a(void);
    int part_b(void);
    int main(void) {
        for (;;) {
            printf("sum %d\\n", part_a() + part_b());
            fflush(stdout);
            usleep(20000);
        }
    }
    """
)
PART_A = "int part_a(void) { return 1; }\n"
PART_B = "int part_b(void) { return 10; }\n"


@pytest.fixture
def two_files(tmp_path: Path, spawn: SpawnFactory) -> tuple[Target, Path, Path]:
    exe = compile_c(tmp_path, PROG, extra_sources={"part_a.c": PART_A, "part_b.c": PART_B})
    target = spawn([exe])
    target.wait_for(r"^sum 11$")
    return remember_maps(target), tmp_path / "part_a.c", tmp_path / "part_b.c"


def test_two_files_compiled_together_are_reported_in_order(
    two_files: tuple[Target, Path, Path],
) -> None:
    target, part_a, part_b = two_files
    edit(part_a, "return 1;", "return 2;")
    edit(part_b, "return 10;", "return 20;")
    events = reload(target.pid, part_b, part_a)
    compiled = [Path(e.source).name for e in events if isinstance(e, Compiled)]
    assert compiled == ["part_b.c", "part_a.c"]
    target.wait_for(r"^sum 22$")


@pytest.mark.parametrize("order", [("part_a.c", "part_b.c"), ("part_b.c", "part_a.c")])
def test_the_first_file_with_an_error_is_the_one_reported(
    two_files: tuple[Target, Path, Path],
    order: tuple[str, str],
) -> None:
    target, part_a, part_b = two_files
    edit(part_a, "return 1;", "return 1 +;")
    edit(part_b, "return 10;", "return 10 +;")
    folder = part_a.parent
    with pytest.raises(CompileError) as info:
        reload(target.pid, folder / order[0], folder / order[1])
    assert f"{order[0]}:1:" in str(info.value)
    assert_maps_unchanged(target)
    target.wait_for(r"^sum 11$")

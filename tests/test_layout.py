"""Type and layout changes, checked from DWARF before anything is written (issue 10 §1).

A running program is reloaded with an edit that changes a type its data has:
the reload is refused with exit 8 and a line saying what changed, the target
keeps running its old code with its state, and nothing was mapped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import relive
from relive.cli.main import main
from relive.patch.journal import load_journal
from support import SpawnFactory, Target, compile_c, edit

STATS_H = "struct stats { long hits; long misses; char tag[8]; };\n"

PROG = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include "stats.h"
long counter;
enum mode { SLOW, FAST } mode = FAST;
struct flags { unsigned ready : 3; unsigned level : 5; } flags = {1, 2};
static struct stats *stats;
long scale(int x);
__attribute__((noinline)) void tick(void) {
    struct point { int x, y; } here = {1, 2};
    static long calls;
    calls++;
    counter++;
    stats->hits++;
    printf("tick %ld hits %ld mode %d level %d scale %ld at %d\n", (long)counter, stats->hits,
           (int)(mode == FAST), (int)flags.level, scale(2), here.x + here.y);
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    stats = calloc(1, sizeof *stats);
    for (;;) { tick(); usleep(20000); }
}
"""

LIB = "__attribute__((noinline)) long scale(int x) { return x * 2; }\n"


def run_cli_printed(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run the CLI; its exit code and everything it printed (stdout, then stderr)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


HINT = (
    " (objects already in the program keep the old layout; restart to change it, or reload "
    "with --allow-layout-change if you convert them yourself)"
)
TICK = re.compile(r"^tick (\d+) hits (\d+) mode 1 level 2 scale (\d+) at (\d+)$")


def start(tmp_path: Path, spawn: SpawnFactory, compiler: str, opt: str = "-O0") -> Target:
    exe = compile_c(
        tmp_path,
        PROG,
        flags=("-g", opt),
        compiler=compiler,
        extra_sources={"stats.h": STATS_H, "lib.c": LIB},
    )
    target = spawn([exe])
    target.wait_for(r"^tick 2 ")
    return target


def refused(target: Target, capsys: pytest.CaptureFixture[str], source: Path, message: str) -> None:
    """Reload ``source``: exit 8 with exactly ``message``; the target is untouched."""
    maps = Path(f"/proc/{target.pid}/maps").read_text()
    before = int(target.wait_for(TICK.pattern)[1])
    code, err = run_cli_printed(capsys, "reload", "-p", str(target.pid), str(source))
    assert code == 8, err
    errors = [line for line in err.splitlines() if line.startswith("relive: error:")]
    assert errors == [f"relive: error: {message}"]
    assert Path(f"/proc/{target.pid}/maps").read_text() == maps  # nothing mapped
    assert relive.attach(target.pid).status() == []
    assert load_journal(target.pid).arenas == []
    # Old code, old state: the counters go on from where they were; scale still doubles.
    mark = target.mark()
    found = target.wait_for(TICK.pattern, after=mark)
    assert int(found[1]) > before and found[1] == found[2]
    assert found[3] == "4" and found[4] == "3"


COMPILERS = [
    pytest.param("gcc", "-O0", id="gcc"),
    pytest.param("clang", "-O0", id="clang"),
    pytest.param("gcc", "-O2", id="gcc-O2"),
]


@pytest.mark.parametrize(("compiler", "opt"), COMPILERS)
def test_long_became_double(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str], compiler: str, opt: str
) -> None:
    target = start(tmp_path, spawn, compiler, opt)
    edit(tmp_path / "prog.c", "long counter;", "double counter;")
    long_name = "long int" if compiler == "gcc" else "long"
    refused(target, capsys, tmp_path / "prog.c", f"counter: type {long_name} became double{HINT}")


@pytest.mark.parametrize(("compiler", "opt"), COMPILERS)
def test_member_inserted_in_heap_struct(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str], compiler: str, opt: str
) -> None:
    target = start(tmp_path, spawn, compiler, opt)
    edit(tmp_path / "stats.h", "{ long hits;", "{ long generation; long hits;")
    refused(
        target,
        capsys,
        tmp_path / "prog.c",
        "struct stats: member generation inserted at offset 0, hits moved 0 -> 8, "
        f"misses moved 8 -> 16, tag moved 16 -> 24{HINT}",
    )


def test_enum_value_changed(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    target = start(tmp_path, spawn, "gcc")
    edit(tmp_path / "prog.c", "SLOW, FAST", "SLOW, MEDIUM, FAST")
    refused(target, capsys, tmp_path / "prog.c", f"enum mode: value FAST changed 1 -> 2{HINT}")


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_function_static_changed(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str], compiler: str
) -> None:
    target = start(tmp_path, spawn, compiler)
    edit(tmp_path / "prog.c", "static long calls;", "static double calls;")
    long_name = "long int" if compiler == "gcc" else "long"
    refused(
        target,
        capsys,
        tmp_path / "prog.c",
        f"calls (static in tick): type {long_name} became double{HINT}",
    )


def test_array_bound_changed(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    target = start(tmp_path, spawn, "gcc")
    edit(tmp_path / "stats.h", "tag[8]", "tag[16]")
    refused(
        target,
        capsys,
        tmp_path / "prog.c",
        f"struct stats: member tag: type char[8] became char[16]{HINT}",
    )


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_bit_field_changed(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str], compiler: str
) -> None:
    target = start(tmp_path, spawn, compiler)
    edit(tmp_path / "prog.c", "unsigned ready : 3;", "unsigned ready : 4;")
    refused(
        target,
        capsys,
        tmp_path / "prog.c",
        "struct flags: bit-field ready: 3 bits at bit 0 became 4 bits at bit 0, "
        f"bit-field level: 5 bits at bit 3 became 5 bits at bit 4{HINT}",
    )


@pytest.mark.parametrize(("compiler", "opt"), COMPILERS)
def test_signature_changed_with_outside_caller(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str], compiler: str, opt: str
) -> None:
    target = start(tmp_path, spawn, compiler, opt)
    edit(tmp_path / "lib.c", "long scale(int x)", "long scale(long y, int x)")
    long_name = "long int" if compiler == "gcc" else "long"
    refused(
        target,
        capsys,
        tmp_path / "lib.c",
        f"scale(int) became scale({long_name}, int): 1 call in prog.c still passes (int); "
        "reload prog.c with it",
    )


def test_signature_changed_with_its_callers_reloaded(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    target = start(tmp_path, spawn, "gcc")
    edit(
        tmp_path / "lib.c",
        "long scale(int x) { return x * 2; }",
        "long scale(long y, int x) { return y + x * 3; }",
    )
    edit(tmp_path / "prog.c", "long scale(int x);", "long scale(long y, int x);")
    edit(tmp_path / "prog.c", "scale(2)", "scale(100, 2)")
    code, err = run_cli_printed(
        capsys, "reload", "-p", str(target.pid), str(tmp_path / "lib.c"), str(tmp_path / "prog.c")
    )
    assert code == 0, err
    target.wait_for(r"^tick \d+ hits \d+ mode 1 level 2 scale 106 at 3$")


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_types_of_new_code_and_frames_are_free(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str], compiler: str
) -> None:
    target = start(tmp_path, spawn, compiler)
    # A struct held only by value in tick's frame changes; a new type and a new
    # variable of it come with the new code.
    edit(
        tmp_path / "prog.c",
        "struct point { int x, y; } here = {1, 2};",
        "struct point { long z; int x, y; } here = {7, 1, 2};",
    )
    edit(
        tmp_path / "prog.c",
        "static struct stats *stats;",
        "static struct stats *stats;\nstruct fresh { double weight; int n; } fresh = {0.5, 40};",
    )
    edit(tmp_path / "prog.c", "here.x + here.y", "here.x + here.y + (int)here.z + fresh.n")
    code, err = run_cli_printed(capsys, "reload", "-p", str(target.pid), str(tmp_path / "prog.c"))
    assert code == 0, err
    assert "redirected tick" in err
    target.wait_for(r"^tick \d+ hits \d+ mode 1 level 2 scale 4 at 50$")


def test_allow_layout_change(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    target = start(tmp_path, spawn, "gcc")
    edit(tmp_path / "prog.c", "long counter;", "double counter;")
    edit(tmp_path / "prog.c", '"tick %ld', '"TICK %ld')
    code, err = run_cli_printed(
        capsys, "reload", "-p", str(target.pid), "--allow-layout-change", str(tmp_path / "prog.c")
    )
    assert code == 0, err
    assert (
        "layout change allowed: counter: type long int became double. Data already in the "
        "program keeps its old layout and the new code reads and writes it with the new one: "
        "converting it is up to you"
    ) in err
    target.wait_for(r"^TICK \d+ hits \d+ ")


def test_allow_layout_change_through_the_api(tmp_path: Path, spawn: SpawnFactory) -> None:
    target = start(tmp_path, spawn, "gcc")
    edit(tmp_path / "stats.h", "{ long hits;", "{ long generation; long hits;")
    edit(tmp_path / "prog.c", '"tick %ld', '"TICK %ld')
    with pytest.raises(relive.errors.LayoutChanged) as refusal:
        relive.attach(target.pid).reload([tmp_path / "prog.c"])
    assert refusal.value.exit_code == 8
    result = relive.attach(target.pid).reload([tmp_path / "prog.c"], allow_layout_change=True)
    assert "tick" in result.redirected
    target.wait_for(r"^TICK ")


def test_no_dwarf_in_the_program(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    exe = compile_c(
        tmp_path, PROG, flags=("-O0",), extra_sources={"stats.h": STATS_H, "lib.c": LIB}
    )
    target = spawn([exe])
    target.wait_for(r"^tick 2 ")
    edit(tmp_path / "prog.c", '"tick %ld', '"TICK %ld')
    code, err = run_cli_printed(
        capsys, "reload", "-p", str(target.pid), "--cflags=-O0", str(tmp_path / "prog.c")
    )
    assert code == 0, err
    assert (
        "prog.c: prog has no DWARF for it: type and layout changes could not be checked "
        "(build the program with -g)"
    ) in err
    target.wait_for(r"^TICK ")

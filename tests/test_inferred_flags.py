"""Flags the build did not record (clang without -grecord-command-line) are
inferred by reproduction, so an unchanged optimised program redirects nothing."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from relive.events import Compiled, Event
from relive.patch.inference import cached_flags, with_flags
from relive.patch.journal import Journal, load_journal
from relive.toolchain.command import ORIGIN_DWARF, CompileCommand
from support import SpawnFactory, Target, compile_c, edit, kinds, notices, reload

PROG = textwrap.dedent(
    """
    #include <stdio.h>
    #include <unistd.h>
    static int table[64];
    __attribute__((noinline)) int scale(int x) { return x * 3 + table[x & 63]; }
    __attribute__((noinline)) int mix(int a, int b) {
        int s = 0;
        for (int i = 0; i < a; i++) s += (b ^ i) * (i + 1);
        return s;
    }
    __attribute__((noinline)) long total(const int *v, int n) {
        long t = 0;
        for (int i = 0; i < n; i++) t += v[i] * (long)v[i];
        return t;
    }
    __attribute__((noinline)) int clamp(int x, int lo, int hi) {
        return x < lo ? lo : x > hi ? hi : x;
    }
    int main(void) {
        for (int i = 0; i < 64; i++) table[i] = i % 7;
        for (;;) {
            int sum = scale(2) + mix(table[3], 5);
            printf("value %d %ld %d\\n", sum, total(table, 64), clamp(9, 0, 5));
            fflush(stdout);
            usleep(20000);
        }
    }
    """
)


@pytest.fixture
def clang_o2(tmp_path: Path, spawn: SpawnFactory) -> tuple[Target, Path]:
    exe = compile_c(tmp_path, PROG, flags=("-g", "-O2"), compiler="clang")
    target = spawn([exe])
    target.wait_for(r"^value 42 ")
    return target, tmp_path / "prog.c"


def _compiles(events: Sequence[Event]) -> int:
    return sum(isinstance(e, Compiled) for e in events)


def test_unchanged_clang_o2_program_redirects_nothing(clang_o2: tuple[Target, Path]) -> None:
    target, source = clang_o2
    events = reload(target.pid, source)
    found = kinds(events)
    assert "redirected" not in found, found
    assert {"main", "scale", "mix", "total", "clamp"} <= set(found["unchanged"])
    inferred = [n for n in notices(events) if n.startswith("flags of prog.c inferred:")]
    assert inferred and inferred[0].startswith("flags of prog.c inferred: -O2 ("), inferred
    assert _compiles(events) == 5  # one per candidate level
    assert load_journal(target.pid).inferred_flags[str(source.resolve())] == ["-O2"]
    target.wait_for(r"^value 42 ")


def test_edit_redirects_only_the_edited_function_then_the_answer_is_cached(
    clang_o2: tuple[Target, Path],
) -> None:
    target, source = clang_o2
    edit(source, "return x * 3 +", "return x * 5 +")
    events = reload(target.pid, source)
    assert kinds(events).get("redirected") == ["scale"]
    assert any(n.startswith("flags of prog.c inferred: -O2 (") for n in notices(events))
    target.wait_for(r"^value 46 ")

    # The next reload compiles once, with the inferred flags, and says where they came from.
    edit(source, "(b ^ i) * (i + 1)", "(b ^ i) * (i + 2)")
    events = reload(target.pid, source)
    assert _compiles(events) == 1
    compiled = next(e for e in events if isinstance(e, Compiled))
    assert "-O2" in compiled.command
    assert "flags of prog.c: -O2 (inferred at an earlier reload)" in notices(events)
    assert kinds(events).get("redirected") == ["mix"]
    target.wait_for(r"^value 62 ")


def test_known_flags_compile_once(tmp_path: Path, spawn: SpawnFactory) -> None:
    # gcc records its flags: no inference, one compile, no notice about flags.
    exe = compile_c(tmp_path, PROG, flags=("-g", "-O2"))
    target = spawn([exe])
    target.wait_for(r"^value 42 ")
    events = reload(target.pid, tmp_path / "prog.c")
    assert _compiles(events) == 1
    assert not any(n.startswith("flags of") for n in notices(events))
    assert "redirected" not in kinds(events)


def test_journal_flags_other_than_inferable_ones_are_not_used(tmp_path: Path) -> None:
    # The journal is relive's own file, but what it names is compiled with root's
    # rights: only flags inference itself chooses are taken from it.
    source = tmp_path / "prog.c"
    source.write_text("int f(void) { return 1; }\n")
    command = CompileCommand("clang", (), tmp_path, source, ORIGIN_DWARF, flags_unknown=True)
    journal = Journal(pid=1, start_time=1)
    journal.inferred_flags[str(source)] = ["-O2", "-fplugin=/tmp/evil.so"]
    assert cached_flags(journal, command) is None
    journal.inferred_flags[str(source)] = ["-Os", "-fcf-protection"]
    assert cached_flags(journal, command) == ("-Os", "-fcf-protection")
    assert with_flags(command, ("-Os",)).flags == ("-Os",)


def test_landing_pads_in_the_running_code_add_cf_protection(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = compile_c(tmp_path, PROG, flags=("-g", "-O2", "-fcf-protection"), compiler="clang")
    target = spawn([exe])
    target.wait_for(r"^value 42 ")
    events = reload(target.pid, tmp_path / "prog.c")
    assert "redirected" not in kinds(events)
    assert any(
        n.startswith("flags of prog.c inferred: -O2 -fcf-protection (") for n in notices(events)
    ), notices(events)
    assert _compiles(events) == 6  # the five levels, then the best one with -fcf-protection


LIB = textwrap.dedent(
    """
    int counter;
    __attribute__((noinline)) int lib_scale(int x) { counter++; return x * 3 + counter % 2; }
    __attribute__((noinline)) int lib_mix(int a, int b) {
        int s = 0;
        for (int i = 0; i < a; i++) s += (b ^ i) * (i + 1);
        return s + lib_scale(a);
    }
    """
)
APP = textwrap.dedent(
    """
    #include <stdio.h>
    #include <unistd.h>
    int lib_mix(int, int);
    int main(void) {
        for (;;) { printf("lib %d\\n", lib_mix(3, 5)); fflush(stdout); usleep(20000); }
    }
    """
)


def test_a_shared_library_file_is_inferred_position_independent(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    lib = compile_c(
        tmp_path, LIB, name="libx.so", flags=("-g", "-O2", "-fPIC", "-shared"), compiler="clang"
    )
    exe = compile_c(
        tmp_path,
        APP,
        name="app",
        flags=("-g", "-O2"),
        compiler="clang",
        link_flags=(str(lib), f"-Wl,-rpath,{tmp_path}"),
    )
    target = spawn([exe])
    target.wait_for(r"^lib 4[34]$")
    source = tmp_path / "libx.so.c"
    events = reload(target.pid, source)
    assert "redirected" not in kinds(events), kinds(events)
    assert any(
        n.startswith("flags of libx.so.c inferred: -O2 -fPIC (2 of 2") for n in notices(events)
    ), notices(events)
    edit(source, "x * 3 +", "x * 100 +")
    events = reload(target.pid, source)
    assert kinds(events).get("redirected") == ["lib_scale"]
    target.wait_for(r"^lib 33[45]$")

"""What a reload of a big unit skips, and that skipping it changes no answer: the
compiler clones the new code no longer has are still named, a type check still
finds a changed global when the new code also uses function statics, and the next
reload takes the fingerprints of functions whose code key is the same
(``patch.codekey``) while everything a key cannot see is still found."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relive.elf.objfile import ObjSymbol
from relive.errors import LayoutChanged
from relive.events import Event, Notice
from relive.link import Bound
from relive.patch import binder as binder_module
from relive.patch import initial as initial_module
from relive.patch import plan as plan_module
from relive.patch import static_scope
from relive.patch.binder import Binder
from relive.patch.diff import FunctionComparer
from relive.patch.initial import DataChange
from relive.patch.journal import journal_name, state_dir
from relive.patch.static_scope import StaticScope
from relive.process.procfs import get_start_time
from support import SpawnFactory, Target, compile_c, edit, kinds, reload

CLONES = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) static int scale(int x, int k) {
    return x * k + (x > 100000 ? x / 7 : 0);
}
volatile int four = 4;
__attribute__((noinline)) int work(int x) {
    int acc = 0;
    for (int i = 0; i < x; i++)
        acc += scale(i, 3);
    return acc;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { printf("work %d\n", work(four)); usleep(20000); }
}
"""


def test_a_clone_the_new_code_no_longer_has_is_named(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = compile_c(tmp_path, CLONES, flags=("-g", "-O2"))
    symbols = subprocess.run(["nm", str(exe)], capture_output=True, text=True).stdout
    assert "scale.constprop.0" in symbols
    target = spawn([exe])
    target.wait_for(r"^work 18$")
    # k is no longer a constant: gcc makes no clone, work calls scale itself.
    edit(tmp_path / "prog.c", "acc += scale(i, 3);", "acc += scale(i, four - 1) * 2;")
    events = reload(target.pid, tmp_path / "prog.c")
    assert "work" in kinds(events)["redirected"]
    notices = [str(e) for e in events if isinstance(e, Notice)]
    assert any(n.startswith("scale.constprop.0 (a compiler clone") for n in notices), notices
    target.wait_for(r"^work 36$")


STATS = r"""
#include <stdio.h>
#include <unistd.h>
struct stats { long hits; long misses; };
struct stats totals;
__attribute__((noinline)) long count(long x) {
    static long calls;
    calls++;
    totals.hits += x;
    return calls;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { printf("calls %ld hits %ld\n", count(1), totals.hits); usleep(20000); }
}
"""


def test_a_changed_global_is_found_next_to_a_function_static(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    """The type check skips names DWARF cannot have (``calls.N``), not the others."""
    exe = compile_c(tmp_path, STATS, flags=("-g", "-O2"))
    target = spawn([exe])
    target.wait_for(r"^calls \d+ hits \d+$")
    edit(tmp_path / "prog.c", "long hits; long misses;", "long misses; long hits;")
    edit(tmp_path / "prog.c", "totals.hits += x;", "totals.hits += 2 * x;")
    with pytest.raises(LayoutChanged, match=r"struct stats: hits moved 0 -> 8"):
        reload(target.pid, tmp_path / "prog.c")
    target.wait_for(r"^calls \d+ hits \d+$")


# -- fingerprints reused from code keys (patch.codekey) ---------------------------------

PROG = r"""
#include <stdio.h>
#include <unistd.h>
struct pair { long a; long b; };
static struct pair kept;
long limit = 5;
static inline long helper(long x) { return x + 1; }
__attribute__((noinline)) long callee(long x) { return x * 2; }
__attribute__((noinline)) long work_a(void) { static long calls; return ++calls; }
__attribute__((noinline)) long work_b(void) { return helper(10); }
__attribute__((noinline)) long work_c(void) { return callee(10); }
__attribute__((noinline)) long work_d(void) { return limit; }
__attribute__((noinline)) void touch(struct pair *p) { p->a++; }
__attribute__((noinline)) long work_e(void) { touch(&kept); return kept.a; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) {
        long a = work_a();
        printf("a=%ld b=%ld c=%ld d=%ld e=%ld\n", a, work_b(), work_c(), work_d(), work_e());
        usleep(20000);
    }
}
"""


@pytest.fixture
def fingerprinted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the functions whose fingerprint was computed, in order."""
    names: list[str] = []
    original = FunctionComparer.fingerprint

    def counting(self: FunctionComparer, symbol: ObjSymbol) -> str:
        names.append(symbol.name)
        return original(self, symbol)

    monkeypatch.setattr(FunctionComparer, "fingerprint", counting)
    yield names


def _started(tmp_path: Path, spawn: SpawnFactory) -> Target:
    target = spawn([compile_c(tmp_path, PROG, flags=("-g", "-O2"))])
    target.wait_for(r"^a=\d+ b=11 c=20 d=5 e=\d+$")
    return target


def _count(target: Target) -> int:
    """work_a's count in the next line the target prints."""
    return int(target.wait_for(r"^a=(\d+) ").group(1))


def test_next_reload_fingerprints_only_what_changed(
    tmp_path: Path, spawn: SpawnFactory, fingerprinted: list[str]
) -> None:
    target = _started(tmp_path, spawn)
    source = tmp_path / "prog.c"
    edit(source, "return x * 2;", "return x * 3;")
    first = kinds(reload(target.pid, source))
    assert first["redirected"] == ["callee"]
    assert {"work_a", "work_b", "work_c", "main"} <= set(fingerprinted)
    target.wait_for(r"^a=\d+ b=11 c=30 d=5 e=\d+$")

    fingerprinted.clear()
    edit(source, "return x + 1;", "return x + 2;")  # helper, inlined into work_b
    second = kinds(reload(target.pid, source))
    assert second["redirected"] == ["work_b"]
    assert {"callee", "work_a", "work_c", "main"} <= set(second["unchanged"])
    # Only work_b's code differs from the last reload's object.
    assert fingerprinted == ["work_b"]
    target.wait_for(r"^a=\d+ b=12 c=30 d=5 e=\d+$")

    fingerprinted.clear()
    edit(source, "return x * 3;", "return x * 4;")  # callee again: work_c calls it
    third = kinds(reload(target.pid, source))
    assert third["redirected"] == ["callee"]
    assert "work_c" in third["unchanged"]
    assert fingerprinted == ["callee"]
    target.wait_for(r"^a=\d+ b=12 c=40 d=5 e=\d+$")


def test_changed_initial_value_is_still_found(
    tmp_path: Path, spawn: SpawnFactory, fingerprinted: list[str]
) -> None:
    """work_d's bytes stay the same when ``limit``'s initializer changes: the object's
    data did change, so nothing is reused, and the change is said as always."""
    target = _started(tmp_path, spawn)
    source = tmp_path / "prog.c"
    edit(source, "return x * 2;", "return x * 3;")
    assert kinds(reload(target.pid, source))["redirected"] == ["callee"]
    target.wait_for(r"^a=\d+ b=11 c=30 d=5 e=\d+$")

    fingerprinted.clear()
    edit(source, "long limit = 5;", "long limit = 7;")
    events = reload(target.pid, source)
    assert "work_d" in kinds(events)["unchanged"]
    assert "work_d" in fingerprinted and "main" in fingerprinted
    notices = [str(e) for e in events if isinstance(e, Notice)]
    assert any("limit" in n and "initial value" in n for n in notices), notices
    target.wait_for(r"^a=\d+ b=11 c=30 d=5 e=\d+$")  # the running value is kept

    fingerprinted.clear()
    events = reload(target.pid, source, reinit=["limit"])
    assert "work_d" in kinds(events)["unchanged"]
    target.wait_for(r"^a=\d+ b=11 c=30 d=7 e=\d+$")


def test_changed_layout_of_kept_data_is_still_refused(tmp_path: Path, spawn: SpawnFactory) -> None:
    """work_e's bytes stay the same when ``kept`` grows: refused as at a first reload."""
    target = _started(tmp_path, spawn)
    source = tmp_path / "prog.c"
    edit(source, "return x * 2;", "return x * 3;")
    assert kinds(reload(target.pid, source))["redirected"] == ["callee"]
    target.wait_for(r"^a=\d+ b=11 c=30 d=5 e=\d+$")

    edit(source, "struct pair { long a; long b; };", "struct pair { long a; long b; long c; };")
    with pytest.raises(LayoutChanged, match="kept changed size from 16 to 24 bytes"):
        reload(target.pid, source)
    target.wait_for(r"^a=\d+ b=11 c=30 d=5 e=\d+$")


def test_renumbered_statics_keep_their_storage(
    tmp_path: Path, spawn: SpawnFactory, fingerprinted: list[str]
) -> None:
    """A function with a static of the same name added before the others: gcc
    numbers every later ``calls.N`` anew; each still binds to its own storage."""
    target = _started(tmp_path, spawn)
    source = tmp_path / "prog.c"
    edit(source, "return x * 2;", "return x * 3;")
    assert kinds(reload(target.pid, source))["redirected"] == ["callee"]
    target.wait_for(r"^a=\d+ b=11 c=30 d=5 e=\d+$")

    before = _count(target)
    edit(
        source,
        "static inline long helper",
        "__attribute__((noinline)) long early(void) { static long calls; return ++calls; }\n"
        "static inline long helper",
    )
    fingerprinted.clear()
    found = kinds(reload(target.pid, source))
    assert found["new"] == ["early"]
    assert "work_a" in found["unchanged"]
    assert "work_a" in fingerprinted  # the layout changed: compared, not reused
    assert _count(target) > before  # work_a's counter goes on


# -- data sections bound as the last reload bound them -------------------------------


@pytest.fixture
def bound_by_binder(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The data sections the binder was asked about, in order; -1 for each reading
    of the running program's function statics (its DWARF)."""
    asked: list[int] = []
    original = Binder.bind_data_section
    running = static_scope.running_static_scopes

    def counting(self: Binder, index: int) -> Bound | None:
        asked.append(index)
        return original(self, index)

    def reading(program: str, source: str) -> dict[StaticScope, int] | None:
        asked.append(-1)
        return running(program, source)

    monkeypatch.setattr(Binder, "bind_data_section", counting)
    monkeypatch.setattr(binder_module, "running_static_scopes", reading)
    yield asked


def test_a_changed_function_links_to_the_storage_the_last_reload_found(
    tmp_path: Path, spawn: SpawnFactory, bound_by_binder: list[int]
) -> None:
    """The object's layout is the same: its data sections bind as last time, without
    the binder, and work_a's new code counts on in its running static."""
    target = _started(tmp_path, spawn)
    source = tmp_path / "prog.c"
    edit(source, "return x * 2;", "return x * 3;")
    assert kinds(reload(target.pid, source))["redirected"] == ["callee"]
    assert -1 in bound_by_binder and len(bound_by_binder) > 1  # the first reload asks
    target.wait_for(r"^a=\d+ b=11 c=30 d=5 e=\d+$")

    before = _count(target)
    bound_by_binder.clear()
    edit(source, "return ++calls; }", "return calls += 1000; }")
    assert kinds(reload(target.pid, source))["redirected"] == ["work_a"]
    assert bound_by_binder == []
    # Once the new code runs, each call adds 1000 to the count so far (not from 0).
    after = int(target.wait_for(r"^a=(\d{4,}) ").group(1))
    assert before < 1000 and after % 1000, (before, after)  # from 0 it would be a multiple
    target.wait_for(r"^a=\d+ b=11 c=30 d=5 e=[1-9]\d*$")  # kept.a goes on too


RELRO_TABLE = r"""
#include <stdio.h>
#include <unistd.h>
static void say_a(void) { printf("A\n"); }
static void say_b(void) { printf("B\n"); }
struct entry { const char *name; void (*fn)(void); };
static const struct entry table[] = {{"first", say_a}, {"second", say_b}};
volatile int which = 0;
__attribute__((noinline)) int other(void) { return 1; }
__attribute__((noinline)) void tick(void) {
    printf("%s:%d:", table[which].name, other());
    table[which].fn();
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { tick(); usleep(20000); }
}
"""


def test_a_read_only_table_binds_as_the_last_reload_found(
    tmp_path: Path, spawn: SpawnFactory, bound_by_binder: list[int]
) -> None:
    exe = compile_c(tmp_path, RELRO_TABLE, flags=("-g", "-O0", "-fPIE"))
    target = spawn([exe])
    target.wait_for(r"^first:1:A$")
    source = tmp_path / "prog.c"
    edit(source, '{"first", say_a}', '{"FIRST", say_b}')
    said = "table: read-only table changed; the new code uses a new copy"
    events = reload(target.pid, source)
    assert "tick" in kinds(events)["redirected"]
    assert any(str(e).startswith(said) for e in events if isinstance(e, Notice))
    target.wait_for(r"^FIRST:1:B$")

    # That reload added the new copy to the process: the next one binds afresh (a
    # name may lead there now) and finds ``table`` equal to that copy; the one after
    # binds as that one did, without the binder, to the same answer.
    for value in (2, 3):
        bound_by_binder.clear()
        edit(source, f"return {value - 1}; }}", f"return {value}; }}")
        events = reload(target.pid, source)
        assert (bound_by_binder == []) is (value == 3)
        assert kinds(events)["redirected"] == ["other"]
        assert "tick" in kinds(events)["unchanged"]
        assert not any(str(e).startswith(said) for e in events if isinstance(e, Notice))
        target.wait_for(rf"^FIRST:{value}:B$")


def test_damaged_bindings_are_bound_again(
    tmp_path: Path, spawn: SpawnFactory, bound_by_binder: list[int]
) -> None:
    """What the journal keeps of the last binding is read whole or not at all: a
    damaged record makes the binder bind again, with the same result."""
    target = _started(tmp_path, spawn)
    source = tmp_path / "prog.c"
    edit(source, "return x * 2;", "return x * 3;")
    assert kinds(reload(target.pid, source))["redirected"] == ["callee"]
    target.wait_for(r"^a=\d+ b=11 c=30 d=5 e=\d+$")
    path = state_dir() / journal_name(target.pid, get_start_time(target.pid))
    journal = json.loads(path.read_text())
    [record] = journal["sources"].values()
    assert record["bindings"]
    record["bindings"] = record["bindings"][:-8] + "!!garbage"
    path.write_text(json.dumps(journal))

    before = _count(target)
    bound_by_binder.clear()
    edit(source, "return ++calls; }", "return calls += 1000; }")
    assert kinds(reload(target.pid, source))["redirected"] == ["work_a"]
    assert bound_by_binder  # bound afresh
    after = int(target.wait_for(r"^a=(\d{4,}) ").group(1))
    assert before < 1000 and after % 1000, (before, after)


@pytest.fixture
def compared_initial(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """One entry per reload that compared its bound data with the program's file
    (``patch.initial.find_initial_changes``), the number of changes it found."""
    compared: list[int] = []
    original = initial_module.find_initial_changes

    def counting(*args: Any) -> list[DataChange]:
        found = original(*args)
        compared.append(len(found))
        return found

    monkeypatch.setattr(plan_module, "find_initial_changes", counting)
    yield compared


def _initial_notices(events: list[Event]) -> list[str]:
    return [str(e) for e in events if isinstance(e, Notice) and "initial value" in str(e)]


def test_a_changed_initial_value_is_said_as_the_last_reload_found(
    tmp_path: Path, spawn: SpawnFactory, compared_initial: list[int]
) -> None:
    """A reload that binds as the last one did (same layout, same binding context)
    takes which initial values differ from the journal, says them as before, and
    ``--reinit`` copies the new one in; a damaged record is compared again."""
    target = _started(tmp_path, spawn)
    source = tmp_path / "prog.c"
    edit(source, "long limit = 5;", "long limit = 7;")
    edit(source, "return x * 2;", "return x * 3;")
    first = reload(target.pid, source)
    assert kinds(first)["redirected"] == ["callee"]
    [said] = _initial_notices(first)
    assert said.startswith("limit: initial value changed")
    assert compared_initial == [1]
    target.wait_for(r"^a=\d+ b=11 c=30 d=5 e=\d+$")

    compared_initial.clear()
    edit(source, "return x * 3;", "return x * 4;")
    second = reload(target.pid, source)
    assert kinds(second)["redirected"] == ["callee"]
    assert _initial_notices(second) == [said]
    assert compared_initial == []  # taken from the journal
    target.wait_for(r"^a=\d+ b=11 c=40 d=5 e=\d+$")

    path = state_dir() / journal_name(target.pid, get_start_time(target.pid))
    journal = json.loads(path.read_text())
    [record] = journal["sources"].values()
    assert record["initial"].startswith("=")
    record["initial"] = "=x,"
    path.write_text(json.dumps(journal))
    edit(source, "return x * 4;", "return x * 5;")
    third = reload(target.pid, source, reinit=["limit"])
    assert kinds(third)["redirected"] == ["callee"]
    assert compared_initial == [1]  # compared again, to the same answer
    assert any(
        n.startswith("limit: initial value changed; --reinit") for n in _initial_notices(third)
    )
    target.wait_for(r"^a=\d+ b=11 c=50 d=7 e=\d+$")


def test_no_changed_initial_value_is_recorded_as_none(
    tmp_path: Path, spawn: SpawnFactory, compared_initial: list[int]
) -> None:
    """An empty answer is an answer: the next reload takes it and says nothing."""
    target = _started(tmp_path, spawn)
    source = tmp_path / "prog.c"
    edit(source, "return x * 2;", "return x * 3;")
    assert _initial_notices(reload(target.pid, source)) == []
    assert compared_initial == [0]
    target.wait_for(r"^a=\d+ b=11 c=30 d=5 e=\d+$")
    compared_initial.clear()
    edit(source, "return x * 3;", "return x * 4;")
    assert _initial_notices(reload(target.pid, source)) == []
    assert compared_initial == []
    target.wait_for(r"^a=\d+ b=11 c=40 d=5 e=\d+$")

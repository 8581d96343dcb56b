"""Constants the compiler makes are not state: an edit of one takes effect.

gcc -O2 turns a switch that maps cases to constants into a table (``CSWTCH.N``),
and ``static const`` locals become ``name.N``; the ``.N`` numbering is per
compile.  New code must read the new object's constants (or a running copy
equal to them), never a running object that merely has the same name.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from relive.events import Event
from support import SpawnFactory, compile_c, edit, kinds, notices, reload

SWITCHES = r"""
#include <stdio.h>
#include <unistd.h>
volatile int three = 3;
/* Irregular values: gcc -O2 makes each switch a lookup table (CSWTCH.N). */
__attribute__((noinline)) int first(int k) {
    switch (k) {
    case 0: return 10; case 1: return 17; case 2: return 12;
    case 3: return 30; case 4: return 19; default: return -1;
    }
}
__attribute__((noinline)) int second(int k) {
    switch (k) {
    case 0: return 20; case 1: return 28; case 2: return 22;
    case 3: return 23; case 4: return 24; case 5: return 25; default: return -2;
    }
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { printf("first %d second %d\n", first(three), second(three)); usleep(20000); }
}
"""

#: A third switch, added before the two others: their tables are renumbered.
ZEROTH = r"""__attribute__((noinline)) int zeroth(int k) {
    switch (k) {
    case 0: return 5; case 1: return 61; case 2: return 7; case 3: return 8;
    case 4: return 91; case 5: return 3; case 6: return 1; default: return 0;
    }
}
__attribute__((noinline)) int first(int k) {"""

FLAGS = ("-g", "-O2")


def _table_sizes(path: Path) -> dict[str, int]:
    """``CSWTCH.N`` -> size, from an object's or a program's symbol table."""
    with path.open("rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        return {s.name: s["st_size"] for s in symtab.iter_symbols() if s.name.startswith("CSWTCH.")}


def _redirected(events: list[Event]) -> list[str]:
    return kinds(events).get("redirected", [])


def test_edited_switch_case_value_takes_effect(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = compile_c(tmp_path, SWITCHES, flags=FLAGS)
    assert len(_table_sizes(exe)) == 2  # the switches really are tables
    target = spawn([exe])
    target.wait_for(r"^first 30 second 23$")
    source = tmp_path / "prog.c"
    edit(source, "case 3: return 30;", "case 3: return 33;")
    events = reload(target.pid, source)
    assert _redirected(events) == ["first"]
    target.wait_for(r"^first 33 second 23$", after=target.mark())
    edit(source, "case 3: return 33;", "case 3: return 34;")  # from relive's own copy
    assert _redirected(reload(target.pid, source)) == ["first"]
    target.wait_for(r"^first 34 second 23$", after=target.mark())
    assert _redirected(reload(target.pid, source)) == []  # unedited: nothing


def test_renumbered_switch_tables_bind_by_content_not_name(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = compile_c(tmp_path, SWITCHES, flags=FLAGS)
    target = spawn([exe])
    target.wait_for(r"^first 30 second 23$")
    source = tmp_path / "prog.c"
    edit(source, "__attribute__((noinline)) int first(int k) {", ZEROTH)
    # The scenario: a name of the running program now names another table.
    edited = tmp_path / "edited.o"
    subprocess.run(["gcc", *FLAGS, "-fdata-sections", "-c", str(source), "-o", str(edited)])
    running, new = _table_sizes(exe), _table_sizes(edited)
    assert len(new) == 3
    assert any(running[name] != new.get(name, running[name]) for name in running), (running, new)
    events = reload(target.pid, source)
    assert kinds(events).get("new") == ["zeroth"]
    assert _redirected(events) == []  # first and second read tables equal to theirs
    target.wait_for(r"^first 30 second 23$", after=target.mark())
    edit(source, "case 3: return 23;", "case 3: return 43;")
    assert _redirected(reload(target.pid, source)) == ["second"]
    target.wait_for(r"^first 30 second 43$", after=target.mark())
    assert _redirected(reload(target.pid, source)) == []


NAMES = r"""
#include <stdio.h>
#include <unistd.h>
volatile int two = 2;
/* Const tables of pointers: .data.rel.ro.local (writable in the object, for the
   dynamic linker), named names.N. */
__attribute__((noinline)) const char *first(int k) {
    static const char *const names[] = {"a0", "a1", "a2", "a3"};
    return names[k & 3];
}
__attribute__((noinline)) const char *second(int k) {
    static const char *const names[] = {"b0", "b1", "b2", "b3", "b4"};
    return names[k % 5];
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { printf("first %s second %s\n", first(two), second(two)); usleep(20000); }
}
"""

#: A function with a ``names`` table of its own, added before the others.
ZEROTH_NAMES = r"""__attribute__((noinline)) const char *zeroth(int k) {
    static const char *const names[] = {"z0", "z1", "z2", "z3", "z4", "z5"};
    return names[k % 6];
}
__attribute__((noinline)) const char *first(int k) {"""


def test_const_pointer_tables_are_constants_without_relro(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    """Linked without RELRO, nothing marks ``names`` read-only at run time: it is
    still a constant, not state (it used to keep its old value, "initial value
    changed"), also when it was loaded by an earlier reload or renumbered."""
    exe = compile_c(tmp_path, NAMES, flags=FLAGS, link_flags=("-Wl,-z,norelro",))
    target = spawn([exe])
    target.wait_for(r"^first a2 second b2$")
    source = tmp_path / "prog.c"
    edit(source, '"a2"', '"A2"')
    events = reload(target.pid, source)
    assert _redirected(events) == ["first"]
    assert not any("initial value" in n for n in notices(events)), notices(events)
    target.wait_for(r"^first A2 second b2$", after=target.mark())
    edit(source, '"A2"', '"AA2"')  # the table relive loaded is a constant too
    assert _redirected(reload(target.pid, source)) == ["first"]
    target.wait_for(r"^first AA2 second b2$", after=target.mark())
    edit(source, "__attribute__((noinline)) const char *first(int k) {", ZEROTH_NAMES)
    events = reload(target.pid, source)  # was: "names.3 cannot be matched unambiguously"
    assert kinds(events).get("new") == ["zeroth"]
    assert _redirected(events) == []
    edit(source, '"b2"', '"B2"')
    assert _redirected(reload(target.pid, source)) == ["second"]
    target.wait_for(r"^first AA2 second B2$", after=target.mark())
    assert _redirected(reload(target.pid, source)) == []


def test_const_pointer_table_edited_twice_and_renumbered_under_relro(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    """The copy a reload loaded is outside RELRO: it is a constant all the same (it
    used to be bound as state: the next unedited reload redirected ``first``
    again, and its next edit did not take effect)."""
    exe = compile_c(tmp_path, NAMES, flags=FLAGS)
    target = spawn([exe])
    target.wait_for(r"^first a2 second b2$")
    source = tmp_path / "prog.c"
    edit(source, '"a2"', '"A2"')
    assert _redirected(reload(target.pid, source)) == ["first"]
    target.wait_for(r"^first A2 second b2$", after=target.mark())
    assert _redirected(reload(target.pid, source)) == []
    edit(source, '"A2"', '"AA2"')
    assert _redirected(reload(target.pid, source)) == ["first"]
    target.wait_for(r"^first AA2 second b2$", after=target.mark())
    edit(source, "__attribute__((noinline)) const char *first(int k) {", ZEROTH_NAMES)
    events = reload(target.pid, source)
    assert kinds(events).get("new") == ["zeroth"]
    assert _redirected(events) == []
    edit(source, '"b2"', '"B2"')
    assert _redirected(reload(target.pid, source)) == ["second"]
    target.wait_for(r"^first AA2 second B2$", after=target.mark())
    assert _redirected(reload(target.pid, source)) == []

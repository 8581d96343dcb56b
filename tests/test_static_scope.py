"""Function-scope statics keep their function's state when gcc renumbers them.

gcc names a function's ``static int count`` ``count.N`` with a per-compile
counter: a function with its own ``count`` added before the others shifts every
number.  Each function's static must keep its storage (f's counter stays f's)
and the new function's static starts at its initializer, also when the added
function is removed again.
"""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from relive.errors import LinkError
from support import (
    SpawnFactory,
    Target,
    assert_maps_unchanged,
    compile_c,
    edit,
    kinds,
    reload,
    remember_maps,
)

COUNTERS = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) int f(void) { static int count = 0; return ++count; }
__attribute__((noinline)) int g(void) { static int count = 1000; return ++count; }
__attribute__((noinline)) void tick(void) { printf("f %d g %d\n", f(), g()); }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { tick(); usleep(20000); }
}
"""

#: A function with a ``count`` of its own, added before f and g or between g and
#: tick.  gcc 12 numbers a file's statics in reverse order of definition: added
#: last, h's count takes count.0 and shifts f's and g's.
ADDED = "__attribute__((noinline)) int h(void) { static int count = 500; return ++count; }\n"
PLACES = {
    "before": "__attribute__((noinline)) int f(void)",
    "after": "__attribute__((noinline)) void tick(void)",
}
TICK = 'printf("f %d g %d\\n", f(), g());'
TICK_WITH_H = 'printf("h %d f %d g %d\\n", h(), f(), g());'


def _counts(exe: Path) -> dict[int, tuple[str, int]]:
    """Name and address of each ``count.N`` of a program or object, keyed by its initial value."""
    found: dict[int, tuple[str, int]] = {}
    with exe.open("rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        for s in symtab.iter_symbols():
            if re.fullmatch(r"count\.\d+", s.name):
                init = 0
                section = elf.get_section(s["st_shndx"])
                if section["sh_type"] == "SHT_PROGBITS":
                    at = s["st_value"] - section["sh_addr"]
                    init = struct.unpack("<i", section.data()[at : at + 4])[0]
                found[init] = (s.name, s["st_value"])
    return found


def _read_int(pid: int, address: int) -> int:
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(address)
        value: int = struct.unpack("<i", mem.read(4))[0]
    return value


def _last(target: Target, pattern: str) -> tuple[int, ...]:
    match = target.wait_for(pattern, after=target.mark())
    return tuple(int(v) for v in match.groups())


@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("opt", ["-O0", "-O2"])
def test_renumbered_statics_keep_their_functions_state(
    tmp_path: Path, spawn: SpawnFactory, opt: str, place: str
) -> None:
    exe = compile_c(tmp_path, COUNTERS, flags=("-g", opt), link_flags=("-no-pie",))
    running = _counts(exe)
    assert sorted(running) == [0, 1000], running
    addresses = {init: address for init, (_, address) in running.items()}
    target = spawn([exe])
    target.wait_for(r"^f 5 g 1005$")
    source = tmp_path / "prog.c"

    # h and its count: no other edit, nothing calls h yet.
    edit(source, PLACES[place], ADDED + PLACES[place])
    edited = tmp_path / "edited.o"
    subprocess.run(["gcc", "-g", opt, "-fdata-sections", "-c", str(source), "-o", str(edited)])
    renamed = {init: name for init, (name, _) in _counts(edited).items()}
    if place == "after":  # the scenario: a running name now names another function's count
        assert renamed[500] in {running[0][0], running[1000][0]}, (running, renamed)
    events = reload(target.pid, source)
    assert kinds(events).get("new") == ["h"], kinds(events)
    f_before, g_before = _last(target, r"^f (\d+) g (\d+)$")
    f_after, g_after = _last(target, r"^f (\d+) g (\d+)$")
    assert 5 < f_before < f_after < 1000 and 1005 < g_before < g_after, (f_after, g_after)
    assert g_after - f_after == 1000  # each counts from where it was, none was reset

    # tick calls h now: h's count is new storage starting at 500.
    edit(source, TICK, TICK_WITH_H)
    assert kinds(reload(target.pid, source)).get("redirected") == ["tick"]
    h1, f1, g1 = _last(target, r"^h (\d+) f (\d+) g (\d+)$")
    h2, f2, g2 = _last(target, r"^h (\d+) f (\d+) g (\d+)$")
    assert 500 < h1 < h2 < 1000 and f_after < f1 < f2 < 500 and g1 - f1 == g2 - f2 == 1000, (
        h2,
        f2,
        g2,
    )
    # The program's own storage is still f's and g's.
    f_mem, g_mem = _read_int(target.pid, addresses[0]), _read_int(target.pid, addresses[1000])
    assert f2 <= f_mem < 500 and g2 <= g_mem < 1500 and g_mem - f_mem == 1000, (f_mem, g_mem)

    # h goes again: f and g are count.0 and count.1 once more, h's storage is not theirs.
    edit(source, TICK_WITH_H, TICK)
    edit(source, ADDED, "")
    events = reload(target.pid, source)
    assert kinds(events).get("redirected") == ["tick"], kinds(events)
    f3, g3 = _last(target, r"^f (\d+) g (\d+)$")
    f4, g4 = _last(target, r"^f (\d+) g (\d+)$")
    assert f2 < f3 < f4 < 500 and g3 - f3 == g4 - f4 == 1000, (f4, g4)
    assert _read_int(target.pid, addresses[0]) >= f4


@pytest.mark.parametrize("opt", ["-O0", "-O2"])
def test_removed_function_does_not_hand_its_static_to_another(
    tmp_path: Path, spawn: SpawnFactory, opt: str
) -> None:
    """g goes: f's count is renumbered to g's running name (gcc 12: count.1 -> count.0).
    Bound by that name, f would go on counting from g's 1000s; it must keep its own."""
    exe = compile_c(tmp_path, COUNTERS, flags=("-g", opt), link_flags=("-no-pie",))
    running = _counts(exe)
    target = spawn([exe])
    target.wait_for(r"^f 5 g 1005$")
    source = tmp_path / "prog.c"
    edit(
        source,
        "__attribute__((noinline)) int g(void) { static int count = 1000; return ++count; }\n",
        "",
    )
    edit(source, 'printf("f %d g %d\\n", f(), g());', 'printf("f %d\\n", f());')
    edited = tmp_path / "edited.o"
    subprocess.run(["gcc", "-g", opt, "-fdata-sections", "-c", str(source), "-o", str(edited)])
    assert _counts(edited)[0][0] == running[1000][0], (running, _counts(edited))  # the trap
    assert kinds(reload(target.pid, source)).get("redirected") == ["tick"]
    first = _last(target, r"^f (\d+)$")[0]
    second = _last(target, r"^f (\d+)$")[0]
    assert 5 < first < second < 1000, (first, second)
    assert second <= _read_int(target.pid, running[0][1]) < 1000


BLOCKS = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) int f(int k) {
    if (k) { static int count = 0; return ++count; }
    else { static int count = 1000; return ++count; }
}
__attribute__((noinline)) void tick(void) { printf("a %d b %d\n", f(1), f(0)); }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { tick(); usleep(20000); }
}
"""


@pytest.mark.parametrize("opt", ["-O0", "-O2"])
def test_statics_of_one_name_in_lexical_blocks_keep_their_block(
    tmp_path: Path, spawn: SpawnFactory, opt: str
) -> None:
    """Two ``count``s in blocks of one function are told apart by their order."""
    exe = compile_c(tmp_path, BLOCKS, flags=("-g", opt), link_flags=("-no-pie",))
    running = _counts(exe)
    target = spawn([exe])
    target.wait_for(r"^a 5 b 1005$")
    source = tmp_path / "prog.c"
    tick = "__attribute__((noinline)) void tick(void)"
    edit(source, tick, ADDED + tick)
    edit(
        source,
        'printf("a %d b %d\\n", f(1), f(0));',
        'printf("h %d a %d b %d\\n", h(), f(1), f(0));',
    )
    events = reload(target.pid, source)
    assert kinds(events).get("new") == ["h"] and kinds(events).get("redirected") == ["tick"]
    h1, a1, b1 = _last(target, r"^h (\d+) a (\d+) b (\d+)$")
    h2, a2, b2 = _last(target, r"^h (\d+) a (\d+) b (\d+)$")
    assert 500 < h1 < h2 < 1000 and 5 < a1 < a2 < 500 and b1 - a1 == b2 - a2 == 1000, (h2, a2, b2)
    a_mem, b_mem = _read_int(target.pid, running[0][1]), _read_int(target.pid, running[1000][1])
    assert a2 <= a_mem < 500 and b_mem - a_mem == 1000, (a_mem, b_mem)


def test_without_the_programs_dwarf_a_renumbered_static_is_refused_not_guessed(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    """A program built without -g says nothing of scopes: the name cannot tell
    whose count.2 is which, so the reload is refused and the program is left as it was."""
    exe = compile_c(tmp_path, COUNTERS, flags=("-O0",), link_flags=("-no-pie",))
    target = spawn([exe])
    target.wait_for(r"^f 5 g 1005$")
    remember_maps(target)  # once it runs: while it starts, its loader still maps
    source = tmp_path / "prog.c"
    edit(source, PLACES["after"], ADDED + PLACES["after"])
    edit(source, TICK, TICK_WITH_H)
    with pytest.raises(LinkError, match="cannot be matched unambiguously"):
        reload(target.pid, source)
    assert_maps_unchanged(target)
    first, _ = _last(target, r"^f (\d+) g (\d+)$")
    second, g = _last(target, r"^f (\d+) g (\d+)$")
    assert 5 < first < second and g - second == 1000

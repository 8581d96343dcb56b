"""Every edit takes effect, or relive refuses it and says why (issue 10, sections 2-5).

Real programs are compiled, run, edited and reloaded while they run; refusals
leave the target with its old code and nothing mapped.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from relive.events import Event, FunctionSkipped, Notice
from support import (
    VALUE_PROG,
    SpawnFactory,
    assert_maps_unchanged,
    assert_untouched,
    compile_c,
    edit,
    kinds,
    reload,
    remember_maps,
    run_cli,
    start_remembered,
)

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


def notices(events: list[Event]) -> list[str]:
    """The messages of the Notice events."""
    return [e.message for e in events if isinstance(e, Notice)]


LABELS = r"""
#include <stdio.h>
#include <unistd.h>
volatile int ten = 10;
__attribute__((noinline)) int run(int op, int x) {
    static void *labels[] = {&&op_add, &&op_mul};
    goto *labels[op];
op_add:
    return x + 1;
op_mul:
    return x * 2;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { printf("add %d mul %d\n", run(0, ten), run(1, ten)); usleep(20000); }
}
"""


@pytest.mark.parametrize("opt", ["-O0", "-O2"])
def test_computed_goto_table_goes_with_its_function(
    tmp_path: Path, spawn: SpawnFactory, opt: str
) -> None:
    exe = compile_c(tmp_path, LABELS, flags=("-g", opt))
    target = spawn([exe])
    target.wait_for(r"^add 11 mul 20$")
    source = tmp_path / "prog.c"
    # a new local moves every label: the running table would send the new code astray
    edit(source, "    goto *labels[op];", "    volatile int pad = 3;\n    goto *labels[op];")
    edit(source, "return x * 2;", "return x * pad;")
    events = reload(target.pid, source)
    assert kinds(events)["redirected"] == ["run"]
    target.wait_for(r"^add 11 mul 30$")
    target.wait_for(r"^add 11 mul 30$")
    assert target.alive()


WEAK_DEFAULT = r"""
#include <stdio.h>
__attribute__((weak)) void hook(void) { printf("weak hook\n"); }
__attribute__((noinline)) void a_tick(void) { hook(); printf("a says 1\n"); }
"""
STRONG = r"""
#include <stdio.h>
void hook(void) { printf("strong hook\n"); }
"""
WEAK_MAIN = r"""
#include <stdio.h>
#include <unistd.h>
void a_tick(void);
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { a_tick(); usleep(20000); }
}
"""


def test_weak_definition_never_replaces_the_strong_one(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = compile_c(tmp_path, WEAK_MAIN, extra_sources={"a.c": WEAK_DEFAULT, "b.c": STRONG})
    target = spawn([exe])
    target.wait_for(r"^strong hook$")
    edit(tmp_path / "a.c", "weak hook", "new weak hook")
    edit(tmp_path / "a.c", "a says 1", "a says 2")
    events = reload(target.pid, tmp_path / "a.c")
    assert kinds(events)["redirected"] == ["a_tick"]
    skipped = [e for e in events if isinstance(e, FunctionSkipped)]
    assert [(e.name, e.reason) for e in skipped] == [
        ("hook", "weak definition: the program uses the strong one of another file")
    ]
    mark = target.mark()
    target.wait_for(r"^a says 2$", after=mark)
    mark = target.mark()
    target.wait_for(r"^a says 2$", after=mark)
    assert "strong hook" in target.lines[mark:]
    assert not any("weak hook" in line for line in target.lines)


def test_new_constructor_is_refused(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    target = start_remembered(tmp_path, spawn, VALUE_PROG)
    edit(
        tmp_path / "prog.c",
        "int table[4] = {1, 2, 3, 4};",
        "int table[4] = {1, 2, 3, 4};\n"
        "__attribute__((constructor)) static void setup(void) { table[0] = 7; }",
    )
    code, err = run_cli(capsys, "reload", "-p", str(target.pid), str(tmp_path / "prog.c"))
    assert code == 1
    assert err.strip() == (
        "relive: error: prog.c: new constructor setup (.init_array): relive runs no "
        "constructors in a running program (one may wait forever on a lock a held thread "
        "owns) (call setup() from code the program runs, or restart the program)"
    )
    assert_untouched(target)


RELRO_TABLE = r"""
#include <stdio.h>
#include <unistd.h>
static void say_a(void) { printf("A\n"); }
static void say_b(void) { printf("B\n"); }
struct entry { const char *name; void (*fn)(void); };
static const struct entry table[] = {{"first", say_a}, {"second", say_b}};
volatile int which = 0;
__attribute__((noinline)) void tick(void) {
    printf("%s:", table[which].name);
    table[which].fn();
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { tick(); usleep(20000); }
}
"""


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_changed_read_only_table_gets_a_new_copy(
    tmp_path: Path, spawn: SpawnFactory, compiler: str
) -> None:
    exe = compile_c(tmp_path, RELRO_TABLE, compiler=compiler, flags=("-g", "-O0", "-fPIE"))
    target = spawn([exe])
    target.wait_for(r"^first:A$")
    edit(tmp_path / "prog.c", '{"first", say_a}', '{"FIRST", say_b}')
    events = reload(target.pid, tmp_path / "prog.c")
    assert "tick" in kinds(events)["redirected"]
    assert (
        "table: read-only table changed; the new code uses a new copy (code that is not "
        "reloaded keeps reading the old one)" in notices(events)
    )
    target.wait_for(r"^FIRST:B$")


INITIAL = r"""
#include <stdio.h>
#include <unistd.h>
static char banner[8] = "abcdefg";
int limits[3] = {1, 2, 3};
__attribute__((noinline)) void tick(void) {
    limits[0]++;
    printf("%s %d %d\n", banner, limits[0] > 1000, limits[2]);
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { tick(); usleep(20000); }
}
"""


def test_changed_initial_value_is_kept_and_said_or_copied_in_with_reinit(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = compile_c(tmp_path, INITIAL)
    target = spawn([exe])
    target.wait_for(r"^abcdefg 0 3$")
    source = tmp_path / "prog.c"
    edit(source, '"abcdefg"', '"ABCDEFG"')
    edit(source, "{1, 2, 3}", "{2000, 2, 30}")
    events = reload(target.pid, source)
    assert notices(events) == [
        "banner: initial value changed; the program keeps its current value "
        "(--reinit banner copies the new initial value in)",
        "limits: initial value changed; the program keeps its current value "
        "(--reinit limits copies the new initial value in)",
    ]
    mark = target.mark()
    target.wait_for(r"^abcdefg 0 3$", after=mark)  # state kept
    events = reload(target.pid, source, reinit=["limits"])
    assert notices(events)[1] == "limits: initial value changed; --reinit copies it in"
    mark = target.mark()
    target.wait_for(r"^abcdefg 1 30$", after=mark)  # the new initial value, counting on


REPORT = r"""
#include <stdio.h>
__attribute__((noinline)) void report(void) { printf("our report\n"); }
"""
REPORT_MAIN = r"""
#include <unistd.h>
#include <stdio.h>
void report(void);
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { report(); usleep(20000); }
}
"""
FOREIGN = r"""
#include <stdio.h>
void report(void) { printf("another project's report\n"); }
int other_helper(void) { return 42; }
"""


def test_a_file_the_program_was_not_built_from_is_refused(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    exe = compile_c(app, REPORT_MAIN, extra_sources={"report.c": REPORT})
    target = spawn([exe])
    target.wait_for(r"^our report$")  # its first printf maps the heap: remember after
    remember_maps(target)
    foreign = tmp_path / "elsewhere" / "report.c"
    foreign.parent.mkdir()
    foreign.write_text(FOREIGN)
    code, err = run_cli(capsys, "reload", "-p", str(target.pid), str(foreign))
    assert code == 1
    assert err.strip() == (
        f"relive: error: {foreign}: no compile unit of the program or its libraries is this "
        f"file (close: {app / 'report.c'}) (reload the program's own file, or pass --new-file "
        "to load it on purpose (it may then only add functions, or replace those named with "
        "--function))"
    )
    # an object none of whose functions the program has
    obj = tmp_path / "elsewhere" / "other.o"
    (tmp_path / "elsewhere" / "other.c").write_text("int other_helper(void) { return 42; }\n")
    subprocess.run(["gcc", "-c", "-g", "-o", obj, obj.with_suffix(".c")], check=True)
    code, err = run_cli(capsys, "reload", "-p", str(target.pid), str(obj))
    assert code == 1
    assert "none of its functions (other_helper) is in the program or its libraries" in err
    mark = target.mark()
    target.wait_for(r"^our report$", after=mark)
    assert_maps_unchanged(target)
    # on purpose: only new functions, unless named
    code, err = run_cli(capsys, "reload", "--new-file", "-p", str(target.pid), str(foreign))
    assert code == 0
    mark = target.mark()
    target.wait_for(r"^our report$", after=mark)
    events = reload(target.pid, foreign, new_file=True, functions=["report"])
    assert kinds(events)["redirected"] == ["report"]
    target.wait_for(r"^another project's report$")

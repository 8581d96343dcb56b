"""Unit tests of the plan side (patch.plan, patch.diff, patch.binder) without a process.

A small program is compiled and linked with gcc; its ELF file stands in for the
running program (the module is "loaded" at its link-time addresses, memory is
read from the file as the loader would map it).  An edited copy of its source is
compiled as relive compiles it, and the plan is built from the two: which functions
changed, which are new, where each variable binds, what is loaded.
"""

from __future__ import annotations

import subprocess
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import pytest

from relive.arch.x86_64 import ARCH
from relive.elf.image import ElfImage
from relive.elf.objfile import ObjectFile, ObjSymbol
from relive.errors import LayoutChanged, ReliveError
from relive.patch.binder import Binder
from relive.patch.diff import FunctionComparer
from relive.patch.modules import RunningModule
from relive.patch.plan import FarData, FunctionDecision, ReloadPlan, build_plan
from support import edit

#: As relive recompiles a file (plus the program's own -O1).
OBJECT_FLAGS = ("-g", "-O1", "-c", "-ffunction-sections", "-fdata-sections")

SOURCE = r"""
#include <stdio.h>
int counter = 5;
static int hidden = 7;
long table[3] = {1, 2, 3};
__attribute__((noipa)) int same(int x) { return x; }
__attribute__((noinline)) int add(int a, int b) { return a + b + counter + same(a); }
__attribute__((noinline)) int sub(int a, int b) { hidden += a; return a - b - counter; }
__attribute__((noinline)) int scale(int x) {
    static int calls;
    calls++;
    return x * 3 + hidden + calls;
}
__attribute__((noinline)) long pick(int i) { return table[i]; }
int main(void) {
    printf("%d %d %d %ld\n", add(1, 2), sub(5, 1), scale(4), pick(1));
    return 0;
}
"""


#: Where the test "loads" libc (any page-aligned address far from the program).
LIBC_BASE = 0x7F12_3400_0000


@dataclass
class Program:
    """The built program at its link-time addresses, libc, and the program's source."""

    source: Path
    module: RunningModule
    libc: RunningModule

    @property
    def modules(self) -> list[RunningModule]:
        """The modules of the "process", the executable first."""
        return [self.module, self.libc]

    def read(self, address: int, size: int) -> bytes:
        """Memory as the loader maps the files (relocations not applied)."""
        for module in self.modules:
            if module.start <= address < module.end:
                return module.image.read_vaddr(address - module.bias, size)
        raise ReliveError(f"nothing mapped at {address:#x}")

    def symbol_address(self, name: str) -> int:
        """Where a symbol of the program is (a global or a file-local of prog.c)."""
        image = self.module.image
        found = image.find_global(name)
        if found is None:
            matches = [s for s in image.iter_file_locals("prog.c") if s.name.startswith(name)]
            assert len(matches) == 1, (name, matches)
            found = matches[0]
        return found.value


@pytest.fixture
def program(tmp_path: Path) -> Program:
    source = tmp_path / "prog.c"
    source.write_text(SOURCE)
    exe = tmp_path / "prog"
    subprocess.run(
        ["gcc", "-g", "-O1", "-o", str(exe), "prog.c"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    libc = subprocess.run(
        ["gcc", "-print-file-name=libc.so.6"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return Program(source, _module(str(exe), 0, is_main=True), _module(libc, LIBC_BASE))


def _module(path: str, bias: int, is_main: bool = False) -> RunningModule:
    image = ElfImage.open(path)
    segments = image.load_segments
    return RunningModule(
        path=path,
        file=path,
        image=image,
        bias=bias,
        start=bias + min(s.vaddr for s in segments),
        end=bias + max(s.vaddr + s.memsz for s in segments),
        is_main=is_main,
    )


def _compile(program: Program, name: str = "new") -> ObjectFile:
    out = program.source.with_name(f"{name}.o")
    subprocess.run(
        ["gcc", *OBJECT_FLAGS, "-o", str(out), program.source.name],
        cwd=program.source.parent,
        check=True,
        capture_output=True,
    )
    return ObjectFile.open(out)


def _binder(program: Program, obj: ObjectFile) -> Binder:
    return Binder(obj, program.module, program.modules, None, program.read, ARCH)


def _plan(
    program: Program,
    obj: ObjectFile,
    previous: dict[str, str] | None = None,
    only: Collection[str] | None = None,
) -> ReloadPlan:
    planned = build_plan(str(program.source), obj, _binder(program, obj), ARCH, previous, only)
    assert not isinstance(planned, FarData), planned
    return planned


def _status(decision: FunctionDecision) -> str:
    """The decision's status as text (whether states are strings or enums)."""
    return str(getattr(decision.status, "value", decision.status))


def _statuses(plan: ReloadPlan) -> dict[str, str]:
    return {d.name: _status(d) for d in plan.decisions}


def _section_of(obj: ObjectFile, name: str) -> int:
    symbol = next(s for s in obj.symbols if s.name == name or s.name.startswith(name + "."))
    return symbol.shndx


def _loaded_functions(plan: ReloadPlan) -> set[str]:
    """The functions whose code the plan loads into new memory."""
    load = plan.layout.request.load
    return {s.name for s in plan.obj.iter_functions() if s.shndx in load}


def _bound_address(plan: ReloadPlan, name: str) -> int | None:
    bound = plan.layout.request.bound_sections.get(_section_of(plan.obj, name))
    return None if bound is None else bound.address


# -- what changed ----------------------------------------------------------------------------


def test_unedited_source_changes_nothing(program: Program) -> None:
    plan = _plan(program, _compile(program))
    assert _statuses(plan) == dict.fromkeys(
        ["same", "add", "sub", "scale", "pick", "main"], "unchanged"
    )
    assert _loaded_functions(plan) == set()


def test_an_edited_function_is_changed_and_a_new_one_is_new(program: Program) -> None:
    edit(program.source, "return x * 3 + hidden", "return x * 4 + hidden")
    edit(program.source, "int main(void) {", "int twice(int x) { return 2 * x; }\nint main(void) {")
    plan = _plan(program, _compile(program))
    statuses = _statuses(plan)
    assert statuses["scale"] == "changed"
    assert statuses["twice"] == "new"
    assert {name for name, s in statuses.items() if s == "unchanged"} == {
        "same",
        "add",
        "sub",
        "pick",
        "main",
    }
    assert _loaded_functions(plan) == {"scale", "twice"}
    scale = next(d for d in plan.decisions if d.name == "scale")
    assert scale.old is not None and scale.old.address == program.symbol_address("scale")


def test_same_bytes_calling_another_function_is_changed(program: Program) -> None:
    # add and sub have the same signature: only the call's relocation differs.
    edit(program.source, '"%d %d %d %ld\\n", add(1, 2)', '"%d %d %d %ld\\n", sub(1, 2)')
    plan = _plan(program, _compile(program))
    assert _statuses(plan)["main"] == "changed"


def test_a_changed_table_entry_changes_its_reader_not_its_storage(program: Program) -> None:
    edit(program.source, "table[i]", "table[i] + 1")
    plan = _plan(program, _compile(program))
    assert _statuses(plan)["pick"] == "changed"
    assert _bound_address(plan, "table") == program.symbol_address("table")


# -- binding ----------------------------------------------------------------------------------


def test_variables_bind_to_the_running_storage(program: Program) -> None:
    edit(program.source, "return x * 3 + hidden", "return x * 4 + hidden")
    plan = _plan(program, _compile(program))
    for name in ("counter", "hidden", "calls", "table"):
        assert _bound_address(plan, name) == program.symbol_address(name), name
    assert [s.name for s in plan.new_data if not s.name.startswith(".L")] == []


def test_a_new_variable_is_loaded(program: Program) -> None:
    edit(program.source, "int counter = 5;", "int counter = 5;\nint fresh = 9;")
    edit(program.source, "return a - b - counter;", "return a - b - counter - fresh;")
    plan = _plan(program, _compile(program))
    assert [s.name for s in plan.new_data if not s.name.startswith(".L")] == ["fresh"]
    assert _section_of(plan.obj, "fresh") in plan.layout.request.load
    assert _statuses(plan)["sub"] == "changed"


def test_a_global_that_changed_size_is_refused(program: Program) -> None:
    edit(program.source, "int counter = 5;", "long counter = 5;")
    obj = _compile(program)
    with pytest.raises(LayoutChanged, match="counter changed size from 4 to 8 bytes"):
        build_plan(str(program.source), obj, _binder(program, obj), ARCH, None)


# -- choices --------------------------------------------------------------------------------


def test_only_the_selected_functions_are_redirected(program: Program) -> None:
    edit(program.source, "return x * 3 + hidden", "return x * 4 + hidden")
    edit(program.source, "return a - b - counter;", "return a - b + counter;")
    plan = _plan(program, _compile(program), only={"sub"})
    statuses = _statuses(plan)
    assert statuses["sub"] == "changed"
    assert statuses["scale"] == "skipped"
    scale = next(d for d in plan.decisions if d.name == "scale")
    assert "--function" in scale.reason
    assert _loaded_functions(plan) == {"sub"}


def test_later_reloads_compare_fingerprints_not_memory(program: Program) -> None:
    edit(program.source, "return x * 3 + hidden", "return x * 4 + hidden")
    first = _plan(program, _compile(program, "first"))
    fingerprints = {d.name: d.fingerprint for d in first.decisions}
    # The same object again: against the first reload nothing changed, although
    # the file's scale still differs from the one in the program file.
    again = _plan(program, _compile(program, "again"), previous=fingerprints)
    assert set(_statuses(again).values()) == {"unchanged"}
    edit(program.source, "return x * 4 + hidden", "return x * 5 + hidden")
    third = _plan(program, _compile(program, "third"), previous=fingerprints)
    assert _statuses(third)["scale"] == "changed"
    assert _statuses(third)["add"] == "unchanged"


def test_a_too_small_function_is_replaced_through_its_callers(program: Program) -> None:
    edit(program.source, "int same(int x) { return x; }", "int same(int x) { return x + 1; }")
    plan = _plan(program, _compile(program))
    same = next(d for d in plan.decisions if d.name == "same")
    assert _status(same) == "changed"
    assert same.old is not None and same.old.size < ARCH.entry_jump_size
    assert plan.redirect_callers_instead(same) == ["add"]
    statuses = _statuses(plan)
    assert statuses["same"] == "part"
    assert statuses["add"] == "changed"
    assert _loaded_functions(plan) == {"same", "add"}


# -- the comparer on its own ------------------------------------------------------------


def _comparer(program: Program, obj: ObjectFile, memory: dict[int, bytes]) -> FunctionComparer:
    """A comparer whose "running" code is ``memory`` (address -> bytes), symbols as linked."""

    def read(address: int, size: int) -> bytes:
        for start, data in memory.items():
            if start <= address and address + size <= start + len(data):
                return data[address - start : address - start + size]
        return program.read(address, size)

    def address_of(symbol: ObjSymbol) -> int | None:
        try:
            return program.symbol_address(symbol.name)
        except (AssertionError, StopIteration):
            return None

    return FunctionComparer(
        obj,
        ARCH.relocations,
        address_of,
        read,
        lambda name: None,
        ARCH.find_plt_slot,
        ARCH.undo_got_relaxation,
        ARCH.decode_instructions,
    )


def test_comparer_sees_a_one_byte_change_in_running_code(program: Program) -> None:
    obj = _compile(program)
    scale = next(s for s in obj.iter_functions() if s.name == "scale")
    address = program.symbol_address("scale")
    running = program.read(address, scale.size)
    same = _comparer(program, obj, {address: running})
    assert same.matches_running(scale, address, scale.size)
    fields = {r.offset - scale.value for r in obj.relocations.get(scale.shndx, ())}
    plain = next(
        i
        for i in ARCH.decode_instructions(running, address)
        if not i.is_padding and not fields & set(range(i.address - address, i.end - address))
    )
    patched = bytearray(running)
    patched[plain.end - address - 1] ^= 0x01  # one bit of one instruction, no field in it
    other = _comparer(program, obj, {address: bytes(patched)})
    assert not other.matches_running(scale, address, scale.size)


def test_comparer_refuses_code_it_cannot_read(program: Program) -> None:
    obj = _compile(program)
    scale = next(s for s in obj.iter_functions() if s.name == "scale")

    def unreadable(address: int, size: int) -> bytes:
        raise ReliveError(f"cannot read {size} bytes at {address:#x}")

    comparer = _comparer(program, obj, {}).reading(unreadable)
    index = _section_of(obj, "counter")
    assert not comparer.matches_data(index, program.symbol_address("counter"))
    with pytest.raises(ReliveError):
        comparer.matches_running(scale, program.symbol_address("scale"), scale.size)

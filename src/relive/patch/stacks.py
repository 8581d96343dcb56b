"""Walk a held thread's stack with the unwind tables (``.eh_frame``) of its modules.

A frame is only moved to new code when relive knows exactly where its return
address lies (the slot the caller's CFA rule names) and where its callee-saved
registers are.  A heuristic scan cannot tell a stale number from a return
address; this walk can, and it stops at the first frame it cannot unwind
(code without tables, such as code relive loaded): frames beyond it are
never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from relive.elf.cfi import CfiError, FrameTable, Row, evaluate, load_frame_table
from relive.errors import ReliveError
from relive.patch.modules import RunningModule

MAX_FRAMES = 128

#: Where a register's value for a frame lives: ("reg", name) in the held thread's
#: registers, or ("mem", address) on the stack.
Location = tuple[str, int | str]


@dataclass(frozen=True)
class Frame:
    """One frame of a held thread, innermost first."""

    pc: int
    #: Where ``pc`` is stored: None for the thread's own instruction pointer,
    #: else the stack address of the return address (or of a signal frame's saved PC).
    pc_slot: int | None
    #: ``pc`` is exactly the next instruction (the innermost frame, or a frame a
    #: signal interrupted), not a return address after a call.
    exact: bool
    locations: dict[str, Location]


class FrameTables:
    """Unwind rows for every address of the process's modules (tables loaded up front)."""

    def __init__(self, modules: list[RunningModule]) -> None:
        self.ranges: list[tuple[int, int, int, FrameTable]] = []
        for module in modules:
            table = load_frame_table(module.file)
            if table is not None:
                self.ranges.append((module.start, module.end, module.bias, table))
        #: Rows already worked out (warmed before threads are held, see ``warm``).
        self._rows: dict[int, Row | None] = {}

    def find_row(self, address: int) -> Row | None:
        """The unwind row at ``address`` (None: no table covers it)."""
        if address not in self._rows:
            self._rows[address] = self._find_row(address)
        return self._rows[address]

    def _find_row(self, address: int) -> Row | None:
        for start, end, bias, table in self.ranges:
            if start <= address < end:
                try:
                    return table.find_row(address - bias)
                except (CfiError, IndexError, ValueError):
                    return None
        return None


@dataclass(frozen=True)
class Registers:
    """What the walk needs to know of the instruction set's registers."""

    #: Names by DWARF number; the return-address column names the PC register.
    dwarf: tuple[str, ...]
    callee_saved: tuple[str, ...]
    stack_pointer: str = "rsp"

    @property
    def pc(self) -> str:
        return self.dwarf[-1]

    def name(self, number: int) -> str:
        if 0 <= number < len(self.dwarf):
            return self.dwarf[number]
        raise KeyError(number)


class StackWindow:
    """Reads of one stack, served from a single read of its top (while held)."""

    def __init__(
        self,
        read: Callable[[int, int], bytes],
        sp: int,
        read_prefix: Callable[[int, int], bytes] | None = None,
    ) -> None:
        self.read = read
        self.base = sp & ~7
        self.data = b""
        to_page_end = 4096 - (self.base & 4095)
        if read_prefix is not None:  # one read, however near its end the stack is
            self.data = read_prefix(self.base, to_page_end + 8192)
            return
        for size in (to_page_end + 8192, to_page_end):  # a stack may end in a few pages
            try:
                self.data = read(self.base, size)
                break
            except (ReliveError, OSError):
                continue

    def word(self, address: int) -> int:
        offset = address - self.base
        if 0 <= offset <= len(self.data) - 8:
            return int.from_bytes(self.data[offset : offset + 8], "little")
        return int.from_bytes(self.read(address, 8), "little")


def unwind(
    registers: dict[str, int],
    names: Registers,
    read_word: Callable[[int], int],
    find_row: Callable[[int], Row | None],
) -> tuple[list[Frame], bool]:
    """The frames of a thread whose registers are ``registers`` (by name), innermost first.

    The flag says whether the walk reached the outermost frame (whose return
    address the tables mark undefined), so that no frame was left unseen.
    """
    values = dict(registers)
    locations: dict[str, Location] = {name: ("reg", name) for name in names.dwarf}
    pc = registers[names.pc]
    frames = [Frame(pc, None, True, dict(locations))]
    exact = True
    for _ in range(MAX_FRAMES):
        row = find_row(pc if exact else pc - 1)
        if row is None:
            return frames, False
        try:
            step = _step(row, names, values, locations, read_word)
        except (CfiError, OSError, IndexError, KeyError, ReliveError):
            return frames, False
        if step is None:
            return frames, True  # the outermost frame: its return address is undefined
        values, locations, slot = step
        pc = values[names.pc]
        if pc == 0:
            return frames, True
        if slot is None:
            return frames, False
        exact = row.signal_frame
        frames.append(Frame(pc, slot, exact, dict(locations)))
    return frames, False


def _step(
    row: Row,
    names: Registers,
    values: dict[str, int],
    locations: dict[str, Location],
    read_word: Callable[[int], int],
) -> tuple[dict[str, int], dict[str, Location], int | None] | None:
    """The caller's register values and locations, and where its PC was read from."""

    def register(number: int) -> int:
        return values[names.name(number)]

    if row.cfa_expression:
        cfa = evaluate(row.cfa_expression, register, read_word)
    else:
        cfa = (register(row.cfa_register) + row.cfa_offset) & 0xFFFFFFFFFFFFFFFF
    sp = names.stack_pointer
    caller_values: dict[str, int] = {sp: cfa}
    caller_locations: dict[str, Location] = {}
    keep = names.callee_saved if not row.signal_frame else names.dwarf[:-1]
    for name in keep:
        if name in values and name != sp:
            caller_values[name] = values[name]
            caller_locations[name] = locations[name]
    slot: int | None = None
    for number, rule in row.rules.items():
        name = names.pc if number == row.return_column else names.name(number)
        if name == sp and rule.kind not in ("offset", "expression"):
            continue
        if rule.kind in ("offset", "expression"):
            address = (
                cfa + rule.value
                if rule.kind == "offset"
                else evaluate(rule.expression, register, read_word, cfa)
            ) & 0xFFFFFFFFFFFFFFFF
            caller_values[name] = read_word(address)
            caller_locations[name] = ("mem", address)
            if name == names.pc:
                slot = address
        elif rule.kind == "val_offset":
            caller_values[name] = cfa + rule.value
            caller_locations.pop(name, None)
        elif rule.kind == "register":
            source = names.name(rule.value)
            caller_values[name] = values[source]
            caller_locations[name] = locations[source]
        elif rule.kind == "undefined":
            if name == names.pc:
                return None
            caller_values.pop(name, None)
            caller_locations.pop(name, None)
    if names.pc not in caller_values:
        return None
    return caller_values, caller_locations, slot

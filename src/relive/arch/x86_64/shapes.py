"""Whether two versions of a function have the same shape, and where a frame can resume.

Moving a running frame from old code into new code is only right when the new
code expects the frame exactly as the old code left it.  Two versions have the
same shape when they are the same instruction sequence, instruction for
instruction, except for immediates that are not stack adjustments,
RIP-relative displacements, and call or jump targets outside the function:
same registers, same stack offsets, same control flow (a 2-byte and a 5-byte
jump to the counterpart target are the same).  Then every old instruction has
a counterpart, and a thread can continue at the counterpart of where it was.

One more thing must hold: a value the old code computed *differently* before
the thread got where it is (a constant or a string address hoisted out of the
loop) must not be used afterwards, or the thread would keep the old value.
:class:`ShapeMap` finds those values with a forward taint analysis over the
function's control flow and a backward liveness analysis; where such a value
sits in a register defined by one constant-producing instruction, the frame
can still move with that register set to the new value (a *fixup*); otherwise
it cannot move.  Memory that is not the frame (globals, the heap) is program
state, kept across reloads as everywhere else in relive.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

from relive.arch.base import Equivalent, Resume

#: x86-64 registers by DWARF number (the psABI's numbering), and back.
DWARF_REGISTERS = (
    "rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip",
)  # fmt: skip
DWARF_NUMBER = {name: n for n, name in enumerate(DWARF_REGISTERS)}
#: Registers a callee keeps (a frame that called out still has them on return).
CALLEE_SAVED = ("rbx", "rbp", "r12", "r13", "r14", "r15")
_ARGUMENTS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9", "rax")
_VECTOR_ARGUMENTS = tuple(f"xmm{i}" for i in range(8))
_CALLER_SAVED = (
    "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "flags",
    *(f"xmm{i}" for i in range(16)),
)  # fmt: skip
#: Everything a jump out of the function (a tail call, a cold part) may read.
_EVERY_REGISTER = frozenset(
    {*DWARF_REGISTERS[:16], *(f"xmm{i}" for i in range(16)), "flags"} - {"rsp"}
)
_ENTRY = -1  # the pseudo-instruction "function entry" in reaching definitions


def load_disassembler() -> None:
    """Import capstone (some 30 ms of a reload's start-up), e.g. while gcc runs."""
    import capstone  # noqa: F401  (the import is the work)


@cache
def _disassembler() -> Any:
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


@cache
def _canonical(name: str) -> str | None:
    """The location a register name belongs to (``eax`` -> ``rax``); None for rip."""
    legacy = {
        "a": "rax", "b": "rbx", "c": "rcx", "d": "rdx",
        "si": "rsi", "di": "rdi", "bp": "rbp", "sp": "rsp",
    }  # fmt: skip
    if name in ("rip", "eip", "ip"):
        return None
    if name in ("rflags", "eflags", "flags"):
        return "flags"
    if name[:3] in ("xmm", "ymm", "zmm"):
        return "xmm" + name[3:]
    if name.startswith("r") and name[1:2].isdigit():
        return "r" + "".join(c for c in name[1:] if c.isdigit())
    core = name[1:] if name[0] in "re" and len(name) == 3 else name
    core = core.rstrip("lhx") if core[-1:] in "lhx" and len(core) == 2 else core
    if core in ("sil", "dil", "bpl", "spl"):
        core = core[:2]
    return legacy.get(core, name)


def _is_partial(name: str) -> bool:
    """An 8- or 16-bit register write keeps the rest of the register."""
    if name.startswith("r") and name[-1:] in "wb":
        return True
    return len(name) == 2 or name in ("sil", "dil", "bpl", "spl")


@dataclass(frozen=True)
class _Insn:
    address: int
    size: int
    text: str
    key: tuple[object, ...]
    values: tuple[tuple[int, int], ...]  # (value, bytes it reads there; 0: an address)
    inner_target: int | None  # a branch to an address inside the function
    kind: str  # "plain", "jump", "cond", "call", "ret", "indirect", "stop"
    uses: frozenset[str]
    defs: frozenset[str]  # fully overwritten
    written: frozenset[str]  # written at all (partly, too)
    constant: tuple[str, int] | None  # (register, value) when it sets a register to a constant
    sp_delta: int | None = None  # stack pointer relative to the entry, before it


def _decode(code: bytes, address: int) -> list[_Insn] | None:
    """Every instruction of ``code`` with its shape key, or None if it does not decode
    (or a branch lands inside an instruction)."""
    decoded = _decode_once(code, address)
    return None if decoded is None else list(decoded)


@lru_cache(maxsize=256)
def _decode_once(code: bytes, address: int) -> tuple[_Insn, ...] | None:
    """:func:`_decode`, done once per code and address (instructions are frozen).

    Every old version of a function a thread may still be in is matched against the
    new code at each reload: in a ``watch`` session the last reload's new code is
    this reload's newest old version, at the same address, and the new code is the
    same for every pair.
    """
    end = address + len(code)
    raw = []
    decoded = 0
    for insn in _disassembler().disasm(code, address):
        decoded += insn.size
        operands = list(insn.operands)
        key, values, inner, direct = _shape_key(insn, operands, address, end)
        raw.append((insn, operands, key, values, inner, _kind(insn, direct)))
    if decoded != len(code):
        return None
    index = {r[0].address: k for k, r in enumerate(raw)}
    if any(r[4] is not None and r[4] not in index for r in raw):
        return None
    successors = _flow([r[5] for r in raw], [r[4] for r in raw], index)
    deltas = _sp_deltas([(r[0], r[1]) for r in raw], [r[5] for r in raw], successors)
    out: list[_Insn] = []
    for (insn, operands, key, values, inner, kind), sp_delta in zip(raw, deltas, strict=True):
        uses, defs, written = _effects(insn, operands, kind, sp_delta, inner is not None)
        out.append(
            _Insn(
                insn.address,
                insn.size,
                f"{insn.mnemonic} {insn.op_str}".strip(),
                key,
                values,
                inner,
                kind,
                uses,
                defs,
                written,
                _constant(insn, operands, insn.mnemonic),
                sp_delta,
            )
        )
    return tuple(out)


def _sp_deltas(
    code: list[tuple[Any, list[Any]]], kinds: list[str], successors: list[tuple[int, ...]]
) -> list[int | None]:
    """The stack pointer relative to the entry before each instruction, following
    the control flow (None where it is unknown or paths disagree)."""
    unseen = object()
    deltas: list[object] = [unseen] * len(code)
    if code:
        deltas[0] = 0
    work = [0] if code else []
    while work:
        k = work.pop()
        before = deltas[k]
        insn, operands = code[k]
        after = None if before is None else _next_sp_delta(insn, insn.mnemonic, operands, before)  # type: ignore[arg-type]
        for s in successors[k]:
            if deltas[s] is unseen:
                deltas[s] = after
                work.append(s)
            elif deltas[s] != after and kinds[k] != "indirect" and deltas[s] is not None:
                deltas[s] = None  # paths disagree
                work.append(s)
    return [d if isinstance(d, int) else None for d in deltas]


def _shape_key(
    insn: Any, operands: list[Any], start: int, end: int
) -> tuple[tuple[object, ...], tuple[tuple[int, int], ...], int | None, int | None]:
    """What must be equal in both versions, the values that may differ, and branch targets.

    Returns ``(key, values, inner target, direct target)``; values are
    ``(value, bytes read there)`` with -1 for an immediate, 0 for an address used
    as such (``lea``).
    """
    from capstone import CS_GRP_CALL, CS_GRP_JUMP
    from capstone.x86 import X86_OP_IMM, X86_OP_MEM, X86_OP_REG, X86_REG_RIP

    branch = insn.group(CS_GRP_CALL) or insn.group(CS_GRP_JUMP)
    touches_rsp = any(
        op.type == X86_OP_REG and insn.reg_name(op.reg) in ("rsp", "esp") for op in operands
    )
    key: list[object] = [insn.id, tuple(insn.prefix)]
    values: list[tuple[int, int]] = []
    inner: int | None = None
    direct: int | None = None
    for op in operands:
        if op.type == X86_OP_REG:
            key.append(("r", op.reg, op.size))
        elif op.type == X86_OP_IMM and branch:
            direct = op.imm
            if start <= op.imm < end:
                inner = op.imm
                key.append(("in",))
            else:
                key.append(("out",))
                values.append((op.imm, -1))
        elif op.type == X86_OP_IMM and (touches_rsp or insn.mnemonic == "enter"):
            key.append(("i", op.imm, op.size))  # a stack adjustment: the frame's size
        elif op.type == X86_OP_IMM:
            key.append(("i", op.size))
            values.append((op.imm, -1))
        elif op.type == X86_OP_MEM and op.mem.base == X86_REG_RIP:
            mem = op.mem
            key.append(("m", mem.segment, "rip", mem.index, mem.scale, op.size))
            read = 0 if insn.mnemonic == "lea" else op.size
            values.append((insn.address + insn.size + mem.disp, read))
        elif op.type == X86_OP_MEM:
            mem = op.mem
            key.append(("m", mem.segment, mem.base, mem.index, mem.scale, mem.disp, op.size))
        else:
            key.append(("?", op.type))
    return tuple(key), tuple(values), inner, direct


def _kind(insn: Any, direct: int | None) -> str:
    from capstone import CS_GRP_CALL, CS_GRP_JUMP, CS_GRP_RET

    if insn.group(CS_GRP_RET):
        return "ret"
    if insn.group(CS_GRP_CALL):
        return "call"
    if insn.group(CS_GRP_JUMP):
        if direct is None:
            return "indirect"
        return "jump" if insn.mnemonic == "jmp" else "cond"
    if insn.mnemonic in ("hlt", "ud2", "int3"):
        return "stop"
    return "plain"


def _next_sp_delta(insn: Any, mnemonic: str, operands: list[Any], delta: int | None) -> int | None:
    """Stack pointer relative to the entry after ``insn`` (None once unknown)."""
    from capstone.x86 import X86_OP_IMM, X86_OP_REG

    if delta is None:
        return None
    if mnemonic.startswith("push"):
        return delta - 8
    if mnemonic.startswith("pop"):
        return delta + 8
    if (
        mnemonic in ("sub", "add")
        and len(operands) == 2
        and operands[0].type == X86_OP_REG
        and insn.reg_name(operands[0].reg) == "rsp"
    ):
        if operands[1].type != X86_OP_IMM:
            return None
        step = int(operands[1].imm)
        return delta - step if mnemonic == "sub" else delta + step
    written = insn.regs_access()[1]
    if any(insn.reg_name(r) == "rsp" for r in written) and mnemonic not in ("call", "ret"):
        return None
    return delta


def _slot(insn: Any, op: Any, sp_delta: int | None) -> str | None:
    """A name for a frame slot addressed by ``op`` (None for other memory)."""
    mem = op.mem
    if mem.index != 0 or mem.base == 0:
        return None
    base = insn.reg_name(mem.base)
    if base == "rbp":
        return f"[rbp{mem.disp:+d}]"
    if base == "rsp" and sp_delta is not None:
        return f"[cfa{sp_delta + mem.disp - 8:+d}]"
    return None


def _effects(
    insn: Any, operands: list[Any], kind: str, sp_delta: int | None, inner: bool
) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """Locations ``insn`` reads, fully overwrites and writes at all (registers and frame slots)."""
    from capstone import CS_AC_READ, CS_AC_WRITE
    from capstone.x86 import X86_OP_MEM

    read_ids, written_ids = insn.regs_access()
    uses: set[str] = set()
    defs: set[str] = set()
    for reg in read_ids:
        name = _canonical(insn.reg_name(reg))
        if name:
            uses.add(name)
    for reg in written_ids:
        raw = insn.reg_name(reg)
        name = _canonical(raw)
        if not name:
            continue
        if _is_partial(raw) or name.startswith("xmm"):
            uses.add(name)  # the rest of the register survives the write
        defs.add(name)
    for op in operands:
        if op.type != X86_OP_MEM:
            continue
        slot = _slot(insn, op, sp_delta)
        if slot is None:
            continue
        if op.access & CS_AC_READ:
            uses.add(slot)
        if op.access & CS_AC_WRITE:
            defs.add(slot)
    if kind == "call":
        uses |= {*_ARGUMENTS, *_VECTOR_ARGUMENTS}
        defs |= set(_CALLER_SAVED)
    elif kind == "ret":
        uses |= {"rax", "rdx", "xmm0", "xmm1", *CALLEE_SAVED}
    elif kind in ("jump", "cond", "indirect") and not inner:
        uses |= _EVERY_REGISTER
    defs.discard("rsp")
    uses.discard("rsp")
    full_defs = frozenset(d for d in defs if d not in uses or kind == "call" or d.startswith("["))
    return frozenset(uses), full_defs, frozenset(defs)


def _constant(insn: Any, operands: list[Any], mnemonic: str) -> tuple[str, int] | None:
    """``(register, value)`` when ``insn`` only sets a general register to a constant."""
    from capstone.x86 import X86_OP_IMM, X86_OP_MEM, X86_OP_REG, X86_REG_RIP

    if len(operands) != 2 or operands[0].type != X86_OP_REG:
        return None
    raw = insn.reg_name(operands[0].reg)
    name = _canonical(raw)
    if name not in DWARF_NUMBER or _is_partial(raw):
        return None
    width = operands[0].size
    source = operands[1]
    if mnemonic in ("mov", "movabs") and source.type == X86_OP_IMM:
        value = source.imm & ((1 << (8 * width)) - 1)
        return name, value
    if mnemonic == "lea" and source.type == X86_OP_MEM and source.mem.base == X86_REG_RIP:
        if source.mem.index != 0:
            return None
        value = (insn.address + insn.size + source.mem.disp) & ((1 << (8 * width)) - 1)
        return name, value
    return None


@dataclass
class ShapeMap:
    """Two versions of one function with the same shape, and what can move between them."""

    old: list[_Insn]
    new: list[_Insn]
    differs: list[bool]
    successors: list[tuple[int, ...]]
    index: dict[int, int]  # old instruction address -> index
    tainted: list[frozenset[str]] = field(default_factory=list)
    live: list[frozenset[str]] = field(default_factory=list)
    _reaching: dict[str, list[frozenset[int]]] = field(default_factory=dict)
    _resumes: dict[int, Resume | str] = field(default_factory=dict)

    @property
    def changed(self) -> list[str]:
        """The old instructions that differ (for messages)."""
        return [
            f"{i.address:#x}: {i.text}" for i, d in zip(self.old, self.differs, strict=True) if d
        ]

    def prepare(self) -> None:
        """Work out :meth:`resume` for every return address (after each call) now,
        before threads are held; a PC elsewhere is worked out when asked."""
        for k, insn in enumerate(self.old[:-1]):
            if insn.kind == "call":
                self._resumes[self.old[k + 1].address] = self._resume(self.old[k + 1].address)

    def resume(self, old_pc: int) -> Resume | str:
        """Where a frame at ``old_pc`` continues, or why it cannot move."""
        found = self._resumes.get(old_pc)
        return found if found is not None else self._resume(old_pc)

    def _resume(self, old_pc: int) -> Resume | str:
        i = self.index.get(old_pc)
        if i is None:
            return f"{old_pc:#x} is not an instruction boundary of the old code"
        stale = self.tainted[i] & self.live[i]
        fixups = []
        for location in sorted(stale):
            definers = self._reaching_definitions(location)[i]
            if len(definers) == 1:
                (d,) = definers
                constant = self.new[d].constant if d != _ENTRY and self.differs[d] else None
                if constant is not None and constant[0] == location:
                    fixups.append(constant)
                    continue
            where = ", ".join(
                f"{self.old[d].address:#x} ({self.old[d].text})"
                for d in sorted(definers)
                if d != _ENTRY
            )
            return (
                f"{location} holds a value computed differently by the old code "
                f"(at {where or 'entry'}) and is still used after {old_pc:#x}"
            )
        return Resume(self.new[i].address, tuple(fixups))

    def _reaching_definitions(self, location: str) -> list[frozenset[int]]:
        """For each instruction, which instructions' writes of ``location`` may reach it."""
        cached = self._reaching.get(location)
        if cached is not None:
            return cached
        n = len(self.old)
        into: list[frozenset[int]] = [frozenset()] * n
        if n:
            into[0] = frozenset({_ENTRY})
        work = list(range(n - 1, -1, -1))
        while work:
            k = work.pop()
            insn = self.old[k]
            if location in insn.defs:
                out = frozenset({k})
            elif location in insn.uses and location in _written(insn):
                out = into[k] | {k}  # a partial write: both may be seen
            else:
                out = into[k]
            for s in self.successors[k]:
                merged = into[s] | out
                if merged != into[s]:
                    into[s] = merged
                    work.append(s)
        self._reaching[location] = into
        return into


def _written(insn: _Insn) -> frozenset[str]:
    return insn.written


def match_shapes(
    old_code: bytes,
    old_address: int,
    new_code: bytes,
    new_address: int,
    equivalent: Equivalent,
) -> ShapeMap | str:
    """The instruction map between two versions of a function, or why there is none."""
    old = _decode(old_code, old_address)
    new = _decode(new_code, new_address)
    if old is None or new is None:
        return "the code does not disassemble cleanly"
    if len(old) != len(new):
        return f"{len(old)} instructions became {len(new)}"
    index = {insn.address: k for k, insn in enumerate(old)}
    new_index = {insn.address: k for k, insn in enumerate(new)}
    differs = []
    for k, (a, b) in enumerate(zip(old, new, strict=True)):
        if a.key != b.key:
            return f"instruction {k} differs: {a.text} -> {b.text}"
        if a.inner_target is not None and index.get(a.inner_target) != new_index.get(
            b.inner_target or -1
        ):
            return f"instruction {k} branches elsewhere: {a.text} -> {b.text}"
        differs.append(_values_differ(a, b, equivalent))
    successors = _successors(old, index)
    shape = ShapeMap(old, new, differs, successors, index)
    shape.tainted = _taint(old, differs, successors)
    shape.live = _liveness(old, successors)
    shape.prepare()
    return shape


def _values_differ(a: _Insn, b: _Insn, equivalent: Equivalent) -> bool:
    if a.kind in ("call", "jump"):
        return False  # another callee: its effects are the call's, not a value
    for (old_value, size), (new_value, _) in zip(a.values, b.values, strict=True):
        if old_value == new_value:
            continue
        if size < 0 or not equivalent(old_value, new_value, size):
            return True
    return False


def _successors(code: list[_Insn], index: dict[int, int]) -> list[tuple[int, ...]]:
    return _flow([i.kind for i in code], [i.inner_target for i in code], index)


def _flow(
    kinds: list[str], inner_targets: list[int | None], index: dict[int, int]
) -> list[tuple[int, ...]]:
    """The successors of each instruction (a jump table may go anywhere)."""
    everything = tuple(range(len(kinds)))
    out: list[tuple[int, ...]] = []
    for k, (kind, target) in enumerate(zip(kinds, inner_targets, strict=True)):
        following = (k + 1,) if k + 1 < len(kinds) else ()
        if kind == "indirect":
            out.append(everything)
        elif kind in ("ret", "stop"):
            out.append(())
        elif kind == "jump":
            out.append((index[target],) if target is not None else ())
        elif kind == "cond" and target is not None:
            out.append((*following, index[target]))
        else:
            out.append(following)
    return out


def _taint(
    code: list[_Insn], differs: list[bool], successors: list[tuple[int, ...]]
) -> list[frozenset[str]]:
    """For each instruction, locations that may hold a value the old code computed differently."""
    n = len(code)
    into: list[frozenset[str]] = [frozenset()] * n
    work = list(range(n - 1, -1, -1))
    while work:
        k = work.pop()
        insn = code[k]
        incoming = into[k]
        dirty = differs[k] or bool(insn.uses & incoming)
        # A completed call's results are program state, like memory: the thread
        # made that call and the new code continues from its outcome.
        produced = frozenset() if insn.kind == "call" else insn.defs
        out = (incoming - insn.defs) | (produced if dirty else frozenset())
        for s in successors[k]:
            merged = into[s] | out
            if merged != into[s]:
                into[s] = merged
                work.append(s)
    return into


def _liveness(code: list[_Insn], successors: list[tuple[int, ...]]) -> list[frozenset[str]]:
    """For each instruction, locations read on some path from it before being overwritten."""
    n = len(code)
    predecessors: list[list[int]] = [[] for _ in range(n)]
    for k, succ in enumerate(successors):
        for s in succ:
            predecessors[s].append(k)
    live_in: list[frozenset[str]] = [frozenset()] * n
    work = list(range(n))
    while work:
        k = work.pop()
        out: frozenset[str] = frozenset().union(*(live_in[s] for s in successors[k]))
        new = code[k].uses | (out - code[k].defs)
        if new != live_in[k]:
            live_in[k] = new
            work.extend(predecessors[k])
    return live_in


def in_syscall(regs: Any) -> bool:
    """Whether a held thread stopped inside a system call (``orig_rax`` is its number)."""
    return bool(int(regs.orig_rax) & 0xFFFFFFFFFFFFFFFF != 0xFFFFFFFFFFFFFFFF)


#: What a call leaves for its caller: the callee's results, and the stack pointer.
_CALL_RESULTS = frozenset({"rax", "rdx", "xmm0", "xmm1", "rsp"})


@dataclass(frozen=True)
class CallSite:
    """A call of the old code and its counterpart in the new code (same callee, same
    ordinal among the calls to it), and what the new code needs of the frame after it."""

    old_return: int
    new_return: int
    callee: int
    #: Frame bytes below the CFA at the return address (old, new).
    frame_size: tuple[int, int]
    #: CFA-relative offsets of stack slots the new code reads after the call.
    live_slots: frozenset[int]
    #: Registers (besides the call's results) the new code reads after the call.
    live_registers: frozenset[str]
    #: Where the frame pointer points, relative to the CFA (None: no frame pointer).
    frame_pointer: int | None
    #: Why the frame cannot move here ("" if the frame's layout allows it).
    problem: str = ""


def match_call_sites(
    old_code: bytes,
    old_address: int,
    new_code: bytes,
    new_address: int,
    equivalent: Equivalent,
) -> list[CallSite] | str:
    """Each call of the old code paired with its counterpart in the new code, with
    the frame checks that do not need debug information done."""
    old = _decode(old_code, old_address)
    new = _decode(new_code, new_address)
    if old is None or new is None:
        return "the code does not disassemble cleanly"
    old_frame, new_frame = _frame_facts(old), _frame_facts(new)
    new_live = _liveness(new, _successors(new, {i.address: k for k, i in enumerate(new)}))
    sites = []
    for ko, kn, callee, problem in _pair_calls(old, new, old_address, new_address, equivalent):
        if ko + 1 >= len(old) or kn + 1 >= len(new):
            continue
        after_old, after_new = old[ko + 1], new[kn + 1]
        sizes = (-(after_old.sp_delta or 0) + 8, -(after_new.sp_delta or 0) + 8)
        if not problem and (after_old.sp_delta is None or after_new.sp_delta is None):
            problem = "the frame's size there is not known"
        elif not problem and sizes[0] != sizes[1]:
            problem = f"frame size {sizes[0]} -> {sizes[1]} bytes"
        elif not problem and old_frame != new_frame:
            problem = "callee-saved registers are saved in other places"
        # After a call, only callee-saved registers and the frame still hold what
        # the code before it computed (the others the callee may have changed).
        live = new_live[kn + 1] - _CALL_RESULTS
        slots = set()
        registers = set()
        for location in live:
            offset = _cfa_offset(location, new_frame[1])
            if offset is not None:
                slots.add(offset)
            elif location in CALLEE_SAVED and not (location == "rbp" and new_frame[1] is not None):
                registers.add(location)
        sites.append(
            CallSite(
                after_old.address,
                after_new.address,
                callee,
                sizes,
                frozenset(slots),
                frozenset(registers),
                new_frame[1],
                problem,
            )
        )
    return sites


def _pair_calls(
    old: list[_Insn], new: list[_Insn], old_address: int, new_address: int, equivalent: Equivalent
) -> Iterator[tuple[int, int, int, str]]:
    """``(old index, new index, callee, problem)`` for calls with the same callee and
    ordinal; calls to a callee that the new code calls a different number of times
    are paired with a problem (no counterpart can be told)."""
    old_calls = [
        (k, _callee(i, old_address, new_address)) for k, i in enumerate(old) if i.kind == "call"
    ]
    new_calls = [
        (k, _callee(i, new_address, new_address)) for k, i in enumerate(new) if i.kind == "call"
    ]
    for target in dict.fromkeys(t for _, t in old_calls if t is not None):
        mine = [k for k, t in old_calls if t == target]
        theirs = [
            k for k, t in new_calls if t is not None and (t == target or equivalent(target, t, 0))
        ]
        if len(mine) != len(theirs):
            for k in mine:
                yield k, k, target, f"{len(mine)} calls to {target:#x} became {len(theirs)}"
            continue
        for ko, kn in zip(mine, theirs, strict=True):
            yield ko, kn, target, ""


def _callee(insn: _Insn, own: int, new_own: int) -> int | None:
    """The direct call's target (a recursive call names the new function's start)."""
    if insn.inner_target is not None:
        return new_own if insn.inner_target == own else None
    return insn.values[0][0] if insn.values else None


def _frame_facts(code: list[_Insn]) -> tuple[tuple[tuple[str, int], ...], int | None]:
    """Where callee-saved registers are pushed (CFA-relative) and where the frame
    pointer points (CFA-relative; None when rbp is no frame pointer)."""
    saved = []
    frame_pointer = None
    for insn in code:
        if insn.sp_delta is None:
            continue
        if insn.text.startswith("push "):
            register = _canonical(insn.text.split()[1])
            if register in CALLEE_SAVED:
                saved.append((register, insn.sp_delta - 16))
        elif insn.text == "mov rbp, rsp":
            frame_pointer = insn.sp_delta - 8
    return tuple(sorted(set(saved))), frame_pointer


def _cfa_offset(location: str, frame_pointer: int | None) -> int | None:
    """The CFA-relative offset of a frame slot named by the dataflow (None: not a slot)."""
    if location.startswith("[cfa"):
        return int(location[4:-1])
    if location.startswith("[rbp") and frame_pointer is not None:
        return frame_pointer + int(location[4:-1])
    return None

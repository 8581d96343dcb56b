"""Decide what a reload does: which functions change, what is loaded, what is bound."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field

from relive.arch.base import Arch, Need
from relive.elf.constants import STB_WEAK
from relive.elf.objfile import ObjectFile, ObjSymbol
from relive.errors import LinkError
from relive.link import Bound, Layout, LinkedImage, LinkRequest, link, plan_layout
from relive.link.linker import GOT_SYMBOL
from relive.link.reach import reachable_sections, unwind_data_roots
from relive.patch.binder import Binder, OldDefinition, is_skipped_section
from relive.patch.codekey import CodeKeys
from relive.patch.constants import bind_constant, is_constant_section
from relive.patch.decision import Decision as Decision
from relive.patch.diff import AddressOf, FunctionComparer
from relive.patch.initial import DataChange, find_initial_changes, known_initial_changes
from relive.patch.matched import Binding, KnownKeys, decode_bindings, match_key
from relive.patch.modules import RunningModule
from relive.patch.rules import check_constructors
from relive.patch.snapshot import ChunkedReader


@dataclass(frozen=True)
class FarData:
    """Why no plan was made: the new code refers directly (a 32-bit PC-relative
    access) to these variables of another module, which lie out of reach.
    Compiling to reach them through the GOT fixes it (see ``patch.planning``)."""

    names: list[str]


class FarDataReference(LinkError):
    """New code refers directly to variables of another module that is out of reach."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(
            f"the new code refers directly to {', '.join(names)}, which live too far away",
            hint="rebuild the program as PIE, or compile with -mno-direct-extern-access",
        )
        self.names = names


@dataclass(slots=True)
class FunctionDecision:
    """What a reload does with one function of the new object."""

    symbol: ObjSymbol
    old: OldDefinition | None
    status: Decision
    fingerprint: str
    reason: str = ""
    #: For a part: its code differs from the running one.
    differs: bool = False
    #: Found equal to the code at its running entry (not by a recorded fingerprint):
    #: what the next reload may trust (``patch.matched.match_key``); "" otherwise.
    matched: str = ""
    #: Its code key (``patch.codekey``); "" when none was computed.
    key: str = ""

    @property
    def name(self) -> str:
        """The function's name."""
        return self.symbol.name


@dataclass
class ReloadPlan:
    """Everything decided about one object before any byte is written."""

    source: str
    module: RunningModule
    obj: ObjectFile
    decisions: list[FunctionDecision]
    layout: Layout
    binder: Binder
    new_data: list[ObjSymbol] = field(default_factory=list)
    #: Writable variables the program has whose initial value the new source changed.
    initial_changed: list[DataChange] = field(default_factory=list)
    #: What the user should know about this plan (said before anything is written).
    notices: list[str] = field(default_factory=list)
    #: The binding context the fingerprints were computed in (``patch.matched``),
    #: and the object's code keys; None: none were computed, none is recorded.
    keys_context: str | None = None
    code_keys: CodeKeys | None = None
    #: How each data section was bound (``patch.matched.encode_bindings``).
    bindings: dict[int, tuple[Binding, Bound]] = field(default_factory=dict)

    def redirect_callers_instead(self, callee: FunctionDecision) -> list[str]:
        """Stop redirecting ``callee``; redirect the functions of this object that
        reference it (their new code calls the new callee).  Returns their names;
        empty when there are none (then nothing is changed)."""
        callers = [
            d
            for d in self.decisions
            if d is not callee
            and d.old is not None
            and d.status in (Decision.CHANGED, Decision.UNCHANGED)
            and any(
                r.symbol.shndx == callee.symbol.shndx or r.symbol.name == callee.name
                for r in self.obj.relocations.get(d.symbol.shndx, ())
            )
        ]
        if not callers:
            return []
        callee.status = Decision.PART
        callee.reason = "too small for an entry jump: callers reloaded"
        for caller in callers:
            caller.status = Decision.CHANGED
        request = self.layout.request
        code = {i for i in request.load if self.obj.sections[i].is_exec}
        code |= {d.symbol.shndx for d in callers}
        load = _reachable_load(self.obj, self.decisions, self.bindings, code, self.initial_changed)
        bound = {k: v for k, v in request.bound_sections.items() if k not in load}
        externals = _resolve_externals(self.obj, self.binder, load)
        far = _find_far_data(self.obj, request.arch, self.module, load, externals)
        if far:
            raise FarDataReference(far)
        self.layout = _lay_out(
            self.obj,
            self.binder,
            request.arch,
            load,
            bound,
            externals,
            _original_entries(self.decisions),
        )
        return [d.name for d in callers]

    def link_initial_value(self, change: DataChange, image: LinkedImage) -> bytes:
        """The new initial value of ``change``'s variables, relocated for their running
        storage: pointers in it bound like the new code's (``--reinit``)."""
        request = self.layout.request
        bound = dict(request.bound_sections)
        for index, offset in image.layout.section_offsets.items():
            bound[index] = Bound(address=image.address_of(offset))
        bound.pop(change.index, None)
        externals = {
            **request.externals,
            **_resolve_externals(self.obj, self.binder, {change.index}),
        }
        alone = LinkRequest(
            obj=self.obj,
            arch=request.arch,
            load=frozenset({change.index}),
            bound_sections=bound,
            externals=externals,
            original_entries=request.original_entries,
        )
        layout = plan_layout(alone)
        offset = layout.section_offsets[change.index]
        linked = link(layout, (change.bound.address or 0) - offset)
        return linked.data[offset : offset + self.obj.sections[change.index].size]

    @property
    def loads_nothing_new(self) -> bool:
        """No function to load and no new variable: the block would serve no one."""
        return not self.new_data and not self.with_status(Decision.CHANGED, Decision.NEW)

    def with_status(self, *statuses: Decision) -> list[FunctionDecision]:
        """Decisions with one of the given statuses, in object order."""
        return [d for d in self.decisions if d.status in statuses]


def build_plan(
    source: str,
    obj: ObjectFile,
    binder: Binder,
    arch: Arch,
    previous_fingerprints: dict[str, str] | None,
    only: Collection[str] | None = None,
    redirect_all: bool = False,
    matches: Mapping[str, str] | None = None,
    on_step: Callable[[], None] = lambda: None,
    keys_context: str | None = None,
    known_keys: KnownKeys | None = None,
) -> ReloadPlan | FarData:
    """Classify functions, choose what to load and bind, and lay the block out.

    Returns :class:`FarData` instead of a plan when the new code reaches
    variables of another module directly and they are too far away.
    ``redirect_all`` (hot-deoptimize) redirects every function that runs, changed or not.
    ``matches``: what the previous reload found equal to the running code
    (``patch.matched``), trusted instead of comparing again.  ``on_step`` is
    called for each function decided (a big unit takes seconds: progress).
    ``keys_context``: the binding context, when code keys are to be computed (and
    recorded, ``patch.codekey``); ``known_keys``: what the last reload recorded,
    whose fingerprints are taken for functions whose key is the same in an object
    of the same layout.
    """
    keys, known_keys = _code_keys(obj, binder, keys_context, known_keys)
    known = None if known_keys is None else decode_bindings(obj, known_keys.bindings)
    bindings = known if known is not None else _bind_data_sections(obj, binder)
    bound = {i: b for i, (kind, b) in bindings.items() if kind is Binding.BOUND}
    read_only = {i: b for i, (kind, b) in bindings.items() if kind is Binding.CONSTANT}

    def address_of(symbol: ObjSymbol) -> int | None:
        return _address_in_process(obj, binder, bound, symbol)

    comparer = FunctionComparer(
        obj,
        arch.relocations,
        address_of,
        binder.read_memory,
        lambda name: _module_got_slot(binder.module, name),
        arch.find_plt_slot,
        arch.undo_got_relaxation,
        arch.decode_instructions,
    )
    notices: list[str] = []
    for index, binding in read_only.items():
        # A constant, or read-only after start-up: not state.  Same content: the running table;
        # else a new copy, and the functions using it differ from the running ones.
        if comparer.matches_data(index, binding.address or 0):
            bindings[index] = (Binding.EQUAL, binding)
        else:
            bindings[index] = (Binding.COPIED, binding)
    for index, (kind, binding) in bindings.items():
        if kind is Binding.EQUAL:
            bound[index] = binding
    # The data sections are bound now: where a symbol lives no longer changes, and
    # a big unit asks for the same callees and variables thousands of times.
    comparer.address_of = _memoized(address_of)
    # Thousands of functions' code and strings: read in chunks, each once (kept
    # only while the functions are decided).
    decisions = _decide_all(
        obj,
        on_step,
        comparer.reading(ChunkedReader(binder.read_memory)),
        lambda symbol, deciding: _decide(
            symbol,
            binder,
            deciding,
            previous_fingerprints,
            only,
            redirect_all,
            matches,
            keys,
            known_keys,
        ),
    )
    notices.extend(check_constructors(obj, {d.name: d.status for d in decisions}))
    _promote_parents_of_changed_parts(decisions)
    code = {d.symbol.shndx for d in decisions if d.status in (Decision.CHANGED, Decision.NEW)}
    # Bound as the last reload found, for an object of the same layout: the same
    # bytes compared with the same file, so the same answer (``patch.initial``).
    initial = None
    if known is not None and known_keys is not None:
        initial = known_initial_changes(obj, binder, bound, known_keys.initial)
    if initial is None:
        initial = find_initial_changes(obj, binder, comparer, bound, arch)
    load = _reachable_load(obj, decisions, bindings, code, initial)
    notices.extend(
        _describe_new_table(obj, i)
        for i, (kind, _) in bindings.items()
        if kind is Binding.COPIED and i in load
    )
    for decision in decisions:
        index = decision.symbol.shndx
        if index not in load and decision.old is not None:
            bound[index] = Bound(address=decision.old.address - decision.symbol.value)
    new_data = [
        s
        for i in load
        if not obj.sections[i].is_exec
        for s in obj.iter_section_symbols(i)
        if s.name
    ]
    externals = _resolve_externals(obj, binder, load)
    far = _find_far_data(obj, arch, binder.module, load, externals)
    if far:
        return FarData(far)
    layout = _lay_out(obj, binder, arch, load, bound, externals, _original_entries(decisions))
    return ReloadPlan(
        source,
        binder.module,
        obj,
        decisions,
        layout,
        binder,
        new_data,
        initial,
        notices,
        keys_context,
        keys,
        bindings,
    )


def _bind_data_sections(obj: ObjectFile, binder: Binder) -> dict[int, tuple[Binding, Bound]]:
    """Each data section's storage in the process: bound (a variable the program
    has), a constant to compare with the running copy, or new memory."""
    bindings: dict[int, tuple[Binding, Bound]] = {}
    for index, section in enumerate(obj.sections):
        if index == 0 or is_skipped_section(section) or section.is_exec:
            continue
        # A constant binds only where the running copy is equal (``patch.constants``).
        constant = is_constant_section(section)
        binding = bind_constant(binder, index) if constant else binder.bind_data_section(index)
        if binding is not None and (constant or binder.is_read_only_after_start(binding)):
            bindings[index] = (Binding.CONSTANT, binding)
        elif binding is not None:
            bindings[index] = (Binding.BOUND, binding)
        elif section.size and not section.is_tls:
            bindings[index] = (Binding.NEW, _NEW)
    return bindings


#: The binding of a section that gets new memory.
_NEW = Bound()


def _code_keys(
    obj: ObjectFile, binder: Binder, context: str | None, known: KnownKeys | None
) -> tuple[CodeKeys | None, KnownKeys | None]:
    """The object's code keys (when a context is given), and the known ones when
    they come from an object of the same layout."""
    if context is None:
        return None, None
    keys = CodeKeys(obj, _scope_label(binder))
    return keys, known if known is not None and known.layout == keys.layout else None


def _scope_label(binder: Binder) -> Callable[[ObjSymbol], str | None]:
    """The scope label of a function-scope static, for code keys: the new object's
    own (whether or not the running program has DWARF to bind it by)."""
    scopes = binder.object_scopes()

    def label(symbol: ObjSymbol) -> str | None:
        scope = scopes.get(symbol.index)
        return None if scope is None else scope.label()

    return label


def _decide_all(
    obj: ObjectFile,
    on_step: Callable[[], None],
    comparer: FunctionComparer,
    decide: Callable[[ObjSymbol, FunctionComparer], FunctionDecision],
) -> list[FunctionDecision]:
    """``decide`` for each function, comparing with ``comparer``; the relocations of
    one found unchanged are dropped once compared (the link will not need them: a
    big unit's add up)."""
    decisions = []
    for symbol in _functions_in_code(obj, on_step):
        decision = decide(symbol, comparer)
        decisions.append(decision)
        if decision.status not in (Decision.CHANGED, Decision.NEW):
            obj.forget_relocations_of(symbol)
    return decisions


def _functions_in_code(obj: ObjectFile, on_step: Callable[[], None]) -> Iterator[ObjSymbol]:
    """The functions to decide on (those in code sections), ``on_step`` before each."""
    for symbol in obj.iter_functions():
        if obj.sections[symbol.shndx].is_exec:
            on_step()
            yield symbol


def _memoized(address_of: AddressOf) -> AddressOf:
    """``address_of``, asked once per symbol."""
    known: dict[tuple[int, str], int | None] = {}

    def remembered(symbol: ObjSymbol) -> int | None:
        key = (symbol.index, symbol.name)
        try:
            return known[key]
        except KeyError:
            found = known[key] = address_of(symbol)
            return found

    return remembered


def _describe_new_table(obj: ObjectFile, index: int) -> str:
    names = ", ".join(s.name for s in obj.iter_section_symbols(index) if s.name)
    return (
        f"{names or obj.sections[index].name}: read-only table changed; the new code uses a "
        "new copy (code that is not reloaded keeps reading the old one)"
    )


def _lay_out(
    obj: ObjectFile,
    binder: Binder,
    arch: Arch,
    load: set[int],
    bound: dict[int, Bound],
    externals: dict[str, Bound],
    original_entries: dict[tuple[int, int], int],
) -> Layout:
    """Lay the block out: the loaded sections and what they refer to."""
    request = LinkRequest(
        obj=obj,
        arch=arch,
        load=frozenset(load),
        bound_sections=bound,
        externals=externals,
        original_entries=original_entries,
    )
    return plan_layout(request)


def _original_entries(decisions: list[FunctionDecision]) -> dict[tuple[int, int], int]:
    """Functions whose running entry will jump to the new body: ``&f`` stays that entry."""
    return {
        (d.symbol.shndx, d.symbol.value): d.old.address
        for d in decisions
        if d.status is Decision.CHANGED and d.old is not None and d.old.is_function
    }


def _decide(
    symbol: ObjSymbol,
    binder: Binder,
    comparer: FunctionComparer,
    previous: dict[str, str] | None,
    only: Collection[str] | None,
    redirect_all: bool = False,
    matches: Mapping[str, str] | None = None,
    keys: CodeKeys | None = None,
    known_keys: KnownKeys | None = None,
) -> FunctionDecision:
    key = "" if keys is None else keys.code_key(symbol)
    known = None if known_keys is None or not key else known_keys.fingerprint(symbol.name, key)
    fingerprint = known if known is not None else comparer.fingerprint(symbol)
    decision = _decide_by_fingerprint(
        symbol, fingerprint, binder, comparer, previous, only, redirect_all, matches
    )
    decision.key = key
    return decision


def _decide_by_fingerprint(
    symbol: ObjSymbol,
    fingerprint: str,
    binder: Binder,
    comparer: FunctionComparer,
    previous: dict[str, str] | None,
    only: Collection[str] | None,
    redirect_all: bool,
    matches: Mapping[str, str] | None,
) -> FunctionDecision:
    old = binder.find_old(symbol)
    if old is None:
        return FunctionDecision(symbol, None, Decision.NEW, fingerprint)
    if symbol.bind == STB_WEAK and not old.is_weak and not old.from_journal:
        # The static linker let a strong definition of another file win; so does relive.
        reason = "weak definition: the program uses the strong one of another file"
        return FunctionDecision(symbol, old, Decision.SKIPPED, fingerprint, reason)
    matched = ""
    if redirect_all:
        same = False
    elif previous is not None and symbol.name in previous:
        same = previous[symbol.name] == fingerprint
    else:
        key = match_key(fingerprint, old)
        same = (matches or {}).get(symbol.name) == key or comparer.matches_running(
            symbol, old.address, old.size
        )
        matched = key if same else ""
    if only is not None and symbol.name not in only:
        # Compared all the same: a selected function inlined here changes it too.
        return FunctionDecision(
            symbol, old, Decision.SKIPPED, fingerprint, NOT_SELECTED, not same, matched
        )
    if is_cold_part(symbol.name):
        # Not an entry point: only its hot part jumps there, mid-function.  It
        # is loaded with (and reached from) the new hot part, never redirected.
        reason = "cold part, loaded with its function" + ("" if same else " (changed)")
        return FunctionDecision(symbol, old, Decision.PART, fingerprint, reason, not same, matched)
    status = Decision.UNCHANGED if same else Decision.CHANGED
    return FunctionDecision(symbol, old, status, fingerprint, matched=matched)


#: The reason of a function --function did not select.
NOT_SELECTED = "not selected by --function"

_COLD = re.compile(r"\.cold(\.\d+)?$")
_CLONE = re.compile(r"\.(constprop|isra|part)\.\d+")


def is_cold_part(name: str) -> bool:
    """gcc splits rarely run code of ``f`` into ``f.cold``: a part, not a function."""
    return _COLD.search(name) is not None


def _promote_parents_of_changed_parts(decisions: list[FunctionDecision]) -> None:
    """A changed cold part is only reached through a new copy of its function."""
    by_name = {d.name: d for d in decisions}
    for d in decisions:
        if d.status is Decision.PART and d.differs:
            parent = by_name.get(_COLD.sub("", d.name))
            if parent is not None and parent.status is Decision.UNCHANGED:
                parent.status = Decision.CHANGED


def _reachable_load(
    obj: ObjectFile,
    decisions: list[FunctionDecision],
    bindings: Mapping[int, tuple[Binding, Bound]],
    code: Collection[int],
    initial: Collection[DataChange],
) -> set[int]:
    """The sections to load: the code sections ``code``, and of the sections that
    would get new memory (new variables, constants, copied tables) and the cold
    parts, those reached from that code (a cold part is never the old one), from
    the loaded code's unwind records, from a bound variable whose new initial
    value may be copied in (it may point at them), or from a global definition
    (another file may use it): ``patch``'s ``--gc-sections``."""
    data = {i for i, (kind, _) in bindings.items() if kind in (Binding.NEW, Binding.COPIED)}
    candidates = data | {d.symbol.shndx for d in decisions if d.status is Decision.PART}
    visible = _visible_data(obj, data)
    roots = [*code, *(change.index for change in initial), *visible]
    if code:
        roots.extend(unwind_data_roots(obj))
    return {*code, *visible} | reachable_sections(obj, roots, candidates)


def _visible_data(obj: ObjectFile, sections: Collection[int]) -> list[int]:
    """The ``sections`` that define a global or weak symbol: another file may use it
    (one reloaded with this one, or later, binding to what this reload recorded),
    so it is loaded whether or not this file's new code uses it."""
    return [i for i in sections if any(not s.is_local for s in obj.iter_section_symbols(i))]


def find_orphan_clones(plan: ReloadPlan) -> list[str]:
    """Compiler clones (``.constprop``, ``.isra``, ``.part``) of the reloaded file in
    the running program that the new object does not have: whoever called them
    is reloaded (their call targets changed), the clones themselves stay."""
    file = plan.obj.source_name or ""
    if not file:
        return []
    new = {s.name for s in plan.obj.iter_functions()}
    return sorted(
        s.name
        for s in plan.module.image.find_file_locals_matching(file, _CLONE)
        if s.is_function and s.name not in new
    )


def _address_in_process(
    obj: ObjectFile, binder: Binder, bound: dict[int, Bound], symbol: ObjSymbol
) -> int | None:
    """Where a referenced symbol lives in the process now (None: new memory)."""
    if symbol.is_absolute:
        return symbol.value
    if not symbol.is_defined or symbol.is_common:
        found = binder.resolve_external(symbol.name)
        return None if found is None else found.address
    section = obj.sections[symbol.shndx]
    if section.is_exec:
        if symbol.is_section:
            first = next(
                (
                    s
                    for s in obj.iter_section_symbols(symbol.shndx)
                    if s.is_function and s.value == 0
                ),
                None,
            )
            old = None if first is None else binder.find_old(first)
        else:
            old = binder.find_old(symbol)
        return None if old is None else old.address
    binding = bound.get(symbol.shndx)
    if binding is None or binding.address is None:
        return None
    return binding.address + (0 if symbol.is_section else symbol.value)


def _resolve_externals(obj: ObjectFile, binder: Binder, load: set[int]) -> dict[str, Bound]:
    externals: dict[str, Bound] = {}
    missing: list[str] = []
    for index in load:
        for reloc in obj.relocations.get(index, ()):
            symbol = reloc.symbol
            if (symbol.is_defined and not symbol.is_common) or symbol.name == GOT_SYMBOL:
                continue
            if symbol.name in externals or symbol.name in missing:
                continue
            found = binder.resolve_external(symbol.name)
            if found is None and symbol.is_common:
                found = _common_as_old(binder, symbol)
            if found is not None:
                externals[symbol.name] = found
            elif symbol.bind == STB_WEAK:
                externals[symbol.name] = Bound(address=0)  # ABI: an undefined weak is 0
            else:
                missing.append(symbol.name)
    if missing:
        raise LinkError(
            f"the new code needs {', '.join(sorted(missing))}, which the process does not define",
            hint="define it in the reloaded file, reload the file that defines it in the same "
            "command, or link the library that provides it and restart the program",
        )
    return externals


def _find_far_data(
    obj: ObjectFile,
    arch: Arch,
    module: RunningModule,
    load: set[int],
    externals: dict[str, Bound],
) -> list[str]:
    """Names of far external data the loaded code refers to directly (32-bit), sorted.

    Calls get stubs and GOT loads get slots, but a direct data access
    (``mov sym(%rip)``) can only reach what lies within reach of the module.
    """
    far: set[str] = set()
    for index in load:
        for reloc in obj.relocations.get(index, ()):
            rtype = arch.relocations.get(reloc.type)
            found = externals.get(reloc.symbol.name)
            if rtype is None or rtype.need is not Need.NOTHING or rtype.width > 4:
                continue
            if found is None or found.address is None or reloc.symbol.is_defined:
                continue
            distance = max(abs(found.address - module.start), abs(found.address - module.end))
            if distance >= arch.jump_reach - (1 << 24):
                far.add(reloc.symbol.name)
    return sorted(far)


def _common_as_old(binder: Binder, symbol: ObjSymbol) -> Bound | None:
    old = binder.find_old(symbol)
    if old is None:
        raise LinkError(
            f"{symbol.name} is a new tentative (common) definition",
            hint="initialise it or compile with -fno-common",
        )
    return Bound(address=old.address, size=old.size)


def _module_got_slot(module: RunningModule, name: str) -> int | None:
    slot = module.image.find_got_slot(name)
    return None if slot is None else module.runtime(slot)

"""What relive has done to a process, kept in a file that survives relive exiting.

The file is keyed by PID *and* the process start time, so a recycled PID never
inherits another process's record; every entry is checked against the bytes
actually in memory before it is trusted.
"""

from __future__ import annotations

import enum
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from relive.errors import ReliveError
from relive.process.procfs import get_start_time
from relive.statedir import (
    find_state_dir,
    list_state_files,
    read_state_file,
    remove_state_files,
    write_state_file,
)


@dataclass
class EntryPatch:
    """A function entry relive overwrote with a jump."""

    name: str
    source: str
    module: str
    entry: int  # address of the first overwritten byte
    original: str  # hex of the bytes that were there before relive
    written: str  # hex of the jump now there
    target: int  # where the jump goes
    count: int = 1
    updated: float = field(default_factory=time.time)
    #: Bytes of code at ``target`` (0: unknown), so that a later reload can find
    #: threads inside that code and move their frames on.
    size: int = 0
    #: ``[address, size]`` of the code earlier reloads jumped to (threads may still
    #: be in it), newest last.
    earlier: list[list[int]] = field(default_factory=list)


class DefinitionKind(enum.StrEnum):
    """What a definition in memory relive allocated is (its value is what the file says)."""

    FUNCTION = "function"
    DATA = "data"


@dataclass
class Definition:
    """A function or variable that lives in memory relive allocated."""

    name: str
    address: int
    size: int
    kind: DefinitionKind
    file: str | None  # STT_FILE group for file-local symbols
    fingerprint: str = ""
    #: A function's static: ``function:name:ordinal`` (its ``name.N`` is renumbered
    #: by edits; see ``patch.static_scope``), else empty.
    scope: str = ""


class ArenaKind(enum.StrEnum):
    """What an arena chunk holds, and so its protection in the program."""

    CODE = "code"  # read+execute
    DATA = "data"  # read+write


@dataclass
class ArenaChunk:
    """One anonymous mapping relive made near a module, filled by reloads (``patch.arena``).

    An arena grows by mapping the next chunk right next to it with the same
    protection (the kernel merges the two into one mapping), so its chunks are
    recorded one by one: a chunk whose mapping never happened (relive killed
    in between) is dropped when the journal is loaded.
    """

    module: str
    kind: ArenaKind
    address: int
    size: int


@dataclass
class LoadedBlock:
    """Where one reload of one source put its code and its data (in arena chunks)."""

    source: str
    module: str
    code: list[int]  # [address, size]; size 0: none
    data: list[int]
    #: The code's address was taken other than through an entry jump (it may be
    #: stored anywhere): the code is never reclaimed.
    escaped: bool = False
    #: The code was superseded and proven dead: its range is free again.
    reclaimed: bool = False
    #: Recorded ahead of the entry jumps; kept once one of them (or the reload) commits.
    pending: bool = False
    #: Bytes at the start of ``data`` the program may hold pointers to (the
    #: object's variables, strings and constants); the rest only the block's code
    #: uses, and is freed with it.  -1: all of it.  (Blocks recorded since relive's
    #: own data lives apart, in ``own``, have all of ``data`` here.)
    program_data: int = -1
    #: [address, size] of relive's own data (unwind table, its record, GOT): only the
    #: block's code and the program's unwinder use it; freed with the code.
    own: list[int] = field(default_factory=lambda: [0, 0])


@dataclass
class SourceRecord:
    """Everything relive loaded from one source file, newest generation first."""

    generations: int = 0
    definitions: dict[str, Definition] = field(default_factory=dict)
    #: Fingerprints of every function of the file as last loaded (or found unchanged).
    fingerprints: dict[str, str] = field(default_factory=dict)
    #: Functions the last reload found equal to the code at their entry, which it
    #: left alone: name -> ``patch.matched.match_key``; valid while the binding
    #: context (``patch.matched.binding_context``) is ``matched_context``.
    matched: dict[str, str] = field(default_factory=dict)
    matched_context: str = ""
    #: The last reload's code keys: name -> ``patch.matched.key_entry``, computed
    #: in the binding context ``keys_context`` (the one before that reload), from an
    #: object of layout digest ``keys_layout`` (``patch.codekey``).
    keys: dict[str, str] = field(default_factory=dict)
    keys_context: str = ""
    keys_layout: str = ""
    #: How that reload bound the object's data sections (``patch.matched``).
    bindings: str = ""
    #: Which of them held another initial value than the program's file
    #: (``patch.initial.encode_initial_changes``; "": not recorded).
    initial: str = ""


@dataclass
class PendingPatch:
    """An entry write recorded before it is made (see ``patch.wal``)."""

    #: The patch once the jump is written; None: the original bytes go back (undo).
    after: EntryPatch | None
    #: The function's fingerprint before this reload, restored if the write never happened.
    previous_fingerprint: str | None = None


@dataclass
class Journal:
    """The persistent record for one process."""

    pid: int
    start_time: int
    patches: dict[str, EntryPatch] = field(default_factory=dict)
    sources: dict[str, SourceRecord] = field(default_factory=dict)
    #: Blocks of older relives (one mapping each); newer ones use ``arenas``.
    regions: list[tuple[int, int]] = field(default_factory=list)
    #: Arena chunks relive mapped, and the blocks reloads placed in them.
    arenas: list[ArenaChunk] = field(default_factory=list)
    blocks: list[LoadedBlock] = field(default_factory=list)
    #: Entry writes under way, keyed like ``patches``: reconciled with memory on load.
    pending: dict[str, PendingPatch] = field(default_factory=dict)
    #: Flags found by reproduction for sources whose build recorded none, by
    #: source (``patch.inference``): later reloads compile once, with these.
    inferred_flags: dict[str, list[str]] = field(default_factory=dict)

    @staticmethod
    def patch_key(module: str, entry: int) -> str:
        """Patches are keyed by the entry address within a module."""
        return f"{module}@{entry:#x}"

    def record_generation(
        self, source: str, fingerprints: Mapping[str, str], definitions: Iterable[Definition]
    ) -> None:
        """Remember one reload of ``source``: the fingerprint of each function it
        loaded or found unchanged (later reloads compare with these) and what now
        lives in memory relive allocated."""
        record = self.sources.setdefault(source, SourceRecord())
        record.generations += 1
        record.fingerprints.update(fingerprints)
        for definition in definitions:
            # Statics of different functions may share a ``name.N`` across reloads.
            key = f"{definition.name}@{definition.scope}" if definition.scope else definition.name
            record.definitions[key] = definition

    def add_regions(self, regions: Iterable[tuple[int, int]]) -> None:
        """Remember blocks of memory relive mapped: (address, size)."""
        self.regions.extend(regions)

    def relive_ranges(self) -> list[tuple[int, int]]:
        """(address, size) of all memory relive mapped in the process."""
        return [*self.regions, *((a.address, a.size) for a in self.arenas)]

    def added_globals(self, excluding: str) -> dict[str, Definition]:
        """Global functions and variables relive added, from sources other than
        ``excluding`` (the file being reloaded, which brings its own)."""
        return {
            name: definition
            for source, record in self.sources.items()
            if source != excluding
            for name, definition in record.definitions.items()
            if definition.file is None
            and definition.kind in (DefinitionKind.FUNCTION, DefinitionKind.DATA)
        }

    def forget_patch(self, key: str) -> None:
        """Drop an entry patch whose original bytes are back.  The original code
        runs again, so the next reload of its source compares with that code."""
        patch = self.patches.pop(key)
        record = self.sources.get(patch.source)
        if record is not None:
            record.fingerprints.pop(patch.name, None)


def state_dir() -> Path:
    """Where journals live (see ``relive.statedir``: private, checked before use)."""
    return find_state_dir()


def journal_name(pid: int, start_time: int) -> str:
    """The journal's file name in the state directory."""
    return f"{pid}-{start_time}.json"


def journal_path(pid: int, start_time: int) -> Path:
    """The journal's full path, for messages."""
    return state_dir() / journal_name(pid, start_time)


class CorruptJournal(ReliveError):
    """The journal cannot be read back: relive does not know what it patched."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(
            f"the journal {path} is corrupt ({why}): relive cannot tell what it patched",
            hint="`relive status -p PID` lists the jumps found in memory; `relive undo -p PID` "
            "puts back the module files' code there and writes a new journal",
        )
        self.path = path


def load_journal(pid: int) -> Journal:
    """The journal of a live process, or an empty one if relive never touched it.

    Raises CorruptJournal when the file is not a journal relive could have written.
    A process relive never touched may have been forked from one it patched:
    its journal is then rebuilt from its memory (see ``patch.inherit``).
    """
    start = get_start_time(pid)
    data = read_state_file(journal_name(pid, start))
    if data is None:
        from relive.patch.inherit import inherit_journal, iter_ancestors

        for ancestor, ancestor_start in iter_ancestors(pid):
            found = read_state_file(journal_name(ancestor, ancestor_start))
            if found is not None:
                return inherit_journal(pid, start, _read(ancestor, ancestor_start, found))
        return Journal(pid=pid, start_time=start)
    journal = _read(pid, start, data)
    if journal.arenas:
        from relive.patch.arena import drop_unmapped_chunks

        drop_unmapped_chunks(journal)  # a relive died between recording and mapping one
    if journal.pending or any(block.pending for block in journal.blocks):
        from relive.patch.wal import reconcile

        reconcile(journal)  # a relive died while writing entries: see what it wrote
    return journal


def _read(pid: int, start: int, data: bytes) -> Journal:
    try:
        return _parse_journal(pid, start, data)
    except _Invalid as invalid:
        raise CorruptJournal(journal_path(pid, start), str(invalid)) from None


class _Invalid(Exception):
    """What is wrong with a journal's contents (becomes CorruptJournal)."""


def _parse_journal(pid: int, start: int, data: bytes) -> Journal:
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise _Invalid(f"not JSON: {e}") from None
    raw = _expect(raw, dict, "the journal")
    if raw.get("pid", pid) != pid or raw.get("start_time", start) != start:
        raise _Invalid("it names another process")
    patches = _expect(raw.get("patches", {}), dict, "patches")
    sources = _expect(raw.get("sources", {}), dict, "sources")
    regions = _expect(raw.get("regions", []), list, "regions")
    journal = Journal(pid=pid, start_time=start)
    for key, value in patches.items():
        patch = _build(EntryPatch, value, f"patch {key}")
        _check_patch(patch, key)
        journal.patches[key] = patch
    for key, value in sources.items():
        journal.sources[key] = _load_source(_expect(value, dict, f"source {key}"), key)
    pending = _expect(raw.get("pending", {}), dict, "pending")
    for key, value in pending.items():
        journal.pending[key] = _load_pending(_expect(value, dict, f"pending {key}"), key)
    for region in regions:
        if not (_is_pair(region) and 0 <= region[0] < _ADDRESS_END and 0 < region[1] < (1 << 40)):
            raise _Invalid(f"region {region!r} is not an address and a size")
        journal.regions.append((region[0], region[1]))
    for value in _expect(raw.get("arenas", []), list, "arenas"):
        chunk = _build(ArenaChunk, value, "an arena chunk")
        if not (0 < chunk.address < _ADDRESS_END and 0 < chunk.size < (1 << 40)):
            raise _Invalid(f"arena chunk at {chunk.address:#x} has no sensible address or size")
        journal.arenas.append(chunk)
    for value in _expect(raw.get("blocks", []), list, "blocks"):
        block = (
            _load_block_row(value)
            if isinstance(value, list)
            else _build(LoadedBlock, value, "a block")
        )
        if not all(
            0 <= r[0] < _ADDRESS_END and 0 <= r[1] < (1 << 40)
            for r in (block.code, block.data, block.own)
        ):
            raise _Invalid(f"block of {block.source} has no sensible ranges")
        journal.blocks.append(block)
    inferred = _expect(raw.get("inferred_flags", {}), dict, "inferred_flags")
    for key, flags in inferred.items():
        if not (isinstance(flags, list) and all(isinstance(f, str) for f in flags)):
            raise _Invalid(f"inferred flags of {key} are not a list of strings")
        journal.inferred_flags[key] = list(flags)
    return journal


#: Flags of a block row (see :func:`_block_row`).
_ESCAPED, _RECLAIMED, _PENDING = 1, 2, 4


def _block_row(block: LoadedBlock) -> list[Any]:
    """A block as one flat JSON array: a long session records thousands, and a journal
    is read and written at every reload (objects with named fields cost ten times more)."""
    flags = _ESCAPED * block.escaped | _RECLAIMED * block.reclaimed | _PENDING * block.pending
    return [
        block.source,
        block.module,
        *block.code,
        *block.data,
        *block.own,
        flags,
        block.program_data,
    ]


def _load_block_row(row: list[Any]) -> LoadedBlock:
    """A block from :func:`_block_row`'s array, every element checked."""
    if not (
        len(row) == 10
        and isinstance(row[0], str)
        and isinstance(row[1], str)
        and all(_is_int(v) for v in row[2:])
        and 0 <= row[8] < 8
    ):
        raise _Invalid(f"a block is not what relive writes: {row!r:.200}")
    flags = row[8]
    return LoadedBlock(
        row[0],
        row[1],
        [row[2], row[3]],
        [row[4], row[5]],
        escaped=bool(flags & _ESCAPED),
        reclaimed=bool(flags & _RECLAIMED),
        pending=bool(flags & _PENDING),
        program_data=row[9],
        own=[row[6], row[7]],
    )


def _load_pending(raw: dict[str, Any], key: str) -> PendingPatch:
    after = raw.get("after")
    previous = raw.get("previous_fingerprint")
    if not (previous is None or isinstance(previous, str)):
        raise _Invalid(f"pending {key}: previous_fingerprint is not a string")
    if after is None:
        return PendingPatch(None, previous)
    patch = _build(EntryPatch, after, f"pending {key}")
    _check_patch(patch, key)
    return PendingPatch(patch, previous)


def _load_source(raw: dict[str, Any], key: str) -> SourceRecord:
    definitions = _expect(raw.get("definitions", {}), dict, f"definitions of {key}")
    fingerprints = _expect(raw.get("fingerprints", {}), dict, f"fingerprints of {key}")
    if not all(isinstance(v, str) for v in fingerprints.values()):
        raise _Invalid(f"a fingerprint of {key} is not a string")
    matched = _expect(raw.get("matched", {}), dict, f"matched functions of {key}")
    context = raw.get("matched_context", "")
    if not all(isinstance(v, str) for v in matched.values()) or not isinstance(context, str):
        raise _Invalid(f"a matched function of {key} is not a string")
    keys = _expect(raw.get("keys", {}), dict, f"function keys of {key}")
    keys_context = raw.get("keys_context", "")
    keys_layout = raw.get("keys_layout", "")
    bindings = raw.get("bindings", "")
    initial = raw.get("initial", "")
    if not all(
        isinstance(v, str) for v in (*keys.values(), keys_context, keys_layout, bindings, initial)
    ):
        raise _Invalid(f"a function key of {key} is not a string")
    generations = raw.get("generations", 0)
    if not _is_int(generations) or generations < 0:
        raise _Invalid(f"generations of {key} is not a count")
    return SourceRecord(
        generations=generations,
        definitions={
            k: _build(Definition, v, f"definition {k} of {key}") for k, v in definitions.items()
        },
        fingerprints=dict(fingerprints),
        matched=dict(matched),
        matched_context=context,
        keys=dict(keys),
        keys_context=keys_context,
        keys_layout=keys_layout,
        bindings=bindings,
        initial=initial,
    )


#: First address above the user address space: nothing relive records lies there.
_ADDRESS_END = 1 << 64
#: Longest entry relive overwrites (a jump plus a kept landing pad).
_MAX_ENTRY_BYTES = 64

_T = TypeVar("_T")


def _expect(value: Any, kind: type[_T], what: str) -> _T:
    if not isinstance(value, kind):
        raise _Invalid(f"{what} is not a JSON {'object' if kind is dict else 'array'}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(map(_is_int, value))


_FIELD_CHECKS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": _is_int,
    "float": lambda v: _is_int(v) or isinstance(v, float),
    "str | None": lambda v: v is None or isinstance(v, str),
    "list[list[int]]": lambda v: isinstance(v, list) and all(map(_is_pair, v)),
    "list[int]": _is_pair,
    "bool": lambda v: isinstance(v, bool),
}
#: Fields whose JSON string is an enum's value: checked, and read back as the enum.
_ENUM_FIELDS: dict[str, type[enum.StrEnum]] = {
    "DefinitionKind": DefinitionKind,
    "ArenaKind": ArenaKind,
}


def _build(cls: type[_T], raw: Any, what: str) -> _T:
    """``cls(**raw)`` once every key is a field of ``cls`` with a value of its type."""
    raw = _expect(raw, dict, what)
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    for name, value in raw.items():
        spec = known.get(name)
        if spec is None:
            raise _Invalid(f"{what} has an unknown field {name!r}")
        check = _FIELD_CHECKS.get(str(spec.type))
        if check is not None and not check(value):
            raise _Invalid(f"{what}: {name} is not a {spec.type}")
        kind = _ENUM_FIELDS.get(str(spec.type))
        if kind is not None:
            if value not in kind._value2member_map_:
                raise _Invalid(f"{what}: {name} is not one of {', '.join(kind)}")
            raw = {**raw, name: kind(value)}
    missing = [
        n
        for n, f in known.items()
        if n not in raw and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        raise _Invalid(f"{what} lacks {', '.join(missing)}")
    return cls(**raw)


def _check_patch(patch: EntryPatch, key: str) -> None:
    try:
        original, written = bytes.fromhex(patch.original), bytes.fromhex(patch.written)
    except ValueError:
        raise _Invalid(f"patch {key}: its bytes are not hex") from None
    if not 0 < len(written) == len(original) <= _MAX_ENTRY_BYTES:
        raise _Invalid(f"patch {key}: original and written bytes differ in length")
    if not (0 < patch.entry < _ADDRESS_END and 0 <= patch.target < _ADDRESS_END):
        raise _Invalid(f"patch {key}: an address is out of range")
    if patch.count < 1:
        raise _Invalid(f"patch {key}: count {patch.count} is not positive")


def save_journal(journal: Journal) -> bytes:
    """Write the journal atomically (rename), so a killed relive leaves a whole file.

    Returns what was written, which ``restore_journal`` can put back.
    """
    # Plain dicts, no indent: dataclasses.asdict deep-copies, which for thousands
    # of functions costs more than the reload itself.
    data = json.dumps(_as_plain(journal), separators=(",", ":")).encode()
    write_state_file(journal_name(journal.pid, journal.start_time), data)
    if _sweep_due(time.monotonic()):
        remove_exited_journals()
    return data


_JOURNAL_NAME = re.compile(r"(\d+)-(\d+)\.json")

#: How often one relive sweeps the journals of exited processes, in seconds: at its
#: first journal save (once per command), then at most this often (a long watch).
#: A reload saves its journal several times; each sweep lists the state directory
#: and reads the start time of every journal's process.
SWEEP_EVERY = 60.0

#: When this relive last swept, per state directory (``time.monotonic()``).
_swept_at: dict[Path, float] = {}


def _sweep_due(now: float) -> bool:
    """Whether this save sweeps (and, if so, note that it did)."""
    folder = find_state_dir()
    last = _swept_at.get(folder)
    if last is not None and now - last < SWEEP_EVERY:
        return False
    _swept_at[folder] = now
    return True


def remove_exited_journals() -> list[str]:
    """Remove the journals of processes that exited (no such pid, or the pid is
    another process now: a different start time); return their names."""
    removed = []
    for name in list_state_files():
        match = _JOURNAL_NAME.fullmatch(name)
        if match is None:
            continue
        pid, start = int(match.group(1)), int(match.group(2))
        try:
            alive = get_start_time(pid) == start
        except ReliveError:
            alive = False
        if not alive:
            removed.append(name)
    remove_state_files(removed)
    return removed


def restore_journal(journal: Journal, data: bytes) -> None:
    """Put back a journal as ``save_journal`` wrote it (a transaction that wrote nothing)."""
    write_state_file(journal_name(journal.pid, journal.start_time), data)


def _as_plain(journal: Journal) -> dict[str, Any]:
    return {
        "pid": journal.pid,
        "start_time": journal.start_time,
        "patches": {k: vars(p) for k, p in journal.patches.items()},
        "sources": {
            k: {
                "generations": r.generations,
                "definitions": {n: vars(d) for n, d in r.definitions.items()},
                "fingerprints": r.fingerprints,
                "matched": r.matched,
                "matched_context": r.matched_context,
                "keys": r.keys,
                "keys_context": r.keys_context,
                "keys_layout": r.keys_layout,
                "bindings": r.bindings,
                "initial": r.initial,
            }
            for k, r in journal.sources.items()
        },
        "regions": journal.regions,
        "arenas": [vars(a) for a in journal.arenas],
        "blocks": [_block_row(b) for b in journal.blocks],
        "pending": {
            k: {
                "after": None if p.after is None else vars(p.after),
                "previous_fingerprint": p.previous_fingerprint,
            }
            for k, p in journal.pending.items()
        },
        "inferred_flags": journal.inferred_flags,
    }

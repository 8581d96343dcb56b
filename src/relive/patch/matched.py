"""Functions a reload found equal to the code they would replace, remembered for the next one.

Comparing a function with the code running at its entry means reading that code
and working out what every relocated field points to: about 0.1 ms a function,
a second for a sqlite3-sized file, paid again at every save.  The running code of
a function relive never redirected does not change, so once a reload has found
that new code with fingerprint F does what the code at address A does, a later
reload whose new code has the same fingerprint F for the same entry A needs no
comparison.  A fingerprint names what each relocated field refers to by name
(``patch.diff``); where names lead in the process depends on what relive added
to it (new functions and variables in the journal) and on where modules are
loaded, so the remembered matches are kept with a digest of those and trusted
only while it holds.  A function relive redirected is never looked up here: it
is compared by the fingerprint of the code it runs now (``patch.running``).

Computing a fingerprint asks where every name a function refers to is bound.  A
reload also records the new object's layout digest and each function's code key
(``patch.codekey``: read from the object alone) with the fingerprint it gave; the
next reload takes that fingerprint for a function whose code key is the same in an
object of the same layout, provided the binding context is the one the
fingerprints were computed in (the context before that reload added anything: what
it added changes where names lead).
"""

from __future__ import annotations

import array
import base64
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from relive import digests
from relive.elf.objfile import ObjectFile
from relive.link import Bound
from relive.patch.binder import OldDefinition
from relive.patch.decision import Decision
from relive.patch.journal import Journal, SourceRecord
from relive.patch.modules import RunningModule

if TYPE_CHECKING:
    from relive.patch.plan import ReloadPlan


def match_key(fingerprint: str, old: OldDefinition) -> str:
    """What is remembered of a match: the new code's fingerprint and the running entry."""
    return f"{fingerprint}@{old.address:x}+{old.size:x}"


def binding_context(journal: Journal, modules: Iterable[RunningModule]) -> str:
    """A digest of what decides where a name leads: every definition relive added
    to the process, and where each module is loaded."""
    digest = digests.sha1()
    for module in modules:
        digest.update(f"{module.path}@{module.bias:x};".encode())
    for source in sorted(journal.sources):
        record = journal.sources[source]
        if not record.definitions:
            continue  # nothing a name could lead to (a reload that only redirected)
        digest.update(f"{source};".encode())
        for name in sorted(record.definitions):
            d = record.definitions[name]
            digest.update(f"{name}:{d.address:x}:{d.size:x}:{d.kind.value}:{d.file};".encode())
    return digest.hexdigest()


def usable_matches(
    record: SourceRecord | None, context: str, peers: Mapping[str, int]
) -> Mapping[str, str] | None:
    """The matches remembered for a source, when they still hold (None: compare)."""
    if record is None or not record.matched or record.matched_context != context:
        return None
    if peers:
        return None  # other files of this reload define names the process lacks
    return record.matched


#: Hex digits of the fingerprint kept with a key: enough to tell that the recorded
#: fingerprint is still the one the key gave (``patch.wal`` may restore an older one).
_CHECK = 10


def key_entry(key: str, fingerprint: str) -> str:
    """What is remembered of a function's key: the key and the start of its fingerprint."""
    return f"{key}:{fingerprint[:_CHECK]}"


@dataclass(frozen=True)
class KnownKeys:
    """The keys a source's last reload recorded, with the fingerprints they gave."""

    #: The layout digest of that reload's object (``CodeKeys.layout``).
    layout: str
    #: name -> ``key_entry``.
    entries: Mapping[str, str]
    #: name -> fingerprint (``SourceRecord.fingerprints``).
    fingerprints: Mapping[str, str]
    #: How that reload bound the object's data sections (``encode_bindings``).
    bindings: str = ""
    #: Which bound sections' initial values differed (``patch.initial``).
    initial: str = ""

    def fingerprint(self, name: str, key: str) -> str | None:
        """The fingerprint of function ``name`` when its key is the one recorded."""
        entry = self.entries.get(name)
        if entry is None:
            return None
        known, _, check = entry.partition(":")
        found = self.fingerprints.get(name)
        if known != key or not check or found is None or not found.startswith(check):
            return None
        return found


def usable_keys(
    record: SourceRecord | None, context: str, peers: Mapping[str, int]
) -> KnownKeys | None:
    """The keys recorded for a source, when the binding context is the one they were
    computed in (None: compute every fingerprint)."""
    if record is None or not record.keys or record.keys_context != context or peers:
        return None
    return KnownKeys(
        record.keys_layout, record.keys, record.fingerprints, record.bindings, record.initial
    )


def function_keys(plan: ReloadPlan) -> dict[str, str]:
    """What a reload records of its functions' keys (``SourceRecord.keys``): those
    whose fingerprint it records too, when their keys were computed."""
    if plan.code_keys is None:
        return {}
    skipped = Decision.SKIPPED
    return {  # key_entry, written out: thousands of functions
        d.name: f"{d.key}:{d.fingerprint[:_CHECK]}"
        for d in plan.decisions
        if d.key and d.status is not skipped
    }


class Binding(enum.Enum):
    """Where a data section of a new object lives (``patch.plan``)."""

    #: Storage the program has: a variable, whose value is kept.
    BOUND = "B"
    #: A constant, or data read-only after start-up, not compared yet.
    CONSTANT = "K"
    #: A constant equal to the running copy, which the new code uses.
    EQUAL = "E"
    #: A constant that differs from the running copy: the new code gets a new copy.
    COPIED = "C"
    #: New memory (a new variable).
    NEW = "N"


def encode_bindings(bindings: Mapping[int, tuple[Binding, Bound]]) -> str:
    """How a reload bound each data section, as the journal keeps it: the next
    reload of an object of the same layout, in the same binding context, binds
    them alike without asking the binder ("" when that cannot be said, e.g. thread-
    local storage).  Three columns (section indices, kinds, addresses), base64."""
    items = sorted(bindings.items())
    values = [entry for _, entry in items]
    if any(
        kind is Binding.CONSTANT or b.tpoff is not None or b.tls_offset is not None
        for kind, b in values
    ):
        return ""
    indices = array.array("I", [index for index, _ in items])
    kinds = "".join([kind.value for kind, _ in values]).encode()
    addresses = array.array("Q", [b.address or 0 for _, b in values])
    return base64.b64encode(indices.tobytes() + kinds + addresses.tobytes()).decode()


def decode_bindings(obj: ObjectFile, text: str) -> dict[int, tuple[Binding, Bound]] | None:
    """The bindings ``encode_bindings`` wrote, for ``obj`` (None: none, or not for it)."""
    if not text:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    count, rest = divmod(len(raw), 13)
    if rest:
        return None
    indices = array.array("I", raw[: 4 * count])
    kinds = raw[4 * count : 5 * count].decode("ascii", "replace")
    addresses = array.array("Q", raw[5 * count :])
    sections = obj.sections
    by_value = {kind.value: kind for kind in Binding if kind is not Binding.CONSTANT}
    found: dict[int, tuple[Binding, Bound]] = {}
    for index, letter, address in zip(indices, kinds, addresses, strict=True):
        kind = by_value.get(letter)
        if kind is None or not 0 < index < len(sections) or sections[index].is_exec:
            return None
        if kind in (Binding.BOUND, Binding.EQUAL) and not address:  # bound to nothing: damaged
            return None
        bound = Bound() if kind is Binding.NEW else Bound(address, sections[index].size)
        found[index] = (kind, bound)
    return found

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
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from relive.patch.binder import OldDefinition
from relive.patch.journal import Journal, SourceRecord
from relive.patch.modules import RunningModule


def match_key(fingerprint: str, old: OldDefinition) -> str:
    """What is remembered of a match: the new code's fingerprint and the running entry."""
    return f"{fingerprint}@{old.address:x}+{old.size:x}"


def binding_context(journal: Journal, modules: Iterable[RunningModule]) -> str:
    """A digest of what decides where a name leads: every definition relive added
    to the process, and where each module is loaded."""
    digest = hashlib.sha1()
    for module in modules:
        digest.update(f"{module.path}@{module.bias:x};".encode())
    for source in sorted(journal.sources):
        record = journal.sources[source]
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

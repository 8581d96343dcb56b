"""Which version of each function runs now, as a fingerprint.

"Unchanged" means unchanged from what the process runs, whichever file or
reload put it there: a file's own previous reload is not the baseline once
another file redirected the function since (switching git branches back and
forth does exactly that), nor after an undo.  A function whose entry jumps to
code a reload loaded is compared by the fingerprint that reload recorded; any
other function by its code in memory (the original, or code relive loaded as
new).
"""

from __future__ import annotations

from relive.patch.journal import Journal
from relive.patch.modules import RunningModule

#: Stands for "a version relive has no fingerprint of": never equal to one.
UNKNOWN = ""


def fingerprints_running_now(journal: Journal, module: RunningModule) -> dict[str, str]:
    """For each function of ``module`` whose entry relive redirected: the fingerprint
    of the code it runs now (UNKNOWN when no reload recorded one)."""
    out: dict[str, str] = {}
    for patch in journal.patches.values():
        if patch.module != module.path:
            continue
        record = journal.sources.get(patch.source)
        if record is None:
            out[patch.name] = UNKNOWN
            continue
        out[patch.name] = record.fingerprints.get(patch.name, UNKNOWN)
        # Its cold parts were loaded with it: they run in the version it runs.
        cold = patch.name + ".cold"
        out.update((n, f) for n, f in record.fingerprints.items() if n.startswith(cold))
    return out

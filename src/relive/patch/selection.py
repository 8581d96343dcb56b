"""``--function NAME``: every name must be a function of the reloaded files.

A misspelt name used to leave every function "skipped" and exit 0, as if the
reload had been done.  It is a usage error now, naming the closest functions.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from relive.errors import UsageError
from relive.patch.journal import EntryPatch, Journal
from relive.patch.plan import ReloadPlan


def check_selected(plans: Sequence[ReloadPlan], functions: Collection[str] | None) -> None:
    """Raise UsageError unless each name in ``functions`` is a function of ``plans``."""
    if not functions:
        return
    known = {d.name for plan in plans for d in plan.decisions}
    unknown = sorted(set(functions) - known)
    if not unknown:
        return
    files = ", ".join(sorted({p.obj.source_name or p.source for p in plans}))
    import difflib  # only for the error: reloads do not pay for its import

    close = sorted({c for name in unknown for c in difflib.get_close_matches(name, known, n=3)})
    hint = f"did you mean {', '.join(close)}?" if close else "check the name (`nm` lists them)"
    noun = "function" if len(unknown) == 1 else "functions"
    raise UsageError(f"no {noun} {', '.join(unknown)} in {files}", hint=hint)


def still_patched_from(journal: Journal, restored: Sequence[EntryPatch]) -> str:
    """After undoing some functions: the others the same files redirected, which
    keep their new code (a caller with the undone function inlined keeps the new
    copy).  A sentence for a notice, or "" when none."""
    if not restored:
        return ""
    undone = {p.name for p in restored}
    sources = {p.source for p in restored}
    kept = sorted({p.name for p in journal.patches.values() if p.source in sources} - undone)
    if not kept:
        return ""
    one = len(kept) == 1
    return (
        f"{', '.join(kept)}, redirected by the same reload, {'keeps' if one else 'keep'} "
        f"{'its' if one else 'their'} new code (with any undone function inlined there): "
        f"`relive undo {' '.join(kept[:5])}` reverts {'it' if one else 'them'}"
    )

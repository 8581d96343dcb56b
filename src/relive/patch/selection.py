"""``--function NAME``: every name must be a function of the reloaded files.

A misspelt name used to leave every function "skipped" and exit 0, as if the
reload had been done.  It is a usage error now, naming the closest functions.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Sequence

from relive.errors import UsageError
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
    close = sorted({c for name in unknown for c in difflib.get_close_matches(name, known, n=3)})
    hint = f"did you mean {', '.join(close)}?" if close else "check the name (`nm` lists them)"
    noun = "function" if len(unknown) == 1 else "functions"
    raise UsageError(f"no {noun} {', '.join(unknown)} in {files}", hint=hint)

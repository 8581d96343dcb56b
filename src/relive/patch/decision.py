"""What a reload does with one function of the new object: the states of a plan."""

from __future__ import annotations

import enum


class Decision(enum.StrEnum):
    """What a reload does with one function (its value is what reports say)."""

    #: Its code differs: the running entry will jump to the new code.
    CHANGED = "changed"
    #: The program has no such function: loaded, reachable from the new code.
    NEW = "new"
    UNCHANGED = "unchanged"
    #: Left as it runs (not selected, or a weak definition a strong one overrides).
    SKIPPED = "skipped"
    #: Loaded with its function but never an entry point (``f.cold``, or a function
    #: too small for an entry jump, reached through its reloaded callers).
    PART = "part"

"""``reload --dry-run``: the real reload's plan and entry checks, with nothing written.

A dry run's "would redirect NAME" is a promise about the real reload, so the
dry run makes the same decisions up to the point where the real one starts
writing: a function too small for an entry jump is rerouted through its callers
(or refused), and every entry is checked (room for the jump, the bytes there
now, and, under ``--no-move``, no thread inside a function whose loop jumps
back into its entry).  The threads are held only when such a function exists,
just long enough to sample where they are, as the real check does.

What only writing can tell is said in a notice instead: where the new code
goes and whether it links there, whether a frame inside a looping function can
move into the new code, and whether a thread sits in the way at the instant of
the switch.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from relive.events import Notice
from relive.patch.loops import find_running_loop_heads
from relive.patch.plan import ReloadPlan
from relive.patch.planning import PlanContext, reroute_too_small
from relive.patch.transaction import check_entries

__all__ = ["NOT_CHECKED", "check_as_reload"]

#: Said at the end of every dry run: what the real reload may still refuse.
NOT_CHECKED = (
    "dry run: nothing was written; not checked: where the new code goes and whether it "
    "links there, and whether a thread is in the way when the entry jumps are written"
)


def check_as_reload(plans: Sequence[ReloadPlan], ctx: PlanContext, move_frames: bool) -> None:
    """Make the decisions the real reload makes before it writes; raise its errors.

    ``plans`` change as the real reload's would (a too-small function's callers
    redirected instead), so the report that follows names what it would redirect.
    """
    for plan in plans:
        reroute_too_small(plan, ctx)
    sites = check_entries(ctx.pid, list(plans), ctx.journal, ctx.memory, ctx.arch, move_frames)
    if move_frames:  # the real reload tries to move these frames; a dry run cannot
        running = find_running_loop_heads(ctx.pid, itertools.chain(*sites), ctx.memory, ctx.arch)
        for name, tid in running:
            ctx.emit(
                Notice(
                    f"{name} is running on thread {tid} and its loop jumps back into the "
                    "first bytes its entry jump replaces: the reload moves that frame into "
                    "the new code if it can and refuses (exit 9) if not; a dry run does not "
                    "try (--no-move refuses it here)"
                )
            )
    if not all(plan.loads_nothing_new for plan in plans):
        ctx.emit(Notice(NOT_CHECKED))

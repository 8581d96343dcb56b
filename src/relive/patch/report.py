"""What a reload tells its caller: one event per function and per thread frame.

The session reports through these after the transaction (or after planning, for
a dry run): a line per function says what will run, the promise a user relies on.
"""

from __future__ import annotations

from relive.events import (
    EventSink,
    FrameMoved,
    FrameStays,
    FunctionAdded,
    FunctionRedirected,
    FunctionSkipped,
    FunctionUnchanged,
    Notice,
)
from relive.link import LinkedImage
from relive.patch.frames import FramePlan
from relive.patch.outcome import ReloadResult
from relive.patch.plan import NOT_SELECTED, Decision, ReloadPlan, find_orphan_clones


def report_decisions(
    plans: list[ReloadPlan],
    images: list[LinkedImage] | None,
    emit: EventSink,
    outcomes: ReloadResult,
) -> None:
    """One event per function of every plan (``images``: None for a dry run), its name
    added to ``outcomes``, and a notice per compiler clone the new code no longer has."""
    for i, plan in enumerate(plans):
        image = images[i] if images else None
        for d in plan.decisions:
            loaded = image is not None and d.status in (Decision.CHANGED, Decision.NEW)
            new = image.get_symbol_address(d.symbol) if loaded and image else 0
            if d.status is Decision.CHANGED:
                assert d.old is not None
                outcomes.redirected.append(d.name)
                emit(FunctionRedirected(d.name, d.old.address, new, dry_run=images is None))
            elif d.status is Decision.NEW:
                outcomes.added.append(d.name)
                emit(FunctionAdded(d.name, new, dry_run=images is None))
            elif d.status is Decision.UNCHANGED:
                outcomes.unchanged.append(d.name)
                emit(FunctionUnchanged(d.name))
            else:
                outcomes.skipped.append(d.name)
                emit(FunctionSkipped(d.name, d.reason))
        _report_unselected_changes(plan, emit)
        for clone in find_orphan_clones(plan):
            emit(
                Notice(
                    f"{clone} (a compiler clone in the running program) has no counterpart "
                    "in the new code: its callers were reloaded instead"
                )
            )


def _report_unselected_changes(plan: ReloadPlan, emit: EventSink) -> None:
    """--function left out functions whose code changed too: say so (a selected
    function inlined into them changes nothing visible until they are reloaded)."""
    names = [
        d.name
        for d in plan.decisions
        if d.status is Decision.SKIPPED and d.reason == NOT_SELECTED and d.differs
    ]
    if not names:
        return
    one = len(names) == 1
    options = " ".join(f"--function {n}" for n in names[:5])
    emit(
        Notice(
            f"{', '.join(names)} changed too but {'was' if one else 'were'} not selected, "
            f"so {'its' if one else 'their'} old code keeps running: a selected function "
            f"inlined there shows only through {'it' if one else 'them'}; add {options}"
        )
    )


def report_frames(plan: FramePlan | None, emit: EventSink) -> None:
    """One line per moved frame; one per function and thread whose frame stays."""
    if plan is None:
        return
    for move in plan.moves:
        emit(FrameMoved(move.tid, move.function, move.old, move.new, move.how))
    said = set()
    for stay in plan.stays:
        if (stay.function, stay.tid) not in said:
            said.add((stay.function, stay.tid))
            emit(FrameStays(stay.tid, stay.function, stay.reason, ", ".join(stay.inlined)))

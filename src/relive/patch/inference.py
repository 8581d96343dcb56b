"""Flags a build did not record, found by reproduction.

clang records no flags in DWARF unless built with -grecord-command-line, and a
unit without a producer string records nothing at all.  Compiled at a guessed
level, every function of an unchanged optimised file would look changed and be
redirected.  So the file is compiled at each candidate level (in parallel, by
``patch.planning``), each object is compared with the running code
(``patch.diff`` through ``patch.plan``), and the level under which the most
functions match exactly wins: an edit changes a few functions, the others match
only under the right flags.  The answer is kept per source in the journal, so
later reloads compile once.

Cues the running module shows are added to every candidate: -fPIC for a shared
library; -fcf-protection when the running functions start with the landing pad
the new code lacks (tried after the level is known, one more compile).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from relive.elf.objfile import ObjSymbol
from relive.patch.decision import Decision
from relive.patch.diff import function_bytes
from relive.patch.journal import Journal
from relive.patch.modules import RunningModule
from relive.patch.plan import NOT_SELECTED, ReloadPlan
from relive.toolchain.command import CompileCommand

__all__ = [
    "CF_PROTECTION",
    "LEVELS",
    "Score",
    "cached_flags",
    "candidate_flags",
    "describe_inferred",
    "inferred_part",
    "lacks_landing_pads",
    "score_plan",
    "with_flags",
]

#: Candidate optimisation levels; on a tie the earlier one wins (-O2 first: the
#: most common level of a build that did not say).
LEVELS = ("-O2", "-O0", "-O1", "-O3", "-Os")
PIC = "-fPIC"
CF_PROTECTION = "-fcf-protection"
#: Every flag inference may choose: a journal naming anything else is ignored.
_INFERABLE = frozenset({*LEVELS, PIC, CF_PROTECTION})
_PIC_SPELLINGS = frozenset({"-fPIC", "-fpic"})


@dataclass(frozen=True, order=True)
class Score:
    """How many of a candidate's functions that exist in the running module match
    the running code exactly, out of how many."""

    matched: int
    total: int


def candidate_flags(command: CompileCommand, module: RunningModule) -> list[tuple[str, ...]]:
    """The flag sets to try, best guess first: each level plus what the module shows."""
    extra: tuple[str, ...] = ()
    if not module.is_main and not _PIC_SPELLINGS & set(command.flags):
        extra = (PIC,)  # a shared library's code is position-independent
    return [(level, *extra) for level in LEVELS]


def with_flags(command: CompileCommand, inferred: Sequence[str]) -> CompileCommand:
    """``command`` compiling with the inferred flags instead of its guessed level."""
    kept = tuple(flag for flag in command.flags if not flag.startswith("-O"))
    return dataclasses.replace(command, flags=(*kept, *inferred), flags_unknown=False)


def inferred_part(command: CompileCommand) -> tuple[str, ...]:
    """The flags of ``command`` that inference chose."""
    return tuple(flag for flag in command.flags if flag in _INFERABLE)


def cached_flags(journal: Journal, command: CompileCommand) -> tuple[str, ...] | None:
    """Flags an earlier reload inferred for this source (only ones inference chooses)."""
    flags = journal.inferred_flags.get(str(command.source))
    if not flags or not set(flags) <= _INFERABLE:
        return None
    return tuple(flags)


def score_plan(plan: ReloadPlan) -> Score:
    """Functions of ``plan`` the running module has, and how many are the same code."""
    compared = [
        d
        for d in plan.decisions
        if d.old is not None
        and (
            d.status in (Decision.CHANGED, Decision.UNCHANGED, Decision.PART)
            or d.reason == NOT_SELECTED
        )
    ]
    matched = sum(
        1
        for d in compared
        if d.status is Decision.UNCHANGED or (d.status is not Decision.CHANGED and not d.differs)
    )
    return Score(matched, len(compared))


def lacks_landing_pads(
    plan: ReloadPlan, read: Callable[[int, int], bytes], landing_pad_size: Callable[[bytes], int]
) -> bool:
    """Whether most running functions of ``plan`` that differ start with a landing
    pad (endbr64) while their new code does not: built with -fcf-protection."""
    differing = [d for d in plan.decisions if d.old is not None and d.status is Decision.CHANGED]
    if not differing:
        return False
    running = sum(1 for d in differing if d.old and landing_pad_size(read(d.old.address, 8)))
    new = sum(1 for d in differing if landing_pad_size(_entry_bytes(plan, d.symbol)))
    return new == 0 and running * 2 > len(differing)


def _entry_bytes(plan: ReloadPlan, symbol: ObjSymbol) -> bytes:
    return function_bytes(plan.obj, symbol)[:8]


def describe_inferred(name: str, flags: Sequence[str], score: Score) -> str:
    """The notice that says which flags were inferred and on what evidence."""
    return (
        f"flags of {name} inferred: {' '.join(flags)} "
        f"({score.matched} of {score.total} functions match)"
    )

"""What the caller chose for one reload, in one frozen value.

``Session.reload`` takes it (or the same names as keywords), ``reload_steps``
and ``reload_together`` pass it on whole, the plan side reads its planning
choices and the transaction its ``reinit`` and ``move_frames``.  A light module
(no linker, no ELF reader): the CLI and ``watch`` build one before anything
heavy is imported.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULTS", "ReloadOptions"]


@dataclass(frozen=True)
class ReloadOptions:
    """The choices of one reload (the ``relive reload`` options of the same names)."""

    #: Only these functions are redirected (None: every changed one).
    functions: Collection[str] | None = None
    #: Plan, check and report; write nothing (``patch.dryrun``).
    dry_run: bool = False
    #: Compiler flags that replace the file's own (--cflags, -I, -D).
    cflags: Sequence[str] | None = None
    #: The compile_commands.json to take the file's command from (--compdb).
    compdb: Path | None = None
    #: Use compile_commands.json and compilers other users control (--trust-build).
    trust_build: bool = False
    #: Variables whose changed initial value is copied into the running storage
    #: (--reinit); the others keep their current value.
    reinit: Collection[str] = ()
    #: Accept a file the program was not built from (--new-file): it then only adds
    #: functions, or replaces those named in ``functions``.
    new_file: bool = False
    #: Reload even where data the program holds changed its layout (a notice, not
    #: a refusal; see patch.layout_check).
    allow_layout_change: bool = False
    #: Hot-deoptimize (--debug): compile at -O0 -g3 and redirect every function.
    debug: bool = False
    #: Threads inside a redirected function continue in its new code where that is
    #: provably safe (``patch.frames``; --no-move: never).
    move_frames: bool = True


#: Every choice left to its default: a plain reload of every changed function.
DEFAULTS = ReloadOptions()

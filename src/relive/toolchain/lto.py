"""Link-time optimisation: an LTO object holds compiler IR, not code relive can load."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from relive.toolchain.command import CompileCommand

__all__ = ["uses_lto", "without_lto"]


def uses_lto(flags: Sequence[str]) -> bool:
    """Whether ``flags`` compile with link-time optimisation.

    As for the compiler, the last of ``-flto``/``-flto=...`` and ``-fno-lto``
    wins; tuning options such as ``-flto-partition=`` do not turn LTO on.
    """
    lto = False
    for flag in flags:
        if flag == "-flto" or flag.startswith("-flto="):
            lto = True
        elif flag == "-fno-lto":
            lto = False
    return lto


def without_lto(cmd: CompileCommand) -> CompileCommand:
    """``cmd`` compiling to machine code: LTO flags dropped, ``-fno-lto`` added.

    An LTO object holds compiler IR, not code relive can load.  The running
    program was optimised across files at link time; the recompiled file is
    not, which is correct but may inline less.  A note says so.
    """
    if not uses_lto(cmd.flags):
        return cmd
    kept = tuple(
        f
        for f in cmd.flags
        if not (f.startswith(("-flto", "-ffat-lto-objects")) or f == "-fuse-linker-plugin")
    )
    note = (
        f"{cmd.source.name} was built with -flto: recompiling it without LTO "
        "(an LTO object has no machine code to load)"
    )
    return dataclasses.replace(cmd, flags=(*kept, "-fno-lto"), notes=(*cmd.notes, note))

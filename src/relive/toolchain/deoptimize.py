"""Hot-deoptimize: recompile a file for the debugger, in the running program.

``relive reload --debug FILE.c`` compiles the file as its build does but with
``-O0 -g3`` (every variable in memory, every line its own code, macros in the
debug info) and redirects every function of it, so a debugger attached to the
running optimised program sees the whole file as if built for debugging.  A
later plain reload of the file puts optimised code back.
"""

from __future__ import annotations

import dataclasses
import re

from relive.toolchain.command import CompileCommand

#: Flags that set the optimisation level or the amount of debug info.
_LEVEL = re.compile(r"-O.*|-g[0-3]?|-ggdb[0-3]?")


def deoptimized(cmd: CompileCommand) -> CompileCommand:
    """``cmd`` with its optimisation and debug levels replaced by ``-O0 -g3``."""
    kept = tuple(flag for flag in cmd.flags if not _LEVEL.fullmatch(flag))
    note = f"{cmd.source.name}: compiled with -O0 -g3 for debugging (--debug)"
    return dataclasses.replace(cmd, flags=(*kept, "-O0", "-g3"), notes=(*cmd.notes, note))

"""How to recompile one translation unit: the value every other toolchain module passes on.

Which command is chosen is ``relive.toolchain.choice``; running it is
``relive.toolchain.compiler``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ORIGIN_COMMAND_LINE",
    "ORIGIN_COMPDB",
    "ORIGIN_DEFAULT",
    "ORIGIN_DWARF",
    "CompileCommand",
]

ORIGIN_COMMAND_LINE = "command line"
ORIGIN_COMPDB = "compile_commands.json"
ORIGIN_DWARF = "DWARF"
ORIGIN_DEFAULT = "default"


@dataclass(frozen=True)
class CompileCommand:
    """How to recompile one translation unit.

    ``flags`` exclude the source file, ``-c``, ``-o X`` and dependency-file
    options: ``relive.toolchain.compiler`` adds its own.  ``directory`` is the
    compiler's working directory (relative paths in ``flags`` are relative to
    it).  ``origin`` says where the flags came from (one of the ``ORIGIN_*``
    constants).  ``source_arg`` is the source path as the original build spelled
    it (it ends up in ``__FILE__`` and ``assert`` messages), or "" to pass the
    absolute ``source``.  ``notes`` are warnings worth showing the user, such as
    a compiler or optimisation level that differs from the running program's.
    ``flags_unknown``: the build recorded no flags for this unit (clang without
    -grecord-command-line, or no producer string at all), so the optimisation
    level in ``flags`` is a guess that ``relive.patch.inference`` replaces.
    """

    compiler: str
    flags: tuple[str, ...]
    directory: Path
    source: Path
    origin: str
    source_arg: str = ""
    notes: tuple[str, ...] = ()
    flags_unknown: bool = False

    @property
    def source_argument(self) -> str:
        """The source path to put on the compiler's command line."""
        return self.source_arg or str(self.source)

"""One exception hierarchy for everything a user can cause.

Every error carries a one-line message (what went wrong and why), a hint (what
to do about it) and the exit code the CLI returns for it.
"""

from __future__ import annotations


class ReliveError(Exception):
    """Base class: a reload was refused or failed; the target is untouched."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "", details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        #: Multi-line material the CLI may show below the one-line message
        #: (e.g. the compiler's diagnostics).
        self.details = details

    def __str__(self) -> str:
        return self.message

    def one_line(self) -> str:
        """The message and hint joined into the single line the CLI prints."""
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(ReliveError):
    """The command line or API call itself is wrong."""

    exit_code = 2


class PermissionDenied(ReliveError):
    """relive may not trace the target (uid, capabilities, Yama, another tracer)."""

    exit_code = 3


class CompileError(ReliveError):
    """The compiler rejected the source file; its diagnostics are in ``details``."""

    exit_code = 4


class ProcessGone(ReliveError):
    """There is no such process, or it exited while relive worked on it."""

    exit_code = 5


class BadObject(ReliveError):
    """A file is not an ELF object relive can use (format, architecture, class, symbols)."""

    exit_code = 6


class LinkError(ReliveError):
    """The new code cannot be bound to the running program (symbol, relocation, range)."""

    exit_code = 7


class LayoutChanged(ReliveError):
    """Data the running program holds would change size, type or layout in the new
    code (a global's size, a type compared from DWARF, a function's signature while
    callers elsewhere still use the old one)."""

    exit_code = 8


class UnsafePatch(ReliveError):
    """A function cannot be redirected safely (too small, a thread in the way)."""

    exit_code = 9

    def __init__(self, message: str, hint: str = "", function: str = "") -> None:
        super().__init__(message, hint)
        #: The function that could not be redirected.
        self.function = function


class CommandKilled(ReliveError):
    """The command server's process running the command was killed before it
    finished (``relive.cli.client``): the command's outcome is unknown."""

    exit_code = 10

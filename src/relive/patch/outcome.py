"""What a reload did, as its caller gets it back: a light module (no linker, no
ELF reader), so that the session and watch can name the type without loading
the reporting code."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ReloadResult"]


@dataclass
class ReloadResult:
    """What a reload did (``Session.reload``'s result): the names of the functions it
    redirected, added, left or skipped, how long the threads were stopped and how
    long each phase took."""

    redirected: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    stopped_us: float = 0.0
    phases_ms: dict[str, float] = field(default_factory=dict)

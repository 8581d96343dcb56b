"""What the scenarios of ``make bench`` read back: a reload's ``--json --timings``
events, and the median of a figure in a summary."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ReloadReport:
    """The ``timings`` and ``reloaded`` events of one ``relive --json reload --timings``."""

    #: Milliseconds per phase ("attach", "compile", "link", ...).
    phases_ms: dict[str, float] = field(default_factory=dict)
    #: How long the threads were held (None: no ``timings`` event).
    stopped_ms: float | None = None
    #: How many functions were redirected (None: no ``reloaded`` event).
    redirected: int | None = None


def read_reload(json_lines: str) -> ReloadReport:
    """The report in a reload's JSON lines (every line an event)."""
    report = ReloadReport()
    for line in json_lines.splitlines():
        event = json.loads(line)
        if event.get("kind") == "timings":
            report.phases_ms = dict(event["phases_ms"])
            report.stopped_ms = event["stopped_us"] / 1e3
        elif event.get("kind") == "reloaded":
            report.redirected = event["redirected"]
    return report


def median(summary: dict[str, Any], key: str) -> float | None:
    """The median of figure ``key`` in a scenario's summary (None: not measured)."""
    value = summary.get(key, {}).get("median")
    return None if value is None else float(value)

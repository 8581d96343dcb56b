"""``relive server status`` and ``relive server stop``: ask the command server."""

from __future__ import annotations

from relive.cli.client import OP_STATUS, OP_STOP, ask
from relive.cli.render import Renderer
from relive.events import ServerState


def control(action: str, out: Renderer) -> int:
    """Report the server's state, after asking it to stop for ``stop``."""
    answer = ask(OP_STOP if action == "stop" else OP_STATUS) or {}
    running = answer.get("running")
    out(
        ServerState(
            pid=_int(answer.get("pid")),
            served=_int(answer.get("served")),
            running=[_int(pid) for pid in running] if isinstance(running, list) else [],
            idle_s=_float(answer.get("idle_s")),
            current=answer.get("current") is not False,
            stopping=answer.get("listening") is False,
            socket=str(answer.get("socket", "")),
            children_cpu_s=_float(answer.get("children_cpu_s")),
        )
    )
    return 0


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _float(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0

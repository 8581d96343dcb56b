"""relive: hot-reload C functions into a running Linux process.

>>> import relive
>>> session = relive.attach(pid)          # doctest: +SKIP
>>> session.reload(["demo.c"])            # doctest: +SKIP

The names below are imported on first use (PEP 562), so that the ``relive``
command's client (``relive.cli.client``), ``relive --help`` and the CLI start
without loading ``typing``, the linker, the ELF readers or capstone.
"""

from __future__ import annotations

#: mypy reads the block below as true (it knows the name); Python never runs it,
#: and ``typing`` stays unimported.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from relive.errors import ReliveError
    from relive.events import PatchStatus
    from relive.patch.options import ReloadOptions
    from relive.patch.outcome import ReloadResult
    from relive.session import Session, attach

__all__ = ["PatchStatus", "ReliveError", "ReloadOptions", "ReloadResult", "Session", "attach"]
__version__ = "0.1.0"

#: Each lazy name and the module that defines it.
_LAZY = {
    "PatchStatus": "relive.events",
    "ReliveError": "relive.errors",
    "ReloadOptions": "relive.patch.options",
    "ReloadResult": "relive.patch.outcome",
    "Session": "relive.session",
    "attach": "relive.session",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'relive' has no attribute {name!r}")

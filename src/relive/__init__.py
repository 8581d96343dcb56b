"""relive: hot-reload C functions into a running Linux process.

>>> import relive
>>> session = relive.attach(pid)          # doctest: +SKIP
>>> session.reload(["demo.c"])            # doctest: +SKIP
"""

from relive.errors import ReliveError
from relive.session import PatchStatus, ReloadResult, Session, attach

__all__ = ["PatchStatus", "ReliveError", "ReloadResult", "Session", "attach"]
__version__ = "0.1.0"

"""The cyclic garbage collector paused while a reload runs.

A reload of a big unit builds hundreds of thousands of small objects that live
until it ends: the object's sections, symbols and relocations, the running
module's symbols, a decision per function.  Each time allocations outnumber
frees by a few hundred, Python's collector walks the young objects, and every
so often all of them: for a 10,000-function unit that was a sixth of the first
reload's time and nearly a third of the next one's.  relive's data holds no
reference cycles that matter (reference counting frees it); whatever cycle a
reload leaves is collected once the collector runs again.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic collector for the ``with`` body, as it was before afterwards
    (a library caller that disabled it keeps it disabled)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()

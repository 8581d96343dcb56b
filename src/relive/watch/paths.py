"""How the watch names files: by real path, so a symlinked folder, ``./x.c`` and
``x.c`` are one file in the dependency map, the content tracker and the scope."""

from __future__ import annotations

import os
from pathlib import Path


def real_path(path: str | Path) -> Path:
    """``path`` with symlinks and ``..`` resolved (it need not exist)."""
    return Path(os.path.realpath(path))

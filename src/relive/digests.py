"""SHA-1 and BLAKE2b from the interpreter's own modules, not through ``hashlib``.

``import hashlib`` loads OpenSSL's libcrypto for its ``_hashlib`` (about 3.7 MB
of relive's resident memory, a fifth of what a big unit's plan needs), although
relive hashes only with SHA-1 and BLAKE2b, which CPython builds in (``_sha1``,
``_blake2``).  Same algorithms, same digests; an interpreter built without
them gets hashlib's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["blake2b", "sha1"]

if TYPE_CHECKING:
    from hashlib import blake2b, sha1
else:
    try:
        from _blake2 import blake2b
        from _sha1 import sha1
    except ImportError:  # pragma: no cover - CPython builds both in by default
        from hashlib import blake2b, sha1

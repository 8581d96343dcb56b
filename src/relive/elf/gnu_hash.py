"""The ``.gnu.hash`` table: exported-name lookups without decoding ``.dynsym``."""

from __future__ import annotations

import struct
from collections.abc import Iterator

__all__ = ["GnuHash"]

_GNU_HASH_HEADER = struct.Struct("<IIII")


class GnuHash:
    """The ``.gnu.hash`` table: name lookups without decoding ``.dynsym``."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.nbuckets, self.symoffset, self.bloom_size, self.bloom_shift = (
            _GNU_HASH_HEADER.unpack_from(data, 0)
        )
        self.buckets_at = 16 + 8 * self.bloom_size
        self.chains_at = self.buckets_at + 4 * self.nbuckets

    @classmethod
    def parse(cls, data: bytes) -> GnuHash | None:
        """The table in ``data``, or None if it is absent or malformed (then the
        caller falls back to decoding ``.dynsym``)."""
        if len(data) < _GNU_HASH_HEADER.size:
            return None
        table = cls(data)
        if not table.nbuckets or not table.bloom_size or table.chains_at > len(data):
            return None
        return table

    def iter_candidates(self, name: bytes) -> Iterator[int]:
        """Dynsym indices whose hash matches ``name`` (the caller compares names)."""
        h = 5381
        for c in name:
            h = (h * 33 + c) & 0xFFFFFFFF
        (word,) = struct.unpack_from("<Q", self.data, 16 + 8 * ((h // 64) % self.bloom_size))
        mask = (1 << (h % 64)) | (1 << ((h >> self.bloom_shift) % 64))
        if word & mask != mask:
            return
        (index,) = struct.unpack_from("<I", self.data, self.buckets_at + 4 * (h % self.nbuckets))
        if index < self.symoffset:
            return
        while True:
            at = self.chains_at + 4 * (index - self.symoffset)
            if at + 4 > len(self.data):
                return
            (chain,) = struct.unpack_from("<I", self.data, at)
            if (chain | 1) == (h | 1):
                yield index
            if chain & 1:
                return
            index += 1

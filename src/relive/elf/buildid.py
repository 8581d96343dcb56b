"""The GNU build id of a linked ELF file: which build a mapped file came from.

Read from the ``PT_NOTE`` program headers (what the loader maps), so the note's
link-time address is known too and the copy in a process's memory can be
compared with the file's.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from relive.elf.constants import NT_GNU_BUILD_ID, PT_NOTE

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_NHDR = struct.Struct("<III")
_MAX_NOTES = 1 << 16


class BuildId(NamedTuple):
    """A build id and where its whole note (header, name, descriptor) is mapped."""

    value: bytes
    #: Link-time address of the note's header.
    vaddr: int
    #: The note as it is in the file (header, name, descriptor).
    note: bytes


def read_build_id(path: str) -> BuildId | None:
    """The file's GNU build id, or None (no such note, or not a 64-bit ELF file)."""
    try:
        with open(path, "rb") as f:
            header = f.read(_EHDR.size)
            if len(header) < _EHDR.size or header[:4] != b"\x7fELF" or header[4] != 2:
                return None
            fields = _EHDR.unpack(header)
            phoff, phentsize, phnum = fields[5], fields[9], fields[10]
            if phentsize != _PHDR.size or not phnum:
                return None
            f.seek(phoff)
            table = f.read(phnum * _PHDR.size)
            for p_type, _, offset, vaddr, _, filesz, _, _ in _PHDR.iter_unpack(table):
                if p_type != PT_NOTE or not 0 < filesz <= _MAX_NOTES:
                    continue
                f.seek(offset)
                found = _find_in_notes(f.read(filesz), vaddr)
                if found is not None:
                    return found
    except (OSError, struct.error):
        return None
    return None


def _find_in_notes(notes: bytes, vaddr: int) -> BuildId | None:
    at = 0
    while at + _NHDR.size <= len(notes):
        namesz, descsz, kind = _NHDR.unpack_from(notes, at)
        name_at = at + _NHDR.size
        desc_at = name_at + _align4(namesz)
        end = desc_at + _align4(descsz)
        if end > len(notes) + 3:
            return None
        if kind == NT_GNU_BUILD_ID and notes[name_at : name_at + namesz] == b"GNU\0":
            value = notes[desc_at : desc_at + descsz]
            return BuildId(value, vaddr + at, notes[at : desc_at + descsz])
        at = end
    return None


def _align4(n: int) -> int:
    return (n + 3) & ~3

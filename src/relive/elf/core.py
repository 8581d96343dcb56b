"""What relive reads from a core dump: the pid of the process that dumped it.

``relive gdb --core`` needs the pid to find the debug objects of that process's
reloads.  The kernel writes it in the ``NT_PRPSINFO`` note (``pr_pid``).
"""

from __future__ import annotations

import struct

from relive.elf.constants import ET_CORE, PT_NOTE
from relive.errors import BadObject, UsageError

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_NHDR = struct.Struct("<III")
NT_PRPSINFO = 3
#: Offset of ``pr_pid`` in the 64-bit ``struct elf_prpsinfo``: four chars, the
#: 8-byte ``pr_flag`` at 8, ``pr_uid`` and ``pr_gid`` (4 bytes each) at 16 and 20.
_PR_PID_OFFSET = 24
_MAX_NOTES = 1 << 24


def read_core_pid(path: str) -> int:
    """The pid recorded in a core dump; BadObject if it is not a 64-bit ELF core."""
    try:
        with open(path, "rb") as f:
            header = f.read(_EHDR.size)
            if len(header) < _EHDR.size or header[:4] != b"\x7fELF" or header[4] != 2:
                raise _not_core(path)
            fields = _EHDR.unpack(header)
            if fields[1] != ET_CORE or fields[9] != _PHDR.size:
                raise _not_core(path)
            f.seek(fields[5])
            table = f.read(fields[10] * _PHDR.size)
            for p_type, _, offset, _, _, filesz, _, _ in _PHDR.iter_unpack(table):
                if p_type == PT_NOTE and 0 < filesz <= _MAX_NOTES:
                    f.seek(offset)
                    pid = _find_pid(f.read(filesz))
                    if pid is not None:
                        return pid
    except OSError as error:  # no such file, a folder, unreadable
        raise UsageError(
            f"cannot read {path}: {error.strerror}", "pass the core file the crash left"
        ) from error
    except struct.error as error:
        raise _not_core(path) from error
    raise BadObject(f"{path} records no process id (no NT_PRPSINFO note)", "pass -p PID")


def _find_pid(notes: bytes) -> int | None:
    at = 0
    while at + _NHDR.size <= len(notes):
        namesz, descsz, kind = _NHDR.unpack_from(notes, at)
        desc_at = at + _NHDR.size + _align4(namesz)
        if kind == NT_PRPSINFO and descsz >= _PR_PID_OFFSET + 4:
            (pid,) = struct.unpack_from("<i", notes, desc_at + _PR_PID_OFFSET)
            return int(pid)
        at = desc_at + _align4(descsz)
    return None


def _not_core(path: str) -> BadObject:
    return BadObject(f"{path} is not a 64-bit ELF core dump", "pass the core file the crash left")


def _align4(n: int) -> int:
    return (n + 3) & ~3

"""Compile units of an ELF file's DWARF: which sources it was built from, and how.

Only the top DIE of each compile unit is read (name, compilation directory,
producer, language): that is enough to find the translation unit a source file
became and the compiler switches gcc recorded for it, and it stays fast on big
executables because pyelftools parses DIEs lazily.

pyelftools stays behind this module: callers get plain dataclasses.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elftools.common.exceptions import DWARFError, ELFError, ELFParseError
from elftools.elf.elffile import ELFFile

from relive.errors import BadObject

__all__ = ["CompileUnit", "find_compile_unit", "iter_compile_units"]

# Tags whose top DIE describes a translation unit.  Partial units (dwz) and type
# units carry no source of their own, so they are skipped.
_UNIT_TAGS = frozenset({"DW_TAG_compile_unit", "DW_TAG_skeleton_unit"})


@dataclass(frozen=True)
class CompileUnit:
    """The top DIE of one DWARF compile unit.

    ``name`` is DW_AT_name exactly as recorded: usually the source path as it was
    passed to the compiler, relative to ``comp_dir`` (DW_AT_comp_dir).
    ``producer`` is DW_AT_producer (compiler identity and, for gcc, its switches);
    ``language`` is the DW_LANG_* code.
    """

    name: str
    comp_dir: str | None
    producer: str | None
    language: int | None

    @property
    def path(self) -> str:
        """The source's absolute, normalised path (or ``name`` if that cannot be known)."""
        if os.path.isabs(self.name) or self.comp_dir is None:
            return os.path.normpath(self.name)
        return os.path.normpath(os.path.join(self.comp_dir, self.name))


# Reading DWARF is the slow part; a watch session asks about the same executable
# on every save, so keep the last few files' answers.  The key identifies file
# *content* (a rebuilt executable gets a new mtime or inode), not its name.
_CACHE_SIZE = 16
_CacheKey = tuple[int, int, int, int]
_cache: OrderedDict[_CacheKey, tuple[CompileUnit, ...]] = OrderedDict()
_cache_lock = threading.Lock()


def iter_compile_units(path: str | Path) -> Iterator[CompileUnit]:
    """Yield the compile units of the ELF file at ``path``; nothing if it has no DWARF.

    Works for executables, shared objects and relocatable objects, DWARF 4 and 5
    (strings may live in .debug_str, .debug_line_str or behind .debug_str_offsets).
    Raises BadObject if the file cannot be read or is not ELF.
    """
    yield from _read_units(Path(path))


def find_compile_unit(path: str | Path, source: Path) -> CompileUnit | None:
    """Return the compile unit of ``path`` built from ``source``, or None.

    A unit matches when its absolute source path (comp_dir joined with name)
    is the source's path, symlinks resolved.  Failing that (the tree was moved,
    or built with -fdebug-prefix-map), a unit whose name has the same basename
    matches if it is the only such source; two different sources with that
    basename are ambiguous and give None.
    """
    units = _read_units(Path(path))
    wanted_real = os.path.realpath(source)
    wanted_abs = os.path.normpath(os.path.abspath(source))
    for unit in units:
        if not (os.path.isabs(unit.name) or unit.comp_dir):
            continue
        candidate = unit.path
        if candidate == wanted_abs or os.path.realpath(candidate) == wanted_real:
            return unit

    by_path: dict[str, CompileUnit] = {}
    for unit in units:
        if os.path.basename(unit.name) == source.name:
            # The same source may appear in several units (built twice); that is
            # still one file, so only distinct paths count as ambiguity.
            by_path.setdefault(unit.path, unit)
    if len(by_path) == 1:
        return next(iter(by_path.values()))
    return None


def _read_units(path: Path) -> tuple[CompileUnit, ...]:
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; fstat needs the open file
    except OSError as e:
        raise BadObject(
            f"cannot read {path}: {e.strerror}", "check that the program's file still exists"
        ) from e
    with f:
        # Stat the open file, not the name, so the key describes the bytes we parse
        # even if the file is replaced meanwhile.
        st = os.fstat(f.fileno())
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        with _cache_lock:
            cached = _cache.get(key)
            if cached is not None:
                _cache.move_to_end(key)
                return cached
        units = _parse_units(f, path)
    with _cache_lock:
        _cache[key] = units
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return units


def _parse_units(f: Any, path: Path) -> tuple[CompileUnit, ...]:
    try:
        elf = ELFFile(f)
        if not elf.has_dwarf_info():
            return ()
        dwarf = elf.get_dwarf_info()
        units: list[CompileUnit] = []
        for cu in dwarf.iter_CUs():
            top = cu.get_top_DIE()
            if top.tag not in _UNIT_TAGS:
                continue
            attrs = top.attributes
            name = _path_attr(attrs, "DW_AT_name")
            if name is None:
                continue
            units.append(
                CompileUnit(
                    name=name,
                    comp_dir=_path_attr(attrs, "DW_AT_comp_dir"),
                    producer=_text_attr(attrs, "DW_AT_producer"),
                    language=_int_attr(attrs, "DW_AT_language"),
                )
            )
        return tuple(units)
    except (ELFError, ELFParseError) as e:
        raise BadObject(f"{path} is not a readable ELF file: {e}") from e
    except (DWARFError, KeyError, ValueError, IndexError) as e:
        # pyelftools signals malformed DWARF with a mix of exception types.
        raise BadObject(
            f"{path} has unreadable DWARF: {e}", "rebuild it with a current gcc or clang"
        ) from e


def _path_attr(attrs: dict[str, Any], name: str) -> str | None:
    value = _raw_attr(attrs, name)
    if isinstance(value, bytes):
        # Paths are bytes on Linux; surrogateescape keeps non-UTF-8 names usable.
        return os.fsdecode(value)
    return value if isinstance(value, str) else None


def _text_attr(attrs: dict[str, Any], name: str) -> str | None:
    value = _raw_attr(attrs, name)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _int_attr(attrs: dict[str, Any], name: str) -> int | None:
    value = _raw_attr(attrs, name)
    return value if isinstance(value, int) else None


def _raw_attr(attrs: dict[str, Any], name: str) -> object:
    attr = attrs.get(name)
    return None if attr is None else attr.value

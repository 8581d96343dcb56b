"""The ELF modules (executable and shared libraries) mapped in a running process."""

from __future__ import annotations

import os
from dataclasses import dataclass

from relive.elf.buildid import read_build_id
from relive.elf.constants import PAGE_SIZE
from relive.elf.image import ElfImage
from relive.elf.objfile import ObjectFile
from relive.errors import BadObject, PermissionDenied, ReliveError
from relive.process.memory import ProcessMemory
from relive.process.procfs import Mapping, get_exe_path, read_maps


@dataclass(frozen=True)
class RunningModule:
    """One mapped ELF file: where it is on disk and where it is loaded."""

    path: str  # as the kernel names it in /proc/PID/maps
    file: str  # a path that opens the very file that is mapped
    image: ElfImage
    bias: int  # runtime address = link-time vaddr + bias
    start: int  # lowest mapped address
    end: int  # highest mapped address
    is_main: bool

    @property
    def name(self) -> str:
        """The file name, for messages."""
        return os.path.basename(self.path)

    def runtime(self, vaddr: int) -> int:
        """A link-time address of this module as an address in the process."""
        return vaddr + self.bias


def load_running_modules(pid: int, maps: list[Mapping] | None = None) -> list[RunningModule]:
    """Every ELF file mapped in ``pid``, the executable first, then in load order.

    A file replaced on disk since the process mapped it (a rebuild) is not
    mistaken for the one that runs: the executable is read through
    ``/proc/PID/exe``, which whoever may trace the process may open; a library
    through ``/proc/PID/map_files``, which only root may open, or else from disk
    when the build id there is the one in memory.  Otherwise PermissionDenied
    says why: a library silently left out would leave its sources unreloadable.
    """
    maps = read_maps(pid) if maps is None else maps
    exe = os.path.realpath(get_exe_path(pid))
    groups: dict[str, list[Mapping]] = {}
    for mapping in maps:
        if mapping.path.startswith("/") and mapping.inode:
            groups.setdefault(mapping.path, []).append(mapping)
    modules: list[RunningModule] = []
    for path, mappings in groups.items():
        module = _find_module(pid, path, mappings, is_main=os.path.realpath(path) == exe)
        if module is not None:
            modules.append(module)
    modules.sort(key=lambda m: (not m.is_main, m.start))
    return modules


def _find_module(
    pid: int, path: str, mappings: list[Mapping], is_main: bool
) -> RunningModule | None:
    first = min(mappings, key=lambda m: m.start)
    if first.offset != 0:
        return None
    file = _open_path(pid, first, path, is_main)
    if file is None:
        if not any(m.is_executable for m in mappings):
            return None  # a replaced data file: not code relive could patch
        raise _replaced_unreadable(pid, path)
    try:
        image = ElfImage.open(file)
    except (BadObject, OSError):
        return None  # a data file mapped by the program, not code
    bias = first.start - (image.first_load_vaddr & ~(PAGE_SIZE - 1))
    return RunningModule(
        path=path,
        file=file,
        image=image,
        bias=bias,
        start=first.start,
        end=max(m.end for m in mappings),
        is_main=is_main,
    )


def _open_path(pid: int, mapping: Mapping, path: str, is_main: bool) -> str | None:
    """A path that opens the mapped file: the path itself, unless it was replaced on
    disk since it was mapped; None when this user cannot open the mapped file."""
    try:
        on_disk = os.stat(path)
        if (on_disk.st_ino, os.major(on_disk.st_dev), os.minor(on_disk.st_dev)) == (
            mapping.inode,
            *_parse_dev(mapping.dev),
        ):
            return path
    except OSError:
        pass
    if is_main:
        return f"/proc/{pid}/exe"
    mapped = f"/proc/{pid}/map_files/{mapping.start:x}-{mapping.end:x}"
    try:
        os.close(os.open(mapped, os.O_RDONLY | os.O_CLOEXEC))
    except PermissionError:
        # The kernel names a replaced file "PATH (deleted)"; what is at PATH now
        # may still be the same build (rebuilt from the same source).
        now = path.removesuffix(" (deleted)")
        return now if _same_build_on_disk(pid, now, mapping) else None
    except OSError:
        pass
    return mapped


def _same_build_on_disk(pid: int, path: str, first: Mapping) -> bool:
    """Whether the file now at ``path`` has the build id the process has mapped."""
    found = read_build_id(path)
    if found is None:
        return False
    try:
        image = ElfImage.open(path)
        bias = first.start - (image.first_load_vaddr & ~(PAGE_SIZE - 1))
        with ProcessMemory(pid) as memory:
            return memory.read(found.vaddr + bias, len(found.note)) == found.note
    except (ReliveError, OSError):
        return False


def _replaced_unreadable(pid: int, path: str) -> PermissionDenied:
    name = os.path.basename(path.removesuffix(" (deleted)"))
    return PermissionDenied(
        f"{name} was replaced on disk (rebuilt?) since process {pid} loaded it, and the "
        "build it runs can only be read by root (/proc/PID/map_files); the file there now "
        "is another build",
        hint="run relive as root, or restart the program so that it runs the new build",
    )


def _parse_dev(dev: str) -> tuple[int, int]:
    major, _, minor = dev.partition(":")
    return int(major, 16), int(minor, 16)


def get_main_module(modules: list[RunningModule]) -> RunningModule:
    """The executable's module (raises if the process has none we can read)."""
    for module in modules:
        if module.is_main:
            return module
    raise ReliveError(
        "cannot read the target's executable",
        hint="check that /proc/PID/exe is readable and the binary is an ELF file",
    )


def find_module_defining(obj: ObjectFile, modules: list[RunningModule]) -> RunningModule:
    """For a prebuilt .o: the module that defines most of its global functions."""
    names = [s.name for s in obj.iter_functions() if not s.is_local]
    best, best_count = modules[0], -1
    for module in modules:
        count = sum(1 for n in names if module.image.find_global(n) is not None)
        if count > best_count:
            best, best_count = module, count
    return best

"""A function's original code, read from the module file on disk.

Memory can already hold a jump: relive's own from an earlier reload, or one a
forked child inherited from its parent.  What was there before any patch is
what the file holds, so original bytes come from the file that is mapped
(``RunningModule.file`` opens that very file, through ``/proc/PID/map_files``
when the path was replaced) and, when the file has a GNU build id, only after
checking that the build id in memory is the file's.
"""

from __future__ import annotations

from collections.abc import Callable

from relive.elf.buildid import read_build_id
from relive.errors import BadObject, ReliveError
from relive.patch.modules import RunningModule

MemoryReader = Callable[[int, int], bytes]

_checked: dict[tuple[str, int, int], bool] = {}


def read_original_code(
    module: RunningModule, address: int, size: int, read_memory: MemoryReader
) -> bytes:
    """``size`` bytes at runtime ``address`` of ``module`` as its file holds them.

    Raises :class:`BadObject` when the file on disk is not the build the
    process runs (different build id) or does not hold that range.
    """
    check_same_build(module, read_memory)
    return module.image.read_vaddr(address - module.bias, size)


def check_same_build(module: RunningModule, read_memory: MemoryReader) -> None:
    """Raise BadObject unless the build id mapped in the process is the file's."""
    key = (module.file, module.start, id(module.image))
    if _checked.get(key):
        return
    found = read_build_id(module.file)
    if found is not None:
        try:
            mapped = read_memory(module.runtime(found.vaddr), len(found.note))
        except ReliveError:
            mapped = b""
        if mapped != found.note:
            raise BadObject(
                f"{module.path} on disk is not the build the process runs (build ids differ)",
                hint="restart the program from the current build, or put back the file it runs",
            )
    _checked[key] = True

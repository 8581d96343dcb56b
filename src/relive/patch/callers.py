"""Who calls a function in the running program: for a function too small for an
entry jump, whose calls can only be redirected by reloading its callers."""

from __future__ import annotations

import bisect

from relive.arch.base import Arch
from relive.errors import ReliveError
from relive.patch.modules import RunningModule

_PF_X = 1


def find_callers(module: RunningModule, address: int, arch: Arch) -> list[str]:
    """Names of the functions of ``module`` (as its file holds them) with a direct
    call or jump to runtime ``address``, each with its source file when the symbol
    table says (file-local functions)."""
    functions = [f for f in module.image.iter_functions() if f.size]
    starts = [f.value for f in functions]
    files = _files_of_locals(module)
    names: set[str] = set()
    for segment in module.image.load_segments:
        if not segment.flags & _PF_X or not segment.filesz:
            continue
        try:
            code = module.image.read_vaddr(segment.vaddr, segment.filesz)
        except ReliveError:
            continue
        target = address - module.bias
        for site in arch.find_direct_branches_to(code, segment.vaddr, target):
            at = bisect.bisect_right(starts, site) - 1
            if at >= 0 and site < functions[at].value + functions[at].size:
                caller = functions[at]
                if caller.value != target:
                    where = files.get((caller.name, caller.value))
                    names.add(f"{caller.name} ({where})" if where else caller.name)
    return sorted(names)


def _files_of_locals(module: RunningModule) -> dict[tuple[str, int], str]:
    out: dict[tuple[str, int], str] = {}
    for file in module.image.iter_file_names():
        for symbol in module.image.iter_file_locals(file):
            if symbol.is_function:
                out[(symbol.name, symbol.value)] = file
    return out

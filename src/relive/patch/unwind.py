"""Register the new code's unwind table with the program's own unwinder.

``backtrace()``, ``_Unwind_Backtrace`` and C++ exceptions find the unwind
information of a frame through libgcc's registry of ``.eh_frame`` tables; code
relive loaded is in none of the program's modules, so without registration an
unwind stops at the first new frame.  When the program has libgcc's unwinder
loaded (libgcc_s, or linked into the executable), relive calls its
``__register_frame_info(table, object)`` in the target, with the table and the
registration record both in the new block's data pages: no allocation happens
in the program.  ``undo`` calls ``__deregister_frame_info`` for tables whose
code no longer runs.

A program that loads libgcc_s only later (glibc's ``backtrace()`` does so on
its first call) never hears of tables loaded before: relive cannot register
with an unwinder that is not there yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from relive.link import LinkedImage
from relive.patch.modules import RunningModule
from relive.process.remote import remote_call
from relive.process.threads import stop_one

REGISTER = "__register_frame_info"
DEREGISTER = "__deregister_frame_info"


@dataclass(frozen=True)
class Unwinder:
    """Where the program's libgcc unwinder keeps its registration functions."""

    module: str
    register: int
    deregister: int


def find_unwinder(modules: Sequence[RunningModule]) -> Unwinder | None:
    """libgcc's registration functions in the process, or None if it has no unwinder."""
    for module in modules:
        register = _find_function(module, REGISTER)
        deregister = _find_function(module, DEREGISTER)
        if register is not None and deregister is not None:
            return Unwinder(module.name, register, deregister)
    return None


def register_unwind_tables(
    pid: int, unwinder: Unwinder, images: Sequence[LinkedImage]
) -> list[int]:
    """Register each block's table; the addresses of the tables registered.

    One idle thread runs the calls while the others go on: the registry's lock
    may be held for a moment by a thread that is unwinding.
    """
    tables = [
        (image.eh_frame_address, image.unwind_object_address)
        for image in images
        if image.eh_frame_address is not None and image.unwind_object_address is not None
    ]
    if not tables:
        return []
    with stop_one(pid) as stopped:
        for table, record in tables:
            remote_call(stopped, unwinder.register, table, record)
    return [table for table, _ in tables]


def deregister_unwind_tables(pid: int, unwinder: Unwinder, tables: Sequence[int]) -> None:
    """Take tables relive registered (and only those) out of the registry."""
    if not tables:
        return
    with stop_one(pid) as stopped:
        for table in tables:
            remote_call(stopped, unwinder.deregister, table)


def _find_function(module: RunningModule, name: str) -> int | None:
    symbol = module.image.find_dynamic_symbol(name)
    if symbol is None and module.image.has_symtab:
        symbol = module.image.find_global(name)
    if symbol is None or not symbol.value:
        return None
    return module.runtime(symbol.value)

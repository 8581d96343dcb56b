"""Instruction-set knowledge.  Only ``arch/<isa>/`` knows encodings and ABIs."""

from __future__ import annotations

from relive.arch.base import Arch
from relive.errors import BadObject

_MACHINE_NAMES = {3: "i386", 40: "ARM", 62: "x86-64", 183: "AArch64", 243: "RISC-V"}


def machine_name(machine: int) -> str:
    """A readable name for an ELF e_machine value."""
    return _MACHINE_NAMES.get(machine, f"machine {machine}")


def get_arch(machine: int) -> Arch:
    """The :class:`Arch` for an ELF machine, or BadObject if relive does not support it."""
    if machine == 62:
        from relive.arch.x86_64 import ARCH

        return ARCH
    raise BadObject(
        f"{machine_name(machine)} is not supported yet",
        hint="relive reloads x86-64 processes; aarch64 is planned",
    )

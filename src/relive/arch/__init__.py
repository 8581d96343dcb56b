"""Instruction-set knowledge.  Only ``arch/<isa>/`` knows encodings and ABIs."""

from __future__ import annotations

from relive.arch.base import Arch
from relive.elf.constants import EM_X86_64, machine_name
from relive.errors import BadObject


def get_arch(machine: int) -> Arch:
    """The :class:`Arch` for an ELF machine, or BadObject if relive does not support it."""
    if machine == EM_X86_64:
        from relive.arch.x86_64 import ARCH

        return ARCH
    raise BadObject(
        f"{machine_name(machine)} is not supported yet",
        hint="relive reloads x86-64 processes; aarch64 is planned",
    )

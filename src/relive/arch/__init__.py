"""Instruction-set knowledge.  Only ``arch/<isa>/`` knows encodings and ABIs."""

from __future__ import annotations

import functools
import os

from relive.arch.base import Arch, Registers
from relive.elf.constants import EM_X86_64, machine_name
from relive.errors import BadObject, ReliveError

#: ``uname -m`` of the machines relive runs on, and their ELF machine.
_HOST_MACHINES = {"x86_64": EM_X86_64, "amd64": EM_X86_64}


def get_arch(machine: int) -> Arch:
    """The :class:`Arch` for an ELF machine, or BadObject if relive does not support it."""
    if machine == EM_X86_64:
        from relive.arch.x86_64 import ARCH

        return ARCH
    raise BadObject(
        f"{machine_name(machine)} is not supported yet",
        hint="relive reloads x86-64 processes; aarch64 is planned",
    )


@functools.cache
def host_arch() -> Arch:
    """The instruction set of the machine relive runs on (that of every process it
    traces: ptrace hands their registers over in its layout)."""
    machine = os.uname().machine  # what platform.machine() says, without importing it
    if machine not in _HOST_MACHINES:
        raise ReliveError(
            f"relive runs on x86-64 Linux; this machine is {machine}",
            hint="run relive on an x86-64 machine",
        )
    return get_arch(_HOST_MACHINES[machine])


def host_registers() -> Registers:
    """The registers of the machine relive runs on: ptrace hands them over in its
    layout, whatever the target (relive traces processes of its own machine)."""
    return host_arch().registers

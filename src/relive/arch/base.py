"""What the rest of relive may know about an instruction set: this interface.

Each ``arch/<isa>/`` package provides one :class:`Arch`; nothing outside
``arch/`` knows an encoding, a relocation formula or a register name.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol


class Need(enum.Enum):
    """What the linker must provide before a relocation can be computed."""

    NOTHING = "nothing"
    #: ``S`` is a call target: if it is out of reach, the linker routes it through a stub.
    CALL = "call"
    #: ``G`` is the address of a GOT slot holding ``S``.
    GOT_SLOT = "got slot"
    #: ``GOT`` is the base of the linker's own GOT.
    GOT_BASE = "got base"
    #: ``T`` is the symbol's offset from the thread pointer (static TLS).
    TPOFF = "tpoff"
    #: ``G`` is the address of a GOT slot holding the symbol's thread-pointer offset.
    GOT_TPOFF = "got tpoff"
    #: ``G`` is the address of a GOT pair (module id, offset) for ``__tls_get_addr``.
    GOT_TLS_PAIR = "got tls pair"
    #: ``G`` is the address of a GOT pair (module id, 0) for local-dynamic TLS.
    GOT_TLS_MODULE = "got tls module"
    #: ``D`` is the symbol's offset inside its module's TLS block.
    DTPOFF = "dtpoff"


@dataclass(frozen=True, slots=True)
class Operands:
    """The named values of the psABI formulas for one relocation."""

    S: int = 0  # symbol (or call target / stub) address
    A: int = 0  # addend
    P: int = 0  # address of the place being relocated
    G: int = 0  # address of the GOT slot (or pair) this relocation uses
    GOT: int = 0  # base of the GOT
    T: int = 0  # thread-pointer offset of a TLS symbol
    D: int = 0  # offset of a TLS symbol inside its module's block
    Z: int = 0  # symbol size


class Range(enum.Enum):
    """How a computed value must fit its field: checked, never truncated."""

    SIGNED = "signed"
    UNSIGNED = "unsigned"
    ANY = "any"  # the field is as wide as an address: everything fits


@dataclass(frozen=True)
class RelocationType:
    """One relocation type: its field and its formula (see the handler's docstring)."""

    number: int
    name: str
    width: int  # bytes written at P
    range: Range
    need: Need
    compute: Callable[[Operands], int]
    #: The stored value is relative to the place (decoding adds P back).
    pc_relative: bool = False

    @property
    def formula(self) -> str:
        """The ABI formula, taken from the handler's docstring."""
        return (self.compute.__doc__ or "").strip()


class Instruction(NamedTuple):
    """One decoded instruction, as far as comparing two builds of a function needs.

    A named tuple: a big unit's first reload decodes hundreds of thousands (a frozen
    dataclass's ``__init__`` set each field through ``object.__setattr__``)."""

    address: int
    size: int
    #: What it does, whatever the encoding (a short and a near ``jmp`` are alike).
    operation: str
    #: Where a direct branch or call goes (None: not one).
    branch_target: int | None
    #: Does nothing (alignment padding).
    is_padding: bool

    @property
    def end(self) -> int:
        """The address of the next instruction."""
        return self.address + self.size


#: A thread's registers as ptrace reads and writes them: a ctypes structure in the
#: ISA's layout, opaque outside ``arch/<isa>`` (only :class:`Registers` looks inside).
RegisterBlock = Any


@dataclass(frozen=True)
class Registers:
    """How relive reads and changes a held thread: the ISA's ptrace register block
    and the Linux syscall and function-call conventions on it."""

    #: A zeroed block, for PTRACE_GETREGS to fill.
    new_block: Callable[[], RegisterBlock]
    get_pc: Callable[[RegisterBlock], int]
    set_pc: Callable[[RegisterBlock, int], None]
    get_sp: Callable[[RegisterBlock], int]
    set_sp: Callable[[RegisterBlock, int], None]
    #: A copy of the block set up to run syscall ``nr`` with ``args`` (pc unchanged).
    prepare_syscall: Callable[[RegisterBlock, int, Sequence[int]], RegisterBlock]
    #: The syscall's signed result (-errno on failure).
    syscall_result: Callable[[RegisterBlock], int]
    is_syscall_error: Callable[[int], bool]
    syscall_name: Callable[[int], str]
    #: A copy of a block stopped at a syscall's entry that makes the kernel skip it.
    cancel_syscall: Callable[[RegisterBlock], RegisterBlock]
    #: Turn an EINTR only a ptrace stop caused into a restart; True if changed.
    make_interrupted_syscall_restart: Callable[[RegisterBlock], bool]
    #: A copy set up to call ``function(*args)`` with its return address in the
    #: stack slot given last (the caller writes it there).
    prepare_call: Callable[[RegisterBlock, int, Sequence[int], int], RegisterBlock]
    #: What a called function returned, read at the entry stop of the syscall
    #: instruction it returned into.
    call_result_at_syscall_entry: Callable[[RegisterBlock], int]
    #: Syscall numbers relive injects.
    mmap: int
    mprotect: int
    munmap: int
    #: Code relive borrows from the program (see ``process.remote``): a syscall
    #: followed by a return, and the ``rt_sigreturn`` trampoline.
    syscall_ret: bytes
    sigreturn: bytes
    #: Bytes of the syscall instruction (the pc after it, from its address).
    syscall_insn_size: int
    #: The signal frame that restores a thread if relive dies: its size for the
    #: given FPU state, its address below a stack pointer, and its bytes from the
    #: saved registers, signal mask, FPU state and the frame's own address.
    frame_size: Callable[[bytes], int]
    frame_address: Callable[[int, int], int]
    build_frame: Callable[[RegisterBlock, int, bytes, int], bytes]
    #: (epoll fd, timeout ms) of an epoll wait with a finite millisecond timeout,
    #: from a syscall number and its arguments (as /proc/PID/syscall shows them)...
    epoll_wait_call: Callable[[int, Sequence[int]], tuple[int, int] | None]
    #: ... or from a block stopped in it; and how to set the timeout of its restart.
    epoll_wait_of: Callable[[RegisterBlock], tuple[int, int] | None]
    set_epoll_timeout: Callable[[RegisterBlock, int], None]
    #: Bytes below the stack pointer a function may use without moving it (the
    #: ABI's red zone): a leaf function may keep any value there.
    red_zone: int


@dataclass(frozen=True)
class Resume:
    """Where a moved frame continues in the new code, and registers it needs set."""

    address: int
    #: (register name, new value): the frame's copy of a constant the old code set differently.
    fixups: tuple[tuple[str, int], ...] = ()
    #: How the counterpart was found (for the report).
    how: str = "same shape"


class FunctionShape(Protocol):
    """Two versions of a function that a frame can move between (see ``match_shapes``)."""

    def resume(self, old_pc: int) -> Resume | str:
        """Where a frame at ``old_pc`` continues, or why it cannot move."""
        ...


#: Whether two referenced addresses mean the same thing (the same function, an
#: equal constant of that many bytes; 0 bytes: a string at that address).
Equivalent = Callable[[int, int, int], bool]


@dataclass(frozen=True)
class Arch:
    """Everything ISA-specific the linker and patcher use."""

    name: str
    elf_machine: int
    #: Memory protection granularity: code and data of a new block are kept on
    #: separate pages so code can be mapped read+execute and data read+write.
    page_size: int
    relocations: Mapping[int, RelocationType]
    #: Names of the relocation types relive knows but does not support.
    unsupported_relocations: Mapping[int, str]
    #: Bytes of the short entry jump (reach: ``jump_reach`` either way).
    entry_jump_size: int
    jump_reach: int
    encode_entry_jump: Callable[[int, int], bytes]
    #: The target of an entry jump at an address, from its bytes (None: not one).
    decode_entry_jump: Callable[[int, bytes], int | None]
    #: A stub that jumps anywhere, clobbering no argument register.
    far_stub_size: int
    encode_far_stub: Callable[[int, int], bytes]
    #: How many leading bytes of a function to keep (a landing pad such as endbr64).
    find_landing_pad_size: Callable[[bytes], int]
    #: Code addresses that branches inside ``code`` (at ``address``) target.
    branch_targets: Callable[[bytes, int], frozenset[int]]
    #: Whether a direct branch inside ``code`` (at ``address``) lands strictly
    #: between ``low`` and ``high`` (cheap unless one may).
    branches_into: Callable[[bytes, int, int, int], bool]
    #: Addresses of direct calls/jumps in ``code`` (at an address) to a target.
    find_direct_branches_to: Callable[[bytes, int, int], list[int]]
    #: The instructions of ``code`` at an address, up to the first undecodable one.
    decode_instructions: Callable[[bytes, int], list[Instruction]]
    #: For a PLT entry's bytes at ``address``: the GOT slot it jumps through, or None.
    find_plt_slot: Callable[[bytes, int], int | None]
    #: Restore a GOT load the static linker relaxed in ``old`` (see x86_64.disasm);
    #: True if it was one, and its field is then a direct PC-relative reference.
    undo_got_relaxation: Callable[[bytes, bytearray, int], bool]
    #: Addresses of direct calls and tail jumps in ``code`` (at ``address``) to ``target``.
    find_direct_calls: Callable[[bytes, int, int], list[int]]
    #: Whether code bytes ending just before an address end with a call.
    follows_call: Callable[[bytes], bool]
    #: Whether the PC-relative field at an offset of code is a direct call/jump's
    #: operand (as opposed to an address being taken).
    is_branch_field: Callable[[bytes, int], bool]
    #: The dynamic relocation type that stores load bias + addend (a pointer in a PIE).
    relative_reloc_type: int
    #: The dynamic relocation type that stores a symbol's address + addend (a pointer
    #: in data to another module's symbol, or to a library's own exported one).
    absolute_reloc_type: int
    #: The dynamic relocation type that stores a TLS module id.
    dtpmod_reloc_type: int
    #: The dynamic relocation type that stores a thread-pointer offset.
    tpoff_reloc_type: int
    #: How far below the thread pointer the executable's static TLS block starts,
    #: from its PT_TLS (memsz, align, vaddr): the TLS ABI variant's formula.
    executable_tls_offset: Callable[[int, int, int], int]
    #: Registers and syscall conventions, for the process layer (host ISA only).
    registers: Registers
    #: Compiler flags (per family) that make code reach external data through the
    #: GOT, for programs that do not copy library variables into the executable.
    indirect_extern_data_flags: Mapping[str, tuple[str, ...]]
    #: General registers in DWARF numbering (index = number), then the return column.
    dwarf_registers: tuple[str, ...] = ()
    #: Registers a callee preserves: a frame that called out still owns them.
    callee_saved: tuple[str, ...] = ()
    #: ``(old code, old address, new code, new address, equivalent)``: the map
    #: between two versions of a function with the same shape, or why there is none.
    match_shapes: Callable[[bytes, int, bytes, int, Equivalent], FunctionShape | str] | None = None
    #: ``(old code, old address, new code, new address, equivalent)``: each call of
    #: the old code with its counterpart and what the new code needs of the frame
    #: after it (``CallSite`` objects), or why there are none.
    match_call_sites: Callable[[bytes, int, bytes, int, Equivalent], list[Any] | str] | None = None
    #: Whether a held thread's registers say it is inside a system call.
    in_syscall: Callable[[RegisterBlock], bool] | None = None
    #: ``(code, address)``: ``(field offset, address computed)`` of each instruction
    #: that may compute a PC-relative address without being a branch, found by its
    #: encoding (a superset); None: unknown, so any loaded code may take its own address.
    find_address_loads: Callable[[bytes, int], list[tuple[int, int]]] | None = None
    #: Import what the code analysis needs (the disassembler) ahead of its first use:
    #: a reload runs it in a thread while the compiler runs (None: nothing to load).
    preload: Callable[[], None] | None = None


def fits(value: int, width: int, kind: Range) -> bool:
    """Whether ``value`` can be stored in a ``width``-byte field of the given kind."""
    bits = width * 8
    if kind is Range.SIGNED:
        return -(1 << (bits - 1)) <= value < (1 << (bits - 1))
    if kind is Range.UNSIGNED:
        return 0 <= value < (1 << bits)
    return -(1 << (bits - 1)) <= value < (1 << bits)

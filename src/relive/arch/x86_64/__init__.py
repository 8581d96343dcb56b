"""The x86-64 instruction set: relocations, entry jumps, stubs, disassembly."""

from __future__ import annotations

import functools

from relive.arch.base import Arch, Registers
from relive.arch.x86_64 import registers, sigframe
from relive.arch.x86_64.callsites import find_direct_branches_to
from relive.arch.x86_64.decode import decode_instructions
from relive.arch.x86_64.disasm import (
    branch_targets,
    branches_into,
    find_address_loads,
    follows_call,
    is_branch_field,
    undo_got_relaxation,
)
from relive.arch.x86_64.relocations import RELOCATIONS, UNSUPPORTED_NAMES
from relive.arch.x86_64.shapes import (
    CALLEE_SAVED,
    DWARF_REGISTERS,
    in_syscall,
    load_disassembler,
    match_call_sites,
    match_shapes,
)
from relive.arch.x86_64.tls import executable_tls_offset
from relive.arch.x86_64.trampoline import (
    FAR_STUB_SIZE,
    JMP_REL32_SIZE,
    REL32_REACH,
    decode_jmp_rel32,
    encode_far_stub,
    encode_jmp_rel32,
    find_direct_calls,
    find_landing_pad_size,
    find_plt_slot,
)
from relive.elf.constants import (
    EM_X86_64,
    PAGE_SIZE,
    R_X86_64_64,
    R_X86_64_DTPMOD64,
    R_X86_64_RELATIVE,
    R_X86_64_TPOFF64,
)

ARCH = Arch(
    name="x86-64",
    elf_machine=EM_X86_64,
    page_size=PAGE_SIZE,
    relocations=RELOCATIONS,
    unsupported_relocations=UNSUPPORTED_NAMES,
    entry_jump_size=JMP_REL32_SIZE,
    jump_reach=REL32_REACH,
    encode_entry_jump=encode_jmp_rel32,
    decode_entry_jump=decode_jmp_rel32,
    far_stub_size=FAR_STUB_SIZE,
    encode_far_stub=encode_far_stub,
    find_landing_pad_size=find_landing_pad_size,
    branch_targets=branch_targets,
    branches_into=branches_into,
    find_direct_branches_to=find_direct_branches_to,
    decode_instructions=decode_instructions,
    find_plt_slot=find_plt_slot,
    undo_got_relaxation=undo_got_relaxation,
    find_direct_calls=find_direct_calls,
    follows_call=follows_call,
    is_branch_field=is_branch_field,
    relative_reloc_type=R_X86_64_RELATIVE,
    absolute_reloc_type=R_X86_64_64,
    dtpmod_reloc_type=R_X86_64_DTPMOD64,
    tpoff_reloc_type=R_X86_64_TPOFF64,
    executable_tls_offset=executable_tls_offset,
    registers=Registers(
        new_block=registers.UserRegs,
        get_pc=registers.get_pc,
        set_pc=registers.set_pc,
        get_sp=registers.get_sp,
        set_sp=registers.set_sp,
        prepare_syscall=registers.prepare_syscall,
        syscall_result=registers.syscall_result,
        is_syscall_error=registers.is_syscall_error,
        syscall_name=registers.syscall_name,
        cancel_syscall=registers.cancel_syscall,
        make_interrupted_syscall_restart=registers.make_interrupted_syscall_restart,
        prepare_call=registers.prepare_call,
        call_result_at_syscall_entry=functools.partial(
            registers.call_result, from_syscall_entry=True
        ),
        mmap=registers.MMAP,
        mprotect=registers.MPROTECT,
        munmap=registers.MUNMAP,
        syscall_ret=sigframe.SYSCALL_RET,
        sigreturn=sigframe.SIGRETURN,
        syscall_insn_size=registers.SYSCALL_INSN_SIZE,
        frame_size=sigframe.frame_size,
        frame_address=sigframe.frame_address,
        build_frame=sigframe.build_frame,
        red_zone=sigframe.RED_ZONE,
        epoll_wait_call=registers.epoll_wait_call,
        epoll_wait_of=registers.epoll_wait_of,
        set_epoll_timeout=registers.set_epoll_timeout,
    ),
    indirect_extern_data_flags={
        "gcc": ("-mno-direct-extern-access",),
        "clang": ("-fno-direct-access-external-data",),
    },
    dwarf_registers=DWARF_REGISTERS,
    callee_saved=CALLEE_SAVED,
    match_shapes=match_shapes,
    match_call_sites=match_call_sites,
    preload=load_disassembler,
    in_syscall=in_syscall,
    find_address_loads=find_address_loads,
)

"""ELF numbers, each defined once: header fields, section and symbol attributes,
program headers, dynamic tags, the dynamic relocation types the symbol resolver
reads, and the page size mappings are made of.

Instruction relocations (and their formulas) belong to ``relive.arch.<isa>``;
the dynamic relocation numbers are here because reading a linked image's
``.rela.dyn`` needs them, for any machine listed in :data:`DYN_RELOC_KINDS`.
"""

from __future__ import annotations

# e_type
ET_REL = 1
ET_EXEC = 2
ET_DYN = 3
ET_CORE = 4

# e_machine
EM_386 = 3
EM_ARM = 40
EM_X86_64 = 62
EM_AARCH64 = 183
EM_RISCV = 243

# sh_type
SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_RELA = 4
SHT_HASH = 5
SHT_DYNAMIC = 6
SHT_NOTE = 7
SHT_NOBITS = 8
SHT_REL = 9
SHT_DYNSYM = 11
SHT_INIT_ARRAY = 14
SHT_FINI_ARRAY = 15
SHT_PREINIT_ARRAY = 16
SHT_GROUP = 17
SHT_SYMTAB_SHNDX = 18
SHT_GNU_HASH = 0x6FFFFFF6
SHT_GNU_VERSYM = 0x6FFFFFFF

# sh_flags
SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHF_MERGE = 0x10
SHF_STRINGS = 0x20
SHF_INFO_LINK = 0x40
SHF_GROUP = 0x200
SHF_TLS = 0x400

# Special section indices
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
SHN_XINDEX = 0xFFFF

# Symbol types (low nibble of st_info)
STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
STT_FILE = 4
STT_COMMON = 5
STT_TLS = 6
STT_GNU_IFUNC = 10

# Symbol bindings (high nibble of st_info)
STB_LOCAL = 0
STB_GLOBAL = 1
STB_WEAK = 2
STB_GNU_UNIQUE = 10

# Symbol visibility (low two bits of st_other)
STV_DEFAULT = 0
STV_INTERNAL = 1
STV_HIDDEN = 2
STV_PROTECTED = 3

# p_type
PT_LOAD = 1
PT_DYNAMIC = 2
PT_NOTE = 4
PT_TLS = 7
PT_GNU_RELRO = 0x6474E552

# n_type of a note named "GNU"
NT_GNU_BUILD_ID = 3

# d_tag
DT_NULL = 0
DT_STRTAB = 5
DT_STRSZ = 10
DT_SONAME = 14

# Dynamic relocation types (what the dynamic linker writes into a linked image).
R_X86_64_64 = 1  # symbol + addend: a pointer to a symbol (a library's own exports too)
R_X86_64_GLOB_DAT = 6
R_X86_64_JUMP_SLOT = 7
R_X86_64_RELATIVE = 8
R_X86_64_DTPMOD64 = 16
R_X86_64_DTPOFF64 = 17
R_X86_64_TPOFF64 = 18
R_X86_64_IRELATIVE = 37

R_AARCH64_GLOB_DAT = 1025
R_AARCH64_JUMP_SLOT = 1026
R_AARCH64_TLS_DTPMOD64 = 1028
R_AARCH64_TLS_TPREL64 = 1030
R_AARCH64_IRELATIVE = 1032

#: Which relocation numbers mean what, per machine: lookups in linked images are
#: written in these terms so they work for any architecture listed here.
DYN_RELOC_KINDS: dict[int, dict[str, int]] = {
    EM_X86_64: {
        "GLOB_DAT": R_X86_64_GLOB_DAT,
        "JUMP_SLOT": R_X86_64_JUMP_SLOT,
        "IRELATIVE": R_X86_64_IRELATIVE,
        "TPOFF64": R_X86_64_TPOFF64,
        "DTPMOD64": R_X86_64_DTPMOD64,
    },
    EM_AARCH64: {
        "GLOB_DAT": R_AARCH64_GLOB_DAT,
        "JUMP_SLOT": R_AARCH64_JUMP_SLOT,
        "IRELATIVE": R_AARCH64_IRELATIVE,
        "TPOFF64": R_AARCH64_TLS_TPREL64,
        "DTPMOD64": R_AARCH64_TLS_DTPMOD64,
    },
}

#: Mappings are page granular; relive's targets use 4 KiB pages.
PAGE_SIZE = 0x1000

_MACHINE_NAMES = {
    EM_386: "i386",
    EM_ARM: "ARM",
    EM_X86_64: "x86-64",
    EM_AARCH64: "AArch64",
    EM_RISCV: "RISC-V",
}


def machine_name(machine: int) -> str:
    """A human name for an ``e_machine`` value, for messages."""
    return _MACHINE_NAMES.get(machine, f"machine {machine}")

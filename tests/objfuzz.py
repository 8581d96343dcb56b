"""Corrupt relocatable objects, and what relive does with them in a live process.

Variants of one good object (byte flips, truncations, and corruptions aimed at
the fields relive reads: section headers, symbols, relocations) are reloaded
into one running target, in-process.  Every variant must be either refused with
a ReliveError, leaving the target's code and memory map exactly as they were,
or reloaded correctly (the target keeps running, undo restores its code).

The reloaded unit's functions are never called by the target, so a variant
that is a valid object with different code cannot crash it: any harm is
relive's.  ``python tests/objfuzz.py`` prints the figures.
"""

from __future__ import annotations

import collections
import os
import random
import struct
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import relive
from relive.errors import ReliveError
from relive.patch.journal import journal_path
from relive.process.procfs import get_start_time

MAIN = r"""
#include <stdio.h>
#include <unistd.h>
int helper(int x);
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned n = 0;; n++) { printf("tick %u\n", n); usleep(5000); }
    return helper(0);
}
"""

#: Never called by the target (main's call is after an endless loop).
LIB = r"""
#include <stdio.h>
#include <string.h>
int table[4] = {1, 2, 3, 4};
static int calls;
static const char *names[] = {"zero", "one", "two"};
static __attribute__((noinline)) int twice(int x) { return 2 * x + calls; }
int helper(int x) {
    calls++;
    return twice(x) + table[x & 3] + (int)strlen(names[x % 3]);
}
int other(int x) {
    static int seen;
    seen += x;
    printf("other %d %s\n", seen, names[0]);
    return helper(seen);
}
"""

#: The edit that makes the good variant redirect ``helper``.
EDIT = ("return twice(x) +", "return twice(x) - ")

_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")


@dataclass(frozen=True)
class Variant:
    """One corrupted object; ``invalid`` when the corruption makes a field impossible."""

    label: str
    data: bytes
    invalid: bool


@dataclass
class Report:
    """What the variants did."""

    accepted: int = 0
    refused: int = 0
    refusal_codes: collections.Counter[int] = field(default_factory=collections.Counter)
    #: Python exceptions that were not ReliveErrors (label, last traceback line).
    tracebacks: list[tuple[str, str]] = field(default_factory=list)
    #: Impossible objects that were reloaded anyway.
    accepted_invalid: list[str] = field(default_factory=list)
    #: Variants after which the target was not as before (died, code or map changed).
    harmed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.accepted + self.refused + len(self.tracebacks)} variants: "
            f"{self.accepted} reloaded, {self.refused} refused "
            f"({dict(sorted(self.refusal_codes.items()))}), "
            f"{len(self.tracebacks)} tracebacks, {len(self.accepted_invalid)} accepted "
            f"impossible objects, {len(self.harmed)} harmed the target"
        )


# --- the object's layout -------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    shoff: int
    shnum: int
    sections: list[tuple[int, ...]]  # raw Elf64_Shdr fields

    def of_type(self, sh_type: int) -> list[int]:
        return [i for i, s in enumerate(self.sections) if s[1] == sh_type]

    def header_offset(self, index: int) -> int:
        return self.shoff + index * _SHDR.size

    def entries(self, index: int, size: int) -> Iterator[int]:
        _, _, _, _, offset, length, *_ = self.sections[index]
        return iter(range(offset, offset + length - size + 1, size))


def _layout(data: bytes) -> _Layout:
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    (shnum,) = struct.unpack_from("<H", data, 0x3C)
    sections = [_SHDR.unpack_from(data, shoff + i * _SHDR.size) for i in range(shnum)]
    return _Layout(shoff, shnum, sections)


_SHT_SYMTAB, _SHT_RELA, _SHT_NOBITS = 2, 4, 8
_SHF_ALLOC, _SHF_MERGE = 2, 0x10


# --- variants ----------------------------------------------------------------------


def make_variants(good: bytes, seed: int, count: int) -> list[Variant]:
    """``count`` variants of ``good``: a third byte flips, a tenth truncations,
    the rest field-targeted corruptions."""
    rng = random.Random(seed)
    layout = _layout(good)
    flips = count // 3
    cuts = count // 10
    out = [_flip(good, layout, rng, i) for i in range(flips)]
    out += [_truncate(good, rng) for _ in range(cuts)]
    targeted = [_section_field, _symbol_field, _relocation_field, _header_field]
    while len(out) < count:
        out.append(rng.choice(targeted)(good, layout, rng))
    return out


def _put(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def _flip(good: bytes, layout: _Layout, rng: random.Random, i: int) -> Variant:
    """Flip bytes: every other variant anywhere, the rest inside the tables relive reads."""
    out = bytearray(good)
    if i % 2:
        where = rng.randrange(len(good))
    else:
        tables = [layout.shoff + rng.randrange(layout.shnum * _SHDR.size)]
        for index in layout.of_type(_SHT_SYMTAB) + _alloc_relas(layout):
            _, _, _, _, offset, size, *_ = layout.sections[index]
            tables.append(offset + rng.randrange(max(size, 1)))
        where = rng.choice(tables)
    for _ in range(rng.choice((1, 1, 2, 4))):
        out[min(where, len(out) - 1)] ^= rng.randrange(1, 256)
        where += rng.randrange(1, 8)
    return Variant(f"flip@{where:#x}", bytes(out), invalid=False)


def _alloc_relas(layout: _Layout) -> list[int]:
    return [
        i
        for i in layout.of_type(_SHT_RELA)
        if layout.sections[i][7] < layout.shnum and layout.sections[layout.sections[i][7]][2] & 2
    ]


def _truncate(good: bytes, rng: random.Random) -> Variant:
    at = rng.randrange(1, len(good))
    return Variant(f"truncated@{at}", good[:at], invalid=True)


_SECTION_FIELDS = {
    # name: (offset in Elf64_Shdr, format, impossible values)
    "sh_addralign": (48, "<Q", [3, 12, 68719476737, 1 << 63, 1 << 40]),
    "sh_offset": (24, "<Q", [1 << 62, 0xFFFFFFFFFFFFFFF0]),
    "sh_size": (32, "<Q", [1 << 40, 1 << 62, 0xFFFFFFFFFFFFFFFF]),
    "sh_link": (40, "<I", [0xFFFF, 0x7FFFFFFF]),
    "sh_info": (44, "<I", [0xFFFF, 0x7FFFFFFF]),
    "sh_entsize": (56, "<Q", [0, 7, 1 << 40]),
}


def _section_field(good: bytes, layout: _Layout, rng: random.Random) -> Variant:
    index = rng.choice([*layout.of_type(_SHT_SYMTAB), *_alloc_relas(layout), *_alloc(layout)])
    name = rng.choice(list(_SECTION_FIELDS))
    offset, fmt, values = _SECTION_FIELDS[name]
    value = rng.choice(values)
    sh_type, flags = layout.sections[index][1], layout.sections[index][2]
    # Only impossible where the field means something: link and entsize of the
    # tables, info of a relocation table (a symbol table's is unused), the offset
    # of a section with contents (.bss has none).
    invalid = {
        "sh_link": sh_type in (_SHT_SYMTAB, _SHT_RELA),
        "sh_entsize": sh_type in (_SHT_SYMTAB, _SHT_RELA) or bool(flags & _SHF_MERGE),
        "sh_info": sh_type == _SHT_RELA,
        "sh_offset": sh_type != _SHT_NOBITS,
    }.get(name, True)
    data = _put(good, layout.header_offset(index) + offset, fmt, value)
    return Variant(f"section {index} {name}={value:#x}", data, invalid)


def _alloc(layout: _Layout) -> list[int]:
    return [i for i, s in enumerate(layout.sections) if s[2] & _SHF_ALLOC and s[5]]


def _symbol_field(good: bytes, layout: _Layout, rng: random.Random) -> Variant:
    [symtab] = layout.of_type(_SHT_SYMTAB)
    entry = rng.choice(list(layout.entries(symtab, _SYM.size))[1:])
    _, info, _, shndx, _, _ = _SYM.unpack_from(good, entry)
    # Value and size mean something for a symbol defined in a section.
    placed = 0 < shndx < layout.shnum and info & 0xF not in (3, 4)
    choice = rng.randrange(5)
    if choice == 0:
        value = rng.choice([layout.shnum, layout.shnum + 7, 0xFF00, 0xFF20, 0xFFFF])
        return Variant(f"st_shndx={value:#x}", _put(good, entry + 6, "<H", value), True)
    if choice == 1:
        value = rng.choice([1 << 40, 0xFFFFFFFFFFFFFFF0])
        return Variant(f"st_value={value:#x}", _put(good, entry + 8, "<Q", value), placed)
    if choice == 2:
        value = rng.choice([1 << 40, 0xFFFFFFFFFFFFFFF0])
        return Variant(f"st_size={value:#x}", _put(good, entry + 16, "<Q", value), placed)
    if choice == 3:
        value = rng.choice([0x7FFFFFFF, 0xFFFFFFFF])
        return Variant(f"st_name={value:#x}", _put(good, entry, "<I", value), False)
    value = rng.randrange(256)
    return Variant(f"st_info={value:#x}", _put(good, entry + 4, "<B", value), False)


def _relocation_field(good: bytes, layout: _Layout, rng: random.Random) -> Variant:
    rela = rng.choice(_alloc_relas(layout))
    entry = rng.choice(list(layout.entries(rela, _RELA.size)))
    _, info, _ = _RELA.unpack_from(good, entry)
    target_size = layout.sections[layout.sections[rela][7]][5]
    choice = rng.randrange(4)
    if choice == 0:
        value = rng.choice([target_size, target_size + 2, 1 << 40, 0xFFFFFFFFFFFFFFFF])
        return Variant(f"r_offset={value:#x}", _put(good, entry, "<Q", value), True)
    if choice == 1:
        symbol = rng.choice([0xFFFFFF, 0x7FFFFFFF, 1 << 20])
        value = (symbol << 32) | (info & 0xFFFFFFFF)
        return Variant(f"r_info sym={symbol:#x}", _put(good, entry + 8, "<Q", value), True)
    if choice == 2:
        rtype = rng.randrange(64)
        value = (info & ~0xFFFFFFFF) | rtype
        return Variant(f"r_info type={rtype}", _put(good, entry + 8, "<Q", value), False)
    addend = rng.choice([1 << 40, -(1 << 40), 1 << 62])
    return Variant(f"r_addend={addend:#x}", _put(good, entry + 16, "<q", addend), False)


def _header_field(good: bytes, layout: _Layout, rng: random.Random) -> Variant:
    name, offset, fmt, value = rng.choice(
        [
            ("e_shoff", 0x28, "<Q", len(good) - 8),
            ("e_shoff", 0x28, "<Q", 1 << 62),
            ("e_shnum", 0x3C, "<H", layout.shnum + 40),
            ("e_shnum", 0x3C, "<H", 0xFFFF),
            ("e_shstrndx", 0x3E, "<H", layout.shnum + 3),
            ("e_shstrndx", 0x3E, "<H", 0xFFFF),
            ("e_shentsize", 0x3A, "<H", 32),
        ]
    )
    return Variant(f"{name}={value:#x}", _put(good, offset, fmt, value), True)


# --- running them ------------------------------------------------------------------


def _code_and_maps(pid: int) -> tuple[str, bytes]:
    """The memory map, and the bytes of every executable file mapping of the program."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    code = []
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps.splitlines():
            fields = line.split()
            if "x" in fields[1] and len(fields) > 5 and fields[5].startswith("/"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                mem.seek(start)
                code.append(mem.read(end - start))
    return maps, b"".join(code)


def _running(pid: int) -> bool:
    """Alive, and neither stopped nor traced (what a refusal may leave behind)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] in "RSD"


def run_variants(
    pid: int,
    variants: list[Variant],
    path: Path,
    still_running: Callable[[], bool],
) -> Report:
    """Reload each variant from ``path`` into ``pid`` and judge what happened.

    ``still_running()`` says whether the target still runs and prints (it waits
    for a fresh output line).
    """
    report = Report()
    journal = journal_path(pid, get_start_time(pid))
    for variant in variants:
        before_maps, before_code = _code_and_maps(pid)
        path.write_bytes(variant.data)
        try:
            relive.attach(pid).reload([path])
        except ReliveError as error:
            report.refused += 1
            report.refusal_codes[error.exit_code] += 1
            if _code_and_maps(pid) != (before_maps, before_code) or not _running(pid):
                report.harmed.append(f"{variant.label}: refused ({error}) but changed the target")
            continue
        except Exception as error:  # noqa: BLE001 - what this harness exists to find
            last = traceback.format_exception(error)[-1].strip()
            report.tracebacks.append((variant.label, last))
            continue
        report.accepted += 1
        if variant.invalid:
            report.accepted_invalid.append(variant.label)
        if not still_running():
            report.harmed.append(f"{variant.label}: the target stopped after the reload")
            break
        try:
            relive.attach(pid).undo()
        except ReliveError as error:
            report.harmed.append(f"{variant.label}: undo failed: {error}")
        if _code_and_maps(pid)[1] != before_code:
            report.harmed.append(f"{variant.label}: undo did not restore the code")
        journal.unlink(missing_ok=True)  # every variant starts from a fresh journal
    return report


def build(folder: Path) -> tuple[Path, bytes]:
    """Build the target program and the good (edited) object of its lib.c."""
    import subprocess

    (folder / "main.c").write_text(MAIN)
    (folder / "lib.c").write_text(LIB)
    exe = folder / "prog"
    subprocess.run(["gcc", "-g", "-O1", "-o", str(exe), "main.c", "lib.c"], cwd=folder, check=True)
    (folder / "lib.c").write_text(LIB.replace(*EDIT))
    subprocess.run(
        ["gcc", "-g", "-O1", "-ffunction-sections", "-fdata-sections", "-c", "lib.c"],
        cwd=folder,
        check=True,
    )
    return exe, (folder / "lib.o").read_bytes()


def main() -> None:
    """Run the fuzzer on a fresh target and print its figures (for the record)."""
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from support import Target

    seeds = [int(s) for s in sys.argv[1:]] or [9]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["RELIVE_STATE_DIR"] = str(folder / "state")
        exe, good = build(folder)
        target = Target.start([exe])
        try:
            target.wait_for(r"^tick 1$")

            def still_running() -> bool:
                try:
                    target.wait_for(r"^tick \d+$", timeout=2, after=target.mark())
                    return True
                except AssertionError:
                    return False

            for seed in seeds:
                variants = make_variants(good, seed, 300)
                report = run_variants(target.pid, variants, folder / "lib.o", still_running)
                print(f"seed {seed}: {report.summary()}")
                for label, line in report.tracebacks:
                    print(f"  traceback {label}: {line}")
                for label in report.accepted_invalid:
                    print(f"  accepted impossible: {label}")
                for line in report.harmed:
                    print(f"  harmed: {line}")
        finally:
            target.stop()


if __name__ == "__main__":
    main()

"""The fast paths behind reload latency and stall agree with the slow, obvious ones.

* ``ElfImage`` answers a few lookups by searching the raw tables; the answers must
  be those of the fully decoded table (versions, weak symbols, shared string tails).
* ``relive.elf.dwarf`` reads compile units itself; pyelftools is the oracle.
* ``stop_one`` holds one idle thread for a remote system call while the others run.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import time
from pathlib import Path

import pytest

from relive.elf import dwarf, symtab
from relive.elf.image import ElfImage
from relive.process import procfs, remote
from relive.process.memory import ProcessMemory
from relive.process.remote import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from relive.process.threads import pick_idle_thread, stop_one
from support import SpawnFactory, compile_c, need_program, wait_until

# Names that are tails of other names (a linker may share the string), a weak and a
# global definition, a copy-relocated libc variable (stdout@GLIBC_2.2.5) and statics.
SYMBOLS_C = """
#include <stdio.h>
int handler(int x) { return x + 1; }
int my_handler(int x) { return x + 2; }
int the_my_handler(int x) { return x + 3; }
__attribute__((weak)) int weakling(int x) { return x * 2; }
static int hidden_one(int x) { return x * 3; }
int caf\u00e9_handler(int x) { return x - 1; }  /* a non-ASCII name in the string table */
int call_hidden(int x) { return hidden_one(x); }
int main(void) { fputs("hi", stdout); return handler(1) + my_handler(2) + weakling(3); }
"""


def _many_functions(count: int) -> str:
    return "".join(f"int gen_{i:05d}_fn(int x) {{ return x + {i}; }}\n" for i in range(count))


def _astuple(symbol: object) -> tuple[object, ...] | None:
    return None if symbol is None else tuple(symbol)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def symbols_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("symbols")
    return compile_c(tmp, SYMBOLS_C, name="symbols", extra_sources={"gen.c": _many_functions(5000)})


def test_direct_lookups_agree_with_the_decoded_table(
    symbols_exe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [
        "handler", "my_handler", "the_my_handler", "weakling", "hidden_one", "call_hidden",
        "main", "stdout", "puts", "fputs", "gen_00042_fn", "gen_04999_fn", "andler", "",
        "no_such_symbol", "stdout@GLIBC_2.2.5", "_start", "gen_", "caf\u00e9_handler",
    ]  # fmt: skip
    ElfImage.clear_cache()
    decoded = ElfImage.open(symbols_exe)
    decoded._table().globals()  # every later lookup goes through the decoded dict
    expected = {n: _astuple(decoded.find_global(n)) for n in names}
    assert expected["handler"] is not None and expected["stdout"] is not None
    assert expected["hidden_one"] is None and expected["andler"] is None
    assert expected["caf\u00e9_handler"] is not None

    monkeypatch.setattr(symtab, "_SMALL_TABLE", 0)
    for name in names:  # a fresh table per name: each one takes the direct path
        ElfImage.clear_cache()
        direct = ElfImage.open(symbols_exe)
        assert _astuple(direct.find_global(name)) == expected[name], name
        # "", a versioned name and a prefix of 5,000 names are answered by decoding.
        decoded_whole = name in ("", "gen_", "stdout@GLIBC_2.2.5", "caf\u00e9_handler")
        assert (direct._table()._globals is not None) == decoded_whole, name


def test_direct_successor_search_agrees_with_the_sorted_starts(
    symbols_exe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ElfImage.clear_cache()
    image = ElfImage.open(symbols_exe)
    functions = [s for s in image.iter_functions()]
    expected = {s.value: image.find_next_symbol_address(s.value) for s in functions}
    assert image._table()._starts is not None  # the sorted path answered those

    monkeypatch.setattr(symtab, "_DIRECT_NEXT_QUERIES", 1 << 30)
    ElfImage.clear_cache()
    direct = ElfImage.open(symbols_exe)
    for vaddr, following in expected.items():
        assert direct.find_next_symbol_address(vaddr) == following, hex(vaddr)
    assert direct._table()._starts is None


@pytest.mark.parametrize(
    "flags",
    [
        ("-gdwarf-4",),
        ("-gdwarf-5",),
        ("-gdwarf-5", "-gz=zlib"),
        ("-gdwarf-4", "-gdwarf64"),
        ("-gdwarf-5", "-gsplit-dwarf"),
    ],
    ids=lambda flags: " ".join(flags),
)
@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_compile_units_match_pyelftools(
    tmp_path: Path, compiler: str, flags: tuple[str, ...]
) -> None:
    elffile = pytest.importorskip("elftools.elf.elffile")
    need_program(compiler)
    (tmp_path / "a.c").write_text("int helper(int);\nint main(void) { return helper(1); }\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/b.c").write_text("int helper(int x) { return x * 2; }\n")
    files = []
    for source in ("a.c", "sub/b.c"):
        obj = tmp_path / (Path(source).stem + ".o")
        cmd = [compiler, "-g", *flags, "-O1", "-c", source, "-o", str(obj)]
        if subprocess.run(cmd, cwd=tmp_path, capture_output=True).returncode != 0:
            pytest.skip(f"{compiler} does not take {' '.join(flags)}")
        files.append(obj)
    exe = tmp_path / "prog"
    subprocess.run([compiler, *flags, "-o", str(exe), *map(str, files)], cwd=tmp_path, check=True)
    for path in [exe, *files]:
        with open(path, "rb") as f:
            oracle = []
            info = elffile.ELFFile(f).get_dwarf_info()
            for cu in info.iter_CUs():
                top = cu.get_top_DIE()
                if top.tag not in ("DW_TAG_compile_unit", "DW_TAG_skeleton_unit"):
                    continue
                attrs = top.attributes
                if "DW_AT_name" not in attrs:
                    continue

                def text(name: str, attrs: dict[str, object] = attrs) -> str | None:
                    attr = attrs.get(name)
                    value = getattr(attr, "value", None)
                    return value.decode() if isinstance(value, bytes) else None

                language = attrs.get("DW_AT_language")
                oracle.append(
                    dwarf.CompileUnit(
                        text("DW_AT_name") or "",
                        text("DW_AT_comp_dir"),
                        text("DW_AT_producer"),
                        getattr(language, "value", None),
                    )
                )
        assert list(dwarf.iter_compile_units(path)) == oracle, path
        assert oracle or "-gsplit-dwarf" in flags


# -- stop_one -------------------------------------------------------------------------

BUSY_AND_IDLE = r"""
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
static volatile unsigned long spins;
static void *busy(void *arg) { (void)arg; for (;;) spins++; return NULL; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    pthread_t t;
    pthread_create(&t, NULL, busy, NULL);
    printf("spins at %p\n", (void *)&spins);
    char line[64];
    while (fgets(line, sizeof line, stdin)) printf("got %s", line);
    return 0;
}
"""


def test_stop_one_holds_an_idle_thread_while_the_others_run(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = compile_c(tmp_path, BUSY_AND_IDLE, name="busy", link_flags=("-pthread",))
    target = spawn([exe], stdin_pipe=True)
    spins = int(target.wait_for(r"spins at (0x[0-9a-f]+)").group(1), 16)
    deadline = time.monotonic() + 10
    while procfs.find_thread_state(target.pid, target.pid) != "S":  # main blocks in read()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert pick_idle_thread(target.pid) == target.pid

    with stop_one(target.pid) as held, ProcessMemory(target.pid) as memory:
        assert held.tids == (target.pid,)
        tids = list(procfs.iter_thread_ids(target.pid))
        assert len(tids) == 2
        worker = next(t for t in tids if t != target.pid)
        assert procfs.find_thread_state(target.pid, target.pid) == "t"
        assert procfs.find_thread_state(target.pid, worker) in ("R", "S")
        before = int.from_bytes(memory.read(spins, 8), "little")
        prot, flags = PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS
        address = remote.remote_mmap(held, 4096, prot, flags)
        assert procfs.find_mapping(procfs.read_maps(target.pid), address) is not None
        remote.remote_munmap(held, address, 4096)
        # It kept running (on a loaded machine it may wait a while for a core).
        wait_until(
            lambda: int.from_bytes(memory.read(spins, 8), "little") > before,
            what="the worker spinning while one thread is held",
        )

    target.write(b"still reading\n")  # the interrupted read() resumed
    target.wait_for("got still reading")


def test_gadget_cache_notices_a_changed_mapping(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = compile_c(tmp_path, BUSY_AND_IDLE, name="busy", link_flags=("-pthread",))
    target = spawn([exe], stdin_pipe=True)
    target.wait_for("spins at")
    remote._gadget_cache.pop(target.pid, None)
    found = remote.get_gadgets(target.pid)
    assert remote._gadget_cache[target.pid] == found
    for key in found.keys:
        assert re.match(r"[0-9a-f]{8,}-[0-9a-f]{8,} ..x. $", key)
    assert remote.get_gadgets(target.pid) is found  # validated from the cache
    stale = dataclasses.replace(found, keys=("0000dead-0000beef r-xp ", found.keys[1]))
    remote._gadget_cache[target.pid] = stale
    assert remote.get_gadgets(target.pid) == found  # stale key: searched again
    assert remote._gadget_cache[target.pid] == found


# -- batched memory access -------------------------------------------------------------

BUFFER = r"""
#include <stdio.h>
#include <unistd.h>
static unsigned char buffer[3 * 4096] __attribute__((aligned(4096)));
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned i = 0; i < sizeof buffer; i++) buffer[i] = (unsigned char)(i * 7);
    printf("buffer at %p\n", (void *)buffer);
    char line[64];
    while (fgets(line, sizeof line, stdin)) printf("got %s", line);
    return 0;
}
"""


def test_batched_reads_and_prepared_edits(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = compile_c(tmp_path, BUFFER, name="buffer")
    target = spawn([exe], stdin_pipe=True)
    base = int(target.wait_for(r"buffer at (0x[0-9a-f]+)").group(1), 16)
    original = bytes((i * 7) & 0xFF for i in range(3 * 4096))
    # Edits on the first page, one across the first page boundary, some on the third.
    addresses = [base + 16, base + 64, base + 4000, base + 4094, base + 8192 + 5, base + 9000]
    with ProcessMemory(target.pid) as memory:
        ranges = [(a, 5) for a in addresses]
        assert memory.read_many(ranges) == [memory.read(a, n) for a, n in ranges]
        edits = [
            (a, original[a - base : a - base + 5], bytes([0xE9, k, k, k, k]))
            for k, a in enumerate(addresses)
        ]
        prepared = memory.prepare_edits(edits)
        assert prepared.apply(memory) == []
        expected = bytearray(original)
        for a, _, new in edits:
            expected[a - base : a - base + 5] = new
        assert memory.read(base, len(original)) == bytes(expected)

        # Already applied: every edit now mismatches and nothing is written.
        assert prepared.apply(memory) == list(range(len(edits)))

        # A byte between two edits changed after preparing: their page is refused.
        restore = [(a, new, old) for a, old, new in edits]
        prepared = memory.prepare_edits(restore)
        memory.write(base + 40, b"\xff")
        assert prepared.apply(memory) == [0, 1, 2]  # the three edits of the first page
        assert memory.read(base + 16, 5) == edits[0][2]  # untouched
        memory.write(base + 40, original[40:41])
        assert memory.prepare_edits(restore).apply(memory) == []
        assert memory.read(base, len(original)) == original

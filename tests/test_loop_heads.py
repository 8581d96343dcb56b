"""An entry jump over a loop head: refused while a thread is inside the loop (issue 9 §1).

At -O0 ``main``'s loop jumps back to main+4, inside the five bytes an entry
jump replaces; a -O1 worker loop starts right after ``sub $8,%rsp``.  Writing
the jump would crash the thread still looping there.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from relive.arch.x86_64.disasm import branches_into
from support import (
    LOOP_OVER_ENTRY_MAIN,
    LOOP_OVER_ENTRY_WORKER,
    SpawnFactory,
    assert_untouched,
    edit,
    run_cli,
    start_remembered,
)


def test_branch_scan_finds_a_loop_head_inside_the_window() -> None:
    # push %rbp; mov %rsp,%rbp; call .; jmp back to entry+4 (main at -O0)
    code = bytes.fromhex("55 4889e5 e800000000 ebf9".replace(" ", ""))
    assert branches_into(code, 0x1000, 0x1000, 0x1005)
    # The same loop heading to entry+9 leaves the first five bytes alone.
    code = bytes.fromhex("55 4889e5 e800000000 ebfe".replace(" ", ""))
    assert not branches_into(code, 0x1000, 0x1000, 0x1005)
    # A rel32 jcc back to entry+1.
    code = bytes.fromhex("90 90 90 90 90 90 0f84f5ffffff".replace(" ", ""))
    assert branches_into(code, 0x2000, 0x2000, 0x2005)


@pytest.mark.parametrize(
    ("source", "flags", "function"),
    [
        (LOOP_OVER_ENTRY_MAIN, ("-g", "-O0"), "main"),
        (LOOP_OVER_ENTRY_WORKER, ("-g", "-O1", "-pthread"), "worker"),
    ],
    ids=["main-O0", "worker-O1"],
)
def test_running_loop_over_the_entry_is_refused(
    tmp_path: Path,
    spawn: SpawnFactory,
    capsys: pytest.CaptureFixture[str],
    source: str,
    flags: tuple[str, ...],
    function: str,
) -> None:
    target = start_remembered(tmp_path, spawn, source, flags=flags)
    # Change the looping function itself (its usleep), nothing else; without
    # moving its frame (test_frames: moving it is the way out of this refusal).
    edit(tmp_path / "prog.c", "usleep(20000)", "usleep(10000)")
    code, err = run_cli(
        capsys, "reload", "--no-move", "-p", str(target.pid), str(tmp_path / "prog.c")
    )
    assert code == 9, err
    assert f"{function} is running on thread" in err
    assert "loop jumps back into the first bytes" in err
    assert len(err.strip().splitlines()) == 1
    assert_untouched(target)


def _branches_into_by_brute_force(code: bytes, address: int, low: int, high: int) -> bool:
    """Every offset tried as a rel8 or rel32 branch: what the byte scan must never miss."""
    rel8 = {*range(0x70, 0x80), 0xEB, 0xE0, 0xE1, 0xE2, 0xE3}
    for i in range(len(code) - 1):
        if (
            code[i] in rel8
            and low
            < address + i + 2 + int.from_bytes(code[i + 1 : i + 2], "little", signed=True)
            < high
        ):
            return True
        for opcode, size in ((b"\xe9", 5), (b"\x0f", 6)):
            if code[i : i + 1] != opcode or i + size > len(code):
                continue
            if opcode == b"\x0f" and not 0x80 <= code[i + 1] <= 0x8F:
                continue
            rel = int.from_bytes(code[i + size - 4 : i + size], "little", signed=True)
            if low < address + i + size + rel < high:
                return True
    return False


def test_branch_scan_never_misses_a_candidate() -> None:
    from relive.arch.x86_64.disasm import _may_branch_into

    chooser = random.Random(9)
    for _ in range(3000):
        code = bytes(chooser.randrange(256) for _ in range(chooser.randrange(6, 260)))
        low = 0x1000 + chooser.choice((0, 4))
        if _branches_into_by_brute_force(code, 0x1000, low, low + 5):
            assert _may_branch_into(code, 0x1000, low, low + 5), code.hex()


def test_a_refused_reload_copies_no_reinit_value_in(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    target = start_remembered(tmp_path, spawn, LOOP_OVER_ENTRY_MAIN, flags=("-g", "-O0"))
    # main's frame grows, so it can neither move nor let the entry jump be written
    # (refused while the threads are held); table's new initial value must stay out.
    edit(tmp_path / "prog.c", "{1, 2, 3, 4}", "{7, 2, 3, 4}")
    edit(
        tmp_path / "prog.c",
        "usleep(20000);",
        "usleep(20000); char pad[64]; pad[counter % 64] = 1; counter += pad[0];",
    )
    code, err = run_cli(
        capsys, "reload", "--reinit", "table", "-p", str(target.pid), str(tmp_path / "prog.c")
    )
    assert code == 9, err
    assert "loop jumps back into the first bytes" in err
    assert_untouched(target)  # still "value 1"

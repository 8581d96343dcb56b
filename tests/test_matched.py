"""A reload remembers which functions it found equal to the running code
(``patch.matched``); the next reload of the file trusts that instead of reading
and comparing their code again, as long as nothing relive added since could
make a name lead elsewhere.  Results stay what a full comparison gives.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from relive.patch.diff import FunctionComparer
from relive.patch.journal import load_journal
from support import SpawnFactory, compile_c, kinds, reload

PROG = r"""
#include <stdio.h>
#include <unistd.h>
static long calls;
__attribute__((noinline)) int work_a(void) { calls++; return 0; }
__attribute__((noinline)) int work_b(void) { calls++; return 0; }
__attribute__((noinline)) int work_c(void) { calls++; return 0; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) {
        printf("a=%d b=%d c=%d\n", work_a(), work_b(), work_c());
        usleep(20000);
    }
}
"""

EXTRA = r"""
int relive_extra_helper(int x) { return x + 1; }
"""


def _object(tmp_path: Path, name: str, text: str) -> Path:
    source = tmp_path / f"{name}.c"
    source.write_text(text)
    obj = tmp_path / f"{name}.o"
    argv = ["gcc", "-g", "-O2", "-ffunction-sections", "-fdata-sections", "-c"]
    subprocess.run([*argv, "-o", str(obj), str(source)], check=True)
    return obj


def _version(tmp_path: Path, values: dict[str, int]) -> Path:
    """prog.c with some functions returning other values, at the path of the first
    reload (a source's reloads are remembered by path)."""
    text = PROG
    for name, value in values.items():
        text = text.replace(
            f"{name}(void) {{ calls++; return 0; }}", f"{name}(void) {{ calls++; return {value}; }}"
        )
    return _object(tmp_path / "edit", "prog", text)


@pytest.fixture
def compared(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the functions compared with the running code, in order."""
    names: list[str] = []
    original = FunctionComparer.matches_running

    def counting(self: FunctionComparer, symbol, old_address: int, old_size: int) -> bool:  # type: ignore[no-untyped-def]
        names.append(symbol.name)
        return original(self, symbol, old_address, old_size)

    monkeypatch.setattr(FunctionComparer, "matches_running", counting)
    yield names


def test_next_reload_compares_only_what_changed_since(
    tmp_path: Path, spawn: SpawnFactory, compared: list[str]
) -> None:
    (tmp_path / "edit").mkdir()
    target = spawn([compile_c(tmp_path, PROG, flags=("-g", "-O2"))])
    target.wait_for(r"^a=0 b=0 c=0$")

    first = kinds(reload(target.pid, _version(tmp_path, {"work_a": 1})))
    assert first["redirected"] == ["work_a"]
    assert {"work_b", "work_c", "main"} <= set(first["unchanged"])
    assert {"work_a", "work_b", "work_c", "main"} <= set(compared)
    target.wait_for(r"^a=1 b=0 c=0$")
    record = next(iter(load_journal(target.pid).sources.values()))
    assert {"work_b", "work_c", "main"} <= set(record.matched)
    assert "work_a" not in record.matched  # redirected: compared by fingerprint later

    compared.clear()
    second = kinds(reload(target.pid, _version(tmp_path, {"work_a": 1, "work_b": 2})))
    assert second["redirected"] == ["work_b"]
    assert {"work_a", "work_c", "main"} <= set(second["unchanged"])
    # work_b's new code is not what was found equal last time: compared (and changed);
    # work_c and main are; work_a runs code relive loaded (its fingerprint decides).
    assert compared == ["work_b"]
    target.wait_for(r"^a=1 b=2 c=0$")

    compared.clear()
    third = kinds(reload(target.pid, _version(tmp_path, {"work_a": 1, "work_b": 2, "work_c": 3})))
    assert third["redirected"] == ["work_c"]
    assert compared == ["work_c"]
    target.wait_for(r"^a=1 b=2 c=3$")


def test_matches_are_compared_again_after_relive_added_to_the_process(
    tmp_path: Path, spawn: SpawnFactory, compared: list[str]
) -> None:
    (tmp_path / "edit").mkdir()
    target = spawn([compile_c(tmp_path, PROG, flags=("-g", "-O2"))])
    target.wait_for(r"^a=0 b=0 c=0$")
    assert kinds(reload(target.pid, _version(tmp_path, {"work_a": 1})))["redirected"] == ["work_a"]
    target.wait_for(r"^a=1 b=0 c=0$")

    # Another file adds a global function: a name may now lead somewhere new.
    added = kinds(reload(target.pid, _object(tmp_path, "extra", EXTRA), new_file=True))
    assert added["new"] == ["relive_extra_helper"]

    compared.clear()
    again = kinds(reload(target.pid, _version(tmp_path, {"work_a": 1, "work_b": 2})))
    assert again["redirected"] == ["work_b"]
    assert {"work_b", "work_c", "main"} <= set(compared)
    target.wait_for(r"^a=1 b=2 c=0$")

"""Bad input never crashes relive or the target: corrupt objects, FIFOs, devices.

The fuzzer (tests/objfuzz.py) reloads a few hundred corrupted variants of one
object into one running target: each is refused with a ReliveError that leaves
the target's code and memory map exactly as they were, or reloaded correctly.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from objfuzz import build, make_variants, run_variants
from relive.elf.objfile import ObjectFile
from relive.errors import BadObject
from support import SpawnFactory, Target, assert_untouched, run_cli

SEED = 9
VARIANTS = 300


@pytest.fixture
def fuzz_target(
    tmp_path: Path, spawn: SpawnFactory, monkeypatch: pytest.MonkeyPatch
) -> tuple[Target, bytes]:
    monkeypatch.setenv("RELIVE_STATE_DIR", str(tmp_path / "state"))
    exe, good = build(tmp_path)
    target = spawn([exe])
    target.wait_for(r"^tick 1$")
    return target, good


def test_corrupt_objects_are_refused_or_reloaded(
    tmp_path: Path, fuzz_target: tuple[Target, bytes]
) -> None:
    target, good = fuzz_target

    def still_running() -> bool:
        try:
            target.wait_for(r"^tick \d+$", timeout=5, after=target.mark())
        except AssertionError:
            return False
        return True

    variants = make_variants(good, SEED, VARIANTS)
    report = run_variants(target.pid, variants, tmp_path / "lib.o", still_running)
    assert report.tracebacks == []
    assert report.accepted_invalid == []
    assert report.harmed == []
    # Both outcomes happen: the fuzzer reaches the linker, not only the parser.
    assert report.accepted > VARIANTS // 5 and report.refused > VARIANTS // 3
    assert report.refusal_codes[6] > VARIANTS // 3
    assert set(report.refusal_codes) <= {6, 7}


def test_parser_refuses_or_parses_every_flip(tmp_path: Path) -> None:
    """In-process, no target: hundreds of flips of a bigger object parse or raise BadObject."""
    source = "\n".join(
        f"static int s{i}; int f{i}(int x) {{ return x * {i} + s{i}++; }}" for i in range(60)
    )
    (tmp_path / "many.c").write_text(source)
    subprocess.run(
        ["gcc", "-c", "-O1", "-g", "-ffunction-sections", "-fdata-sections", "many.c"],
        cwd=tmp_path,
        check=True,
    )
    good = (tmp_path / "many.o").read_bytes()
    rng = random.Random(SEED)
    refused = 0
    for _ in range(500):
        data = bytearray(good)
        for _ in range(rng.choice((1, 2, 8))):
            data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        try:
            obj = ObjectFile.from_bytes(bytes(data), "many.o")
            for index in obj.relocations:
                list(obj.relocations[index])
        except BadObject:
            refused += 1
    assert refused > 0


@pytest.mark.parametrize("kind", ["fifo.o", "fifo.c", "urandom.o", "folder.c"])
def test_only_regular_files(
    tmp_path: Path, running: Target, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    path = tmp_path / kind
    if kind.startswith("fifo"):
        os.mkfifo(path)
    elif kind.startswith("urandom"):
        path.symlink_to("/dev/urandom")
    else:
        path.mkdir()
    code, err = run_cli(capsys, "reload", "-p", str(running.pid), str(path))
    assert code == 2
    assert f"{path} is not a regular file" in err
    assert_untouched(running)


def test_object_reader_refuses_a_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.o")
    with pytest.raises(BadObject, match="is not a regular file"):
        ObjectFile.open(tmp_path / "pipe.o")

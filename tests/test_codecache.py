"""The command's cache of the code dataclasses and named tuples generate (cli/codecache.py).

The classes made with the cache must be exactly those made without it (same
compiled methods, same behaviour), and the cache file, code that runs, must
never be read from where another user could have written it.
"""

from __future__ import annotations

import collections
import dataclasses
import marshal
import os
import subprocess
import typing
from pathlib import Path
from types import CodeType
from typing import Any, NamedTuple

import pytest

from relive.cli.codecache import cache_name, compiled_once
from support import RELIVE, SpawnFactory, compile_c

NOBODY = 65534


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state"
    monkeypatch.setenv("RELIVE_STATE_DIR", str(path))
    return path


def _classes() -> dict[str, Any]:
    """A frozen dataclass, a plain one, a NamedTuple with string annotations and a
    namedtuple, defined anew at each call."""

    @dataclasses.dataclass(frozen=True)
    class Frozen:
        name: str
        size: int = 4
        tags: tuple[str, ...] = ()

    @dataclasses.dataclass(order=True)
    class Plain:
        address: int
        items: list[int] = dataclasses.field(default_factory=list)

    class Pair(NamedTuple):
        left: int
        right: str

    Point = collections.namedtuple("Point", "x y")
    return {"Frozen": Frozen, "Plain": Plain, "Pair": Pair, "Point": Point}


def _generated_code(classes: dict[str, Any]) -> list[CodeType]:
    frozen, plain, pair = classes["Frozen"], classes["Plain"], classes["Pair"]
    functions = [
        *(getattr(frozen, n) for n in ("__init__", "__repr__", "__eq__", "__hash__")),
        *(getattr(frozen, n) for n in ("__setattr__", "__delattr__")),
        *(getattr(plain, n) for n in ("__init__", "__eq__", "__lt__", "__ge__")),
        classes["Point"].__new__,
    ]
    codes = [f.__code__ for f in functions]
    codes += [ref.__forward_code__ for ref in pair.__annotations__.values()]
    return codes


def _same_code(a: CodeType, b: CodeType) -> bool:
    """Equal as compiled code (marshal covers bytecode, constants, names and flags)."""
    return marshal.dumps(a.replace(co_firstlineno=1)) == marshal.dumps(b.replace(co_firstlineno=1))


def _check_behaviour(classes: dict[str, Any]) -> None:
    frozen = classes["Frozen"]("f")
    assert frozen == classes["Frozen"]("f", 4, ())
    assert hash(frozen) == hash(classes["Frozen"]("f"))
    assert repr(frozen) == "_classes.<locals>.Frozen(name='f', size=4, tags=())"
    with pytest.raises(dataclasses.FrozenInstanceError):
        frozen.size = 5
    a, b = classes["Plain"](1), classes["Plain"](2)
    assert a < b and a.items == [] and a.items is not b.items
    assert classes["Pair"](1, "x") == (1, "x")
    assert classes["Point"](x=1, y=2).y == 2


def test_classes_are_the_same_with_and_without_the_cache(state: Path) -> None:
    plain = _classes()
    with compiled_once() as first:
        compiled = _classes()
    assert first.added > 0
    assert (state / cache_name()).stat().st_mode & 0o777 == 0o600
    with compiled_once() as second:
        cached = _classes()
    assert second.added == 0 and len(second.used) == first.added
    for classes in (plain, compiled, cached):
        _check_behaviour(classes)
    for without, compiled_code, cached_code in zip(
        _generated_code(plain), _generated_code(compiled), _generated_code(cached), strict=True
    ):
        assert _same_code(without, compiled_code)
        assert _same_code(without, cached_code)


def test_the_standard_library_is_left_as_it_was(state: Path) -> None:
    with compiled_once():
        assert "exec" in vars(dataclasses)
    assert "exec" not in vars(dataclasses)
    assert "eval" not in vars(collections)
    assert "compile" not in vars(typing)


def test_a_syntax_error_is_raised_as_without_the_cache(state: Path) -> None:
    with compiled_once() as texts, pytest.raises(SyntaxError):
        typing.ForwardRef("not an expression")
    assert texts.added == 0


def test_a_damaged_file_is_replaced(state: Path) -> None:
    state.mkdir(mode=0o700)
    (state / cache_name()).write_bytes(b"\xe3 not marshal")
    with compiled_once() as texts:
        _check_behaviour(_classes())
    assert texts.added > 0
    assert isinstance(marshal.loads((state / cache_name()).read_bytes()), dict)


def test_an_unsafe_state_directory_is_neither_read_nor_written(state: Path) -> None:
    state.mkdir()
    state.chmod(0o777)
    with compiled_once() as texts:
        _check_behaviour(_classes())
    assert texts.added > 0
    assert list(state.iterdir()) == []


@pytest.mark.needs_root
def test_a_file_another_user_owns_is_not_read(state: Path) -> None:
    with compiled_once():
        _classes()
    planted = state / cache_name()
    os.chown(planted, NOBODY, NOBODY)
    with compiled_once() as texts:
        _check_behaviour(_classes())
    assert texts.added > 0  # nothing taken from the planted file
    assert planted.stat().st_uid == os.geteuid()  # replaced by relive's own


def test_the_command_fills_the_cache_once(tmp_path: Path, state: Path, spawn: SpawnFactory) -> None:
    exe = compile_c(tmp_path, "#include <unistd.h>\nint main(void) { pause(); return 0; }\n")
    target = spawn([exe])
    env = {**os.environ, "RELIVE_STATE_DIR": str(state)}

    def status() -> None:
        done = subprocess.run(
            [*RELIVE, "status", "-p", str(target.pid)], env=env, capture_output=True, check=False
        )
        assert done.returncode == 0, done.stderr

    status()
    cache = state / cache_name()
    written = cache.stat()
    status()
    again = cache.stat()
    assert written.st_size > 0
    assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)

"""The event schema (``--json``): every event kind is unique, and every event survives a
JSON round trip through the CLI's renderer with its fields and their types intact."""

from __future__ import annotations

import enum
import importlib
import io
import json
import pkgutil
import types
import typing
from typing import Any

import pytest

import relive
from relive.cli.render import Renderer
from relive.events import Event


def _all_event_classes() -> list[type[Event]]:
    """Every Event subclass defined anywhere in relive (all modules imported first)."""
    for module in pkgutil.walk_packages(relive.__path__, "relive."):
        if module.name.endswith("__main__"):  # that one runs the CLI
            continue
        try:
            importlib.import_module(module.name)
        except ModuleNotFoundError as missing:
            # A module that runs inside another program (gdb's Python) defines no events.
            if (missing.name or "relive").startswith("relive"):
                raise
    found: list[type[Event]] = []
    pending = list(Event.__subclasses__())
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.__qualname__)


EVENTS = _all_event_classes()


def _sample(hint: Any, name: str) -> Any:
    """A value of type ``hint`` for field ``name`` that is not the type's zero value."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _sample(next(a for a in args if a is not type(None)), name)
    if origin is typing.Literal:
        return args[-1]
    if origin is list:
        return [_sample(args[0], name), _sample(args[0], name + "2")]
    if origin is dict:
        return {str(_sample(args[0], name)): _sample(args[1], name)}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return list(hint)[-1]
    if hint is bool:
        return True
    if hint is int:
        return 4242
    if hint is float:
        return 12.5
    if hint is str:
        return f"{name}-value"
    raise AssertionError(f"no sample for {hint!r} (field {name}): extend _sample")


def _field_hints(cls: type[Event]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {name: hints[name] for name, _ in cls._fields}


def _example(cls: type[Event]) -> Event:
    return cls(**{name: _sample(hint, name) for name, hint in _field_hints(cls).items()})


def _decode(hint: Any, value: Any) -> Any:
    """A JSON value back as the field's type (enums travel as their value or name)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _decode(arms[0], value)
    if origin is list:
        return [_decode(typing.get_args(hint)[0], v) for v in value]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        for member in hint:
            if value in (member.value, member.name, str(member)):
                return member
        raise AssertionError(f"{value!r} names no member of {hint}")
    return value


def _rendered(event: Event) -> dict[str, Any]:
    stream = io.StringIO()
    Renderer(json_lines=True, stream=stream)(event)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    payload: dict[str, Any] = json.loads(lines[0])
    return payload


def test_every_kind_is_unique() -> None:
    assert len(EVENTS) > 20
    kinds = [cls.kind for cls in EVENTS]
    duplicates = {kind for kind in kinds if kinds.count(kind) > 1}
    assert not duplicates, duplicates
    assert "event" not in kinds  # every event names its own kind


@pytest.mark.parametrize("cls", EVENTS, ids=lambda cls: cls.kind)
def test_json_round_trip(cls: type[Event]) -> None:
    event = _example(cls)
    payload = _rendered(event)
    hints = _field_hints(cls)
    assert list(payload) == ["kind", *hints]
    assert payload["kind"] == cls.kind
    back = cls(**{name: _decode(hints[name], payload[name]) for name in hints})
    assert back == event
    assert str(event).strip(), f"{cls.__name__} has no text"


@pytest.mark.parametrize("cls", EVENTS, ids=lambda cls: cls.kind)
def test_events_are_frozen_and_refuse_unknown_fields(cls: type[Event]) -> None:
    event = _example(cls)
    for name in _field_hints(cls):
        with pytest.raises(AttributeError):
            setattr(event, name, None)
    with pytest.raises(TypeError):
        cls(**{name: _sample(hint, name) for name, hint in _field_hints(cls).items()}, bogus=1)

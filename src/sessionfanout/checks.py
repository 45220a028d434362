"""The argument rules, in one place; sans-IO.

Every public entry point checks its arguments when it is called, so a bad
value fails at the call that made it (with ``InvalidArgument`` naming it),
never later in work the hub does for many sessions at once. The event and
agent-event classes run these as attrs validators; the hub runs them on
plain arguments.

What may go on the wire is what every browser's ``JSON.parse`` reads back
unchanged (PROTOCOL.md: strict RFC 8259 JSON): objects with string keys,
arrays, strings, booleans, null, finite numbers, and integers a double holds
exactly. ``NaN``, ``Infinity``, sets, bytes and other objects are refused.
"""

from __future__ import annotations

import math
from typing import Any, Final

import attrs

from .errors import InvalidArgument

__all__ = ("MAX_ID_LENGTH",)

MAX_ID_LENGTH: Final = 256
"""PROTOCOL.md: ``sessionId`` and ``requestId`` are non-empty strings of at most 256 characters."""

MAX_SAFE_INTEGER: Final = 2**53 - 1
"""Larger integers lose digits in a browser (``Number.MAX_SAFE_INTEGER``)."""

MAX_JSON_DEPTH: Final = 64
"""Deeper nesting is refused; it also stops a container that holds itself."""


def wire_name(name: str) -> str:
    """The camelCase wire name of a snake_case attribute: ``session_id`` ->
    ``sessionId``; a trailing underscore (a Python keyword) goes: ``from_`` -> ``from``."""
    head, *rest = name.rstrip("_").split("_")
    return head + "".join(part.capitalize() for part in rest)


def describe(value: object) -> str:
    """A short account of a bad value for an error message: its type and a prefix."""
    return f"{type(value).__name__} {value!r:.60}"


def id_problem(value: object) -> str | None:
    """Why ``value`` is not a valid session or request id, or None when it is."""
    if not isinstance(value, str):
        return f"must be a string, got {describe(value)}"
    if not value:
        return "must not be empty"
    if len(value) > MAX_ID_LENGTH:
        return f"must be at most {MAX_ID_LENGTH} characters, got {len(value)}"
    return None


def check_id(name: str, value: object) -> str:
    """``value`` if it is a valid id, else ``InvalidArgument`` naming ``name``."""
    if type(value) is str and 0 < len(value) <= MAX_ID_LENGTH:
        return value  # the common case, decided without a call: this runs per event
    problem = id_problem(value)
    if problem is not None:
        raise InvalidArgument(f"{name} {problem}")
    assert isinstance(value, str)
    return value


def check_text(name: str, value: object, *, optional: bool = False) -> None:
    if not isinstance(value, str) and not (optional and value is None):
        kind = "a string or None" if optional else "a string"
        raise InvalidArgument(f"{name} must be {kind}, got {describe(value)}")


def check_timeout(name: str, value: object) -> float:
    """A positive, finite number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise InvalidArgument(f"{name} must be a positive number, got {describe(value)}")
    return value


def json_problem(value: object) -> str | None:
    """Why ``value`` cannot go on the wire as strict JSON, or None when it can.

    Iterative, so a deep or self-containing value is refused, not a crash.
    """
    stack: list[tuple[object, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if item is None or isinstance(item, str | bool):
            continue
        if isinstance(item, int):
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                return f"{path or 'value'}: integers beyond 2**53 - 1 lose digits in a browser"
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return f"{path or 'value'}: {item!r} is not JSON (no NaN or Infinity)"
            continue
        if depth >= MAX_JSON_DEPTH:
            return f"{path or 'value'}: nested deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    return f"{path or 'value'}: key {describe(key)} is not a string"
                stack.append((child, f"{path}[{key!r:.40}]", depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
        else:
            return f"{path or 'value'}: {describe(item)} is not JSON"
    return None


# -- attrs validators. A wire frame's field is named by its wire name, so the
# same text serves a producer's InvalidArgument and a client's client_error.


def _fail(instance: object, attribute: attrs.Attribute[Any], problem: str) -> None:
    kind = getattr(type(instance), "TYPE", None)
    if kind is None:  # not a wire frame: name the Python attribute
        raise InvalidArgument(f"{type(instance).__name__}.{attribute.name} {problem}")
    raise InvalidArgument(f"{kind}: field {wire_name(attribute.name)!r} {problem}")


def an_id(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is str and 0 < len(value) <= MAX_ID_LENGTH:
        return  # the common case, decided without a call: events are made per event
    problem = id_problem(value)
    if problem is not None:
        _fail(instance, attribute, problem)


def _instance_of(kind: type | tuple[type, ...], what: str, *, optional: bool) -> Any:
    """A validator: an instance of ``kind`` (or None when ``optional``)."""
    if optional:

        def maybe(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
            if value is not None and not isinstance(value, kind):
                _fail(instance, attribute, f"must be {what} or None, got {describe(value)}")

        return maybe

    # Apart, so that the common check is one test: events are made per event.
    def always(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, kind):
            _fail(instance, attribute, f"must be {what}, got {describe(value)}")

    return always


a_string = _instance_of(str, "a string", optional=False)
an_optional_string = _instance_of(str, "a string", optional=True)
a_bool = _instance_of(bool, "a boolean", optional=False)
an_optional_bool = _instance_of(bool, "a boolean", optional=True)


def a_count(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A non-negative integer that a browser holds exactly (a seq, a timestamp)."""
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(instance, attribute, f"must be an integer, got {describe(value)}")
    elif not 0 <= value <= MAX_SAFE_INTEGER:
        _fail(instance, attribute, f"must be between 0 and 2**53 - 1, got {value!r:.60}")


def an_optional_count(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        a_count(instance, attribute, value)


def a_json_object(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, dict):
        _fail(instance, attribute, f"must be a dict, got {describe(value)}")
    problem = json_problem(value)
    if problem is not None:
        _fail(instance, attribute, problem)


def one_of(*allowed: str) -> Any:
    """A validator for a field that takes one of a few strings."""

    def validate(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, str) or value not in allowed:
            _fail(instance, attribute, f"must be one of {', '.join(map(repr, allowed))}")

    return validate


# -- optional fields of the event classes (mypy's attrs plugin sees a default
# in any assignment, so required fields call attrs.field themselves).


def optional_str_field() -> Any:
    return attrs.field(default=None, validator=an_optional_string)


def optional_bool_field() -> Any:
    return attrs.field(default=None, validator=an_optional_bool)


def optional_count_field() -> Any:
    return attrs.field(default=None, validator=an_optional_count)

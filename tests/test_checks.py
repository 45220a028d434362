"""The argument rules: events and agent events refuse bad fields when made,
and only strict JSON that a browser parses unchanged is allowed on the wire."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionfanout import (
    AgentPermissionRequest,
    AgentTextDelta,
    AgentToolStart,
    ClientError,
    ConfigChanged,
    InvalidArgument,
    PermissionDecision,
    PermissionRequest,
    Subscribed,
    TextComplete,
    TextDelta,
    ToolStart,
    encode,
)
from sessionfanout.checks import check_id, json_problem
from tests.strategies import anything, strict_loads

nested: list[Any] = []
for _ in range(100):
    nested = [nested]
looped: list[Any] = []
looped.append(looped)

BAD_EVENTS: list[tuple[Callable[[], object], str]] = [
    (lambda: TextComplete("s", 5), "'text'"),  # type: ignore[arg-type]
    (lambda: TextDelta("s", "hi", 3), "'turnId'"),  # type: ignore[arg-type]
    (lambda: TextDelta("", "hi"), "'sessionId'"),
    (lambda: TextDelta("x" * 257, "hi"), "'sessionId'"),
    (lambda: TextDelta(None, "hi"), "'sessionId'"),  # type: ignore[arg-type]
    (lambda: TextDelta("s", "hi", seq=-1), "'seq'"),
    (lambda: TextDelta("s", "hi", seq=True), "'seq'"),
    (lambda: TextComplete("s", "t", is_intermediate="yes"), "'isIntermediate'"),  # type: ignore[arg-type]
    (lambda: ToolStart("s", "t", "u", {"x": math.nan}), "NaN"),
    (lambda: ToolStart("s", "t", "u", {"x": [math.inf]}), "inf"),
    (lambda: ToolStart("s", "t", "u", {1: "a"}), "key"),  # type: ignore[dict-item]
    (lambda: ToolStart("s", "t", "u", {"x": {1, 2}}), "set"),
    (lambda: ToolStart("s", "t", "u", {"x": b"raw"}), "bytes"),
    (lambda: ToolStart("s", "t", "u", {"x": 2**60}), "2**53"),
    (lambda: ToolStart("s", "t", "u", {"x": nested}), "deeper"),
    (lambda: ToolStart("s", "t", "u", {"x": looped}), "deeper"),
    (lambda: ToolStart("s", "t", "u", {"x": object()}), "object"),
    (lambda: ToolStart("s", "t", "u", ["not", "a", "dict"]), "'toolInput'"),  # type: ignore[arg-type]
    (lambda: ConfigChanged("bogus"), "'changeType'"),  # type: ignore[arg-type]
    (lambda: PermissionRequest("s", "not info"), "'request'"),  # type: ignore[arg-type]
    (lambda: Subscribed("s", 1, "e", 1), "'resumed'"),  # type: ignore[arg-type]
    (lambda: ClientError("oops", "m"), "'code'"),
    (lambda: AgentTextDelta("hello", turn_id=3), "turn_id"),  # type: ignore[arg-type]
    (lambda: AgentToolStart("t", "u", {"x": math.nan}), "NaN"),
    (lambda: AgentPermissionRequest("t", "c", "d", request_id=""), "request_id"),
    (lambda: PermissionDecision("r", "yes"), "allowed"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("make", "named"), BAD_EVENTS)
def test_a_bad_field_is_refused_when_the_event_is_made_and_named(
    make: Callable[[], object], named: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        make()
    assert named in str(caught.value)


def test_a_tool_input_changed_after_it_was_made_is_refused_when_encoded() -> None:
    """A frozen event's dict can still be changed; encoding checks it again."""
    event = ToolStart("s", "t", "u", {"x": 1})
    event.tool_input["x"] = math.nan
    with pytest.raises(InvalidArgument, match="NaN"):
        encode(event)


def test_lone_surrogates_go_out_escaped_and_parse_back() -> None:
    text = encode(TextDelta("s", "a\ud800b"))
    assert "a\ud800b" == strict_loads(text)["delta"]


def test_check_id_names_the_argument() -> None:
    with pytest.raises(InvalidArgument, match="request_id must not be empty"):
        check_id("request_id", "")
    assert "ok" == check_id("session_id", "ok")


@given(anything)
def test_json_problem_is_none_exactly_when_a_strict_parser_reads_the_value_back(
    value: Any,
) -> None:
    if json_problem(value) is not None:
        return
    text = json.dumps(value, allow_nan=False)
    assert json.loads(text) == json.loads(json.dumps(strict_loads(text)))


@given(anything)
def test_every_accepted_tool_input_encodes_to_strict_json(value: Any) -> None:
    try:
        event = ToolStart("s", "t", "u", {"v": value})
    except InvalidArgument:
        assert json_problem({"v": value}) is not None
        return
    assert "toolInput" in strict_loads(encode(event))


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_only_finite_floats_are_json(number: float) -> None:
    assert (json_problem(number) is None) == math.isfinite(number)

from __future__ import annotations

from typing import Any

import attrs
import pytest

from sessionfanout import (
    AgentComplete,
    AgentError,
    AgentPermissionRequest,
    AgentTextComplete,
    AgentTextDelta,
    AgentToolResult,
    AgentToolStart,
    Complete,
    Error,
    EventTransformer,
    InvalidArgument,
    PermissionRequest,
    PermissionRequestInfo,
    TextComplete,
    TextDelta,
    ToolResult,
    ToolStart,
    UnknownAgentEvent,
    UnknownEventPolicy,
)


@attrs.frozen
class Thinking:
    type = "thinking"
    text: str


def test_each_agent_event_maps_to_its_session_event() -> None:
    t = EventTransformer()
    cases: list[tuple[Any, Any]] = [
        (AgentTextDelta("hi", "t1"), TextDelta("s", "hi", "t1")),
        (AgentTextComplete("hi", True, "t1"), TextComplete("s", "hi", True, "t1")),
        (
            AgentToolStart("bash", "u1", {"cmd": "ls"}, "list", "Bash", "t1"),
            ToolStart("s", "bash", "u1", {"cmd": "ls"}, "list", "Bash", "t1"),
        ),
        (
            AgentToolResult("u1", "ok", False, "bash", "t1"),
            ToolResult("s", "u1", "bash", "ok", "t1", False),
        ),
        (AgentError("boom"), Error("s", "boom")),
        (AgentComplete(), Complete("s")),
        (
            AgentPermissionRequest("bash", "rm -rf /", "wipe", "r1"),
            PermissionRequest("s", PermissionRequestInfo("r1", "bash", "rm -rf /", "wipe")),
        ),
    ]
    for agent_event, expected in cases:
        assert [expected] == list(t.transform("s", agent_event))


def test_tool_result_takes_the_tool_name_from_its_tool_start() -> None:
    t = EventTransformer()
    t.transform("s", AgentToolStart("grep", "u1"))
    [result] = t.transform("s", AgentToolResult("u1", "3 matches"))
    assert "grep" == result.tool_name
    assert 0 == t.running_tools


def test_tool_names_are_per_session_and_forgotten_on_complete() -> None:
    t = EventTransformer()
    t.transform("a", AgentToolStart("grep", "u1"))
    t.transform("b", AgentToolStart("sed", "u1"))
    [result] = t.transform("b", AgentToolResult("u1", "done"))
    assert "sed" == result.tool_name
    t.transform("a", AgentComplete())
    assert 0 == t.running_tools
    [orphan] = t.transform("a", AgentToolResult("u1", "late"))
    assert "unknown" == orphan.tool_name


def test_unknown_events_are_ignored_and_counted_by_default() -> None:
    t = EventTransformer()
    assert [] == list(t.transform("s", Thinking("hmm")))
    assert [] == list(t.transform("s", object()))
    assert 2 == t.unknown_events


def test_unknown_events_raise_when_the_policy_says_so() -> None:
    t = EventTransformer(unknown=UnknownEventPolicy.RAISE)
    with pytest.raises(UnknownAgentEvent):
        t.transform("s", Thinking("hmm"))


def test_handlers_can_be_added_and_replaced() -> None:
    t = EventTransformer()
    t.register("thinking", lambda session, event: [TextDelta(session, f"({event.text})")])
    t.register("complete", lambda session, event: [TextDelta(session, "bye"), Complete(session)])
    assert [TextDelta("s", "(hmm)")] == list(t.transform("s", Thinking("hmm")))
    assert [TextDelta("s", "bye"), Complete("s")] == list(t.transform("s", AgentComplete()))


def test_register_refuses_a_nameless_type() -> None:
    with pytest.raises(InvalidArgument):
        EventTransformer().register("", lambda session, event: [])

"""Hub producer side: run_agent through the transformer, aborts, permissions."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from sessionfanout import (
    AgentComplete,
    AgentPermissionRequest,
    AgentTextComplete,
    AgentTextDelta,
    AgentToolResult,
    AgentToolStart,
    Hub,
    HubConfig,
    PermissionDecision,
)
from tests.hubtools import RecordingSink, connect, subscribe, virtual_clock, wait_for

pytestmark = pytest.mark.anyio


def respond(request_id: str, allowed: bool) -> str:
    return json.dumps({"type": "permission_response", "requestId": request_id, "allowed": allowed})


async def test_run_agent_publishes_through_the_transformer_in_order() -> None:
    async def agent() -> AsyncIterator[Any]:
        for word in ("Hello", " ", "world"):
            yield AgentTextDelta(word, "t1")
        yield AgentTextComplete("Hello world", turn_id="t1")
        yield AgentToolStart("grep", "u1", {"pattern": "x"})
        yield AgentToolResult("u1", "no match")
        yield AgentComplete()

    async with Hub(HubConfig(batch_interval=60)) as hub:
        connection, sink = await connect(hub)
        await subscribe(hub, connection, "s")
        await hub.run_agent("s", agent())
        await wait_for(lambda: bool(sink.of_type("complete")))
    frames = sink.session_frames("s")[1:]
    assert [
        "text_delta",
        "text_complete",
        "tool_start",
        "tool_result",
        "complete",
    ] == [f["type"] for f in frames]
    assert "Hello world" == frames[0]["delta"]
    assert "grep" == frames[3]["toolName"], "the name comes from the matching tool_start"
    assert [1, 2, 3, 4, 5] == [f["seq"] for f in frames]


async def test_aborting_run_agent_flushes_then_sends_error_and_complete() -> None:
    started = anyio.Event()

    async def agent() -> AsyncIterator[Any]:
        yield AgentTextDelta("partial ")
        yield AgentTextDelta("answer")
        started.set()
        await anyio.sleep_forever()
        yield AgentComplete()  # pragma: no cover

    async with Hub(HubConfig(batch_interval=60)) as hub:
        connection, sink = await connect(hub)
        await subscribe(hub, connection, "s")
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run_agent, "s", agent())
            await started.wait()
            tg.cancel_scope.cancel()
        await wait_for(lambda: bool(sink.of_type("complete")))
    frames = sink.session_frames("s")[1:]
    assert [
        ("text_delta", "partial answer"),
        ("error", "aborted"),
        ("complete", None),
    ] == [(f["type"], f.get("delta", f.get("error"))) for f in frames]


async def test_an_agent_that_raises_reports_error_and_complete_and_the_error_propagates() -> None:
    async def agent() -> AsyncIterator[Any]:
        yield AgentTextDelta("working")
        raise ValueError("model overloaded")

    async with Hub() as hub:
        connection, sink = await connect(hub)
        await subscribe(hub, connection, "s")
        with pytest.raises(ValueError, match="overloaded"):
            await hub.run_agent("s", agent())
        await wait_for(lambda: bool(sink.of_type("complete")))
    assert [
        ("text_delta", "working"),
        ("error", "model overloaded"),
        ("complete", None),
    ] == [(f["type"], f.get("delta", f.get("error"))) for f in sink.session_frames("s")[1:]]


async def test_the_first_subscriber_answer_decides_and_reaches_the_agent() -> None:
    decisions: list[PermissionDecision] = []

    async def agent() -> AsyncIterator[Any]:
        decision = yield AgentPermissionRequest("bash", "rm build/", "clean the build")
        decisions.append(decision)
        yield AgentComplete()

    async with Hub() as hub:
        outsider_conn, outsider = await connect(hub)
        first_conn, first = await connect(hub)
        second_conn, _ = await connect(hub)
        await subscribe(hub, first_conn, "s")
        await subscribe(hub, second_conn, "s")
        await subscribe(hub, outsider_conn, "elsewhere")
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run_agent, "s", agent())
            await wait_for(lambda: bool(first.of_type("permission_request")))
            request = first.of_type("permission_request")[0]["request"]
            assert {
                "toolName": "bash",
                "command": "rm build/",
                "description": "clean the build",
            } == {k: request[k] for k in ("toolName", "command", "description")}
            request_id = request["requestId"]
            await hub.handle_message(outsider_conn, respond(request_id, True))
            await wait_for(lambda: bool(outsider.of_type("client_error")))
            assert [] == decisions, "a non-subscriber does not decide"
            await hub.handle_message(second_conn, respond(request_id, False))
            await hub.handle_message(first_conn, respond(request_id, True))
        await wait_for(lambda: bool(first.of_type("client_error")))
        assert 0 == hub.statistics().pending_permissions
    assert "unknown_request" == outsider.of_type("client_error")[0]["code"]
    assert "unknown_request" == first.of_type("client_error")[0]["code"], "already decided"
    assert [PermissionDecision(request_id, allowed=False)] == decisions


async def test_an_unanswered_request_is_denied_and_permission_timeout_broadcast() -> None:
    async with Hub(HubConfig(permission_timeout=0.05)) as hub:
        connection, sink = await connect(hub)
        await subscribe(hub, connection, "s")
        decision = await hub.request_permission("s", "bash", "ls", "list")
        await wait_for(lambda: bool(sink.of_type("permission_timeout")))
        await hub.handle_message(connection, respond(decision.request_id, True))
        await wait_for(lambda: bool(sink.of_type("client_error")))
    assert PermissionDecision(decision.request_id, allowed=False, timed_out=True) == decision
    [timeout] = sink.of_type("permission_timeout")
    assert {
        "type": "permission_timeout",
        "sessionId": "s",
        "requestId": decision.request_id,
        "seq": 2,
    } == timeout


@virtual_clock()
async def test_the_default_permission_timeout_is_exact_on_a_virtual_clock() -> None:
    """trio's MockClock: 60 virtual seconds pass in no real time."""
    async with Hub() as hub:
        connection, sink = await connect(hub)
        await subscribe(hub, connection, "s")
        start = anyio.current_time()
        decision = await hub.request_permission("s", "bash", "ls", "list")
        elapsed = anyio.current_time() - start
    assert decision.timed_out
    assert 60.0 == pytest.approx(elapsed)
    assert [
        "permission_request",
        "permission_timeout",
    ] == [f["type"] for f in sink.session_frames("s")[1:]]


@virtual_clock()
async def test_streamed_deltas_go_out_within_the_interval_and_one_frame_per_interval() -> None:
    sent_at: list[tuple[float, str]] = []
    queued_at: list[float] = []

    class TimedSink(RecordingSink):
        async def send(self, text: str) -> None:
            sent_at.append((anyio.current_time(), text))

    async with Hub(HubConfig(batch_interval=0.05)) as hub:
        connection = await hub.connect(TimedSink())
        await hub.handle_message(connection, '{"type":"subscribe","sessionId":"s"}')
        for n in range(100):
            queued_at.append(anyio.current_time())
            await hub.queue_delta("s", f"{n},")
            await anyio.sleep(0.007)
        await anyio.sleep(1)
    deltas = [(t, json.loads(text)) for t, text in sent_at if '"text_delta"' in text]
    assert "".join(f"{n}," for n in range(100)) == "".join(d["delta"] for _, d in deltas)
    position = 0
    for sent, frame in deltas:
        pieces = frame["delta"].count(",")
        first_queued = queued_at[position]
        assert sent - first_queued <= 0.05 + 1e-9, "latency bound"
        position += pieces
    times = [sent for sent, _ in deltas]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= 0.05 - 1e-9, "a session streaming without pause: one frame per interval"


async def test_pending_requests_end_denied_when_the_hub_closes() -> None:
    results: list[PermissionDecision] = []

    async def ask(hub: Hub) -> None:
        results.append(await hub.request_permission("s", "bash", "ls", "list"))

    async with anyio.create_task_group() as tg, Hub() as hub:
        tg.start_soon(ask, hub)
        await wait_for(lambda: hub.statistics().pending_permissions == 1)
    assert [False] == [r.allowed for r in results]
    assert results[0].timed_out is False

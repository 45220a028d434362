"""One producer's mistake never reaches another session: arguments are checked
at the door, and an unexpected fault in one session's work stays there."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

import sessionfanout.publishing
from sessionfanout import (
    AgentTextDelta,
    Complete,
    EventTransformer,
    Hub,
    HubConfig,
    InvalidArgument,
    LocalBroker,
    SessionMismatch,
    TextComplete,
    TextDelta,
    UnknownConnection,
)
from sessionfanout.testing import TestClient
from tests.hubtools import RecordingSink, connect, subscribe, virtual_clock, wait_for

pytestmark = pytest.mark.anyio

FAST = HubConfig(batch_interval=0.01, client_rate=None)


async def watched(hub: Hub, *sessions: str) -> RecordingSink:
    connection, sink = await connect(hub)
    for session_id in sessions:
        await subscribe(hub, connection, session_id)
    return sink


async def still_served(hub: Hub, sink: RecordingSink, session_id: str = "other") -> None:
    """The hub runs and another session's subscriber gets its next event."""
    before = len(sink.of_type("complete"))
    await hub.broadcast_to_session(session_id, Complete(session_id))
    await wait_for(lambda: len(sink.of_type("complete")) > before)
    assert hub.running


async def test_an_integer_turn_id_is_refused_at_the_call_and_the_hub_goes_on() -> None:
    """The defect as reported: accepted, then the scheduler died and every client went."""
    async with Hub(FAST) as hub:
        other = await watched(hub, "other")
        with pytest.raises(InvalidArgument, match="turn_id"):
            await hub.queue_delta("s1", "hello", turn_id=3)  # type: ignore[arg-type]
        assert 0 == hub.statistics().pending_deltas
        await anyio.sleep(0.05)
        await still_served(hub, other)
    assert other.closed == (1001, "server shutting down")


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda hub: hub.queue_delta("s1", b"bytes"), "text"),
        (lambda hub: hub.queue_delta("", "x"), "session_id"),
        (lambda hub: hub.flush_delta(None), "session_id"),
        (lambda hub: hub.broadcast_to_session("s1", "not an event"), "session event"),
        (lambda hub: hub.broadcast_to_session("s1", Complete("s1", seq=4)), "seq"),
        (lambda hub: hub.broadcast_to_session("s1", TextDelta("s1", "x", first_seq=2)), "seq"),
        (lambda hub: hub.broadcast_global({"changeType": "config"}), "global"),
        (lambda hub: hub.request_permission("s1", 5, "c", "d"), "tool_name"),
        (lambda hub: hub.request_permission("s1", "t", "c", "d", deny_after="1"), "deny_after"),
        (lambda hub: hub.request_permission("s1", "t", "c", "d", deny_after=0), "deny_after"),
        (lambda hub: hub.request_permission("s1", "t", "c", "d", request_id=""), "request_id"),
        (lambda hub: hub.run_agent("s1", [AgentTextDelta("x")]), "async iterable"),
        (lambda hub: hub.connect(object()), "sink"),
        (lambda hub: hub.serve(RecordingSink(), ["frame"]), "incoming"),
        (lambda hub: hub.disconnect("c1"), "Connection"),
    ],
)
async def test_a_bad_argument_raises_at_the_call_and_queues_nothing(call: Any, error: str) -> None:
    async with Hub(FAST) as hub:
        other = await watched(hub, "other", "s1")
        await hub.queue_delta("s1", "pending")
        frames = len(other.texts)
        with pytest.raises(InvalidArgument, match=error):
            await call(hub)
        assert frames == len(other.texts), "nothing was sent, not even the pending batch"
        assert 1 == hub.statistics().pending_deltas
        assert 1 == hub.statistics().connections
        await still_served(hub, other)


async def test_an_event_for_another_session_is_a_session_mismatch() -> None:
    async with Hub(FAST) as hub:
        with pytest.raises(SessionMismatch):
            await hub.broadcast_to_session("s1", Complete("s2"))


@pytest.mark.parametrize("raw", [None, 5, {"type": "subscribe"}, ["x"]])
async def test_handle_message_with_a_non_frame_raises_and_the_connection_stays_usable(
    raw: Any,
) -> None:
    async with Hub(FAST) as hub:
        connection, _ = await connect(hub)
        with pytest.raises(InvalidArgument, match="raw"):
            await hub.handle_message(connection, raw)
        assert "subscribed" == (await subscribe(hub, connection, "s1"))["type"]


async def test_send_refuses_what_is_not_a_server_frame() -> None:
    async with Hub(FAST) as hub:
        connection, _ = await connect(hub)
        with pytest.raises(InvalidArgument, match="server frame"):
            await hub.send(connection, '{"type":"connected"}')  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="Connection"):
            await hub.send("c1", Complete("s"))  # type: ignore[arg-type]


async def test_a_bad_event_from_an_agent_ends_its_run_like_an_exception_would() -> None:
    async def agent() -> AsyncIterator[Any]:
        yield AgentTextDelta("so far ")
        yield AgentTextDelta("hello", turn_id=3)  # type: ignore[arg-type]

    async with Hub(FAST) as hub:
        sink = await watched(hub, "s1", "other")
        with pytest.raises(InvalidArgument, match="turn_id"):
            await hub.run_agent("s1", agent())
        await still_served(hub, sink)
    frames = [f for f in sink.session_frames("s1") if f["type"] != "subscribed"]
    assert ["text_delta", "error", "complete"] == [f["type"] for f in frames]
    assert "so far " == frames[0]["delta"]
    assert "turn_id" in frames[1]["error"], "the clients learn why too"


async def test_a_handler_that_returns_another_sessions_event_ends_the_run() -> None:
    transformer = EventTransformer()
    transformer.register("text_complete", lambda session_id, event: [TextComplete("x", "t")])

    async def agent() -> AsyncIterator[Any]:
        yield AgentTextDelta("hi")
        yield type("Done", (), {"type": "text_complete"})()

    async with Hub(FAST, transformer=transformer) as hub:
        sink = await watched(hub, "s1", "other")
        with pytest.raises(SessionMismatch):
            await hub.run_agent("s1", agent())
        await still_served(hub, sink)
    assert ["text_delta", "error", "complete"] == [
        f["type"] for f in sink.session_frames("s1") if f["type"] != "subscribed"
    ]
    assert [] == sink.session_frames("x")


class FaultyBroker(LocalBroker):
    """A backplane with a bug that shows only in the work for session "bad"."""

    def publish(self, session_id: str, body: str, *, is_delta: bool) -> None:
        if session_id == "bad":
            raise RuntimeError("bug in the backplane")
        super().publish(session_id, body, is_delta=is_delta)

    async def expire_permission(self, request_id: str) -> bool:
        raise RuntimeError("bug in the backplane")


@virtual_clock()
async def test_a_fault_in_one_sessions_batch_is_logged_counted_and_confined(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, "sessionfanout")
    async with Hub(FAST, broker=FaultyBroker()) as hub:
        sink = await watched(hub, "bad", "good", "other")
        for n in range(3):
            await hub.queue_delta("bad", f"b{n}")
            await hub.queue_delta("good", f"g{n}")
            await anyio.sleep(0.011)  # the scheduler flushes both batches, "bad" first
            assert n + 1 == len(sink.of_type("text_delta"))
        stats = hub.statistics()
        await still_served(hub, sink)
    assert ["g0", "g1", "g2"] == [f["delta"] for f in sink.of_type("text_delta")]
    assert 3 == stats.session_faults
    assert {"bad"} == {getattr(r, "session_id", None) for r in caplog.records}
    assert 1 == stats.connections


async def test_a_fault_publishing_an_event_reaches_its_producer_counted_and_no_one_else() -> None:
    async with Hub(FAST, broker=FaultyBroker()) as hub:
        sink = await watched(hub, "bad", "other")
        with pytest.raises(RuntimeError, match="bug"):
            await hub.broadcast_to_session("bad", Complete("bad"))
        assert 1 == hub.statistics().session_faults
        await still_served(hub, sink)


async def test_an_encoding_fault_in_the_scheduler_stays_with_its_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = sessionfanout.publishing.encode

    def encode(event: Any) -> str:
        if event.session_id == "bad":
            raise UnicodeError("bug in the encoder")
        return real(event)

    monkeypatch.setattr(sessionfanout.publishing, "encode", encode)
    async with Hub(FAST) as hub:
        sink = await watched(hub, "bad", "good", "other")
        await hub.queue_delta("bad", "b")
        await hub.queue_delta("good", "g")
        await wait_for(lambda: bool(sink.of_type("text_delta")))
        await still_served(hub, sink)
        assert 1 == hub.statistics().session_faults
    assert ["g"] == [f["delta"] for f in sink.of_type("text_delta")]


async def test_a_fault_timing_out_a_permission_still_answers_the_agent() -> None:
    async with Hub(FAST, broker=FaultyBroker()) as hub:
        sink = await watched(hub, "other")
        with anyio.fail_after(5):
            decision = await hub.request_permission("s1", "bash", "ls", "list", deny_after=0.01)
        assert (False, True) == (decision.allowed, decision.timed_out)
        assert 1 == hub.statistics().session_faults
        await still_served(hub, sink)


async def test_server_side_calls_on_a_stranger_connection_raise_unknown_connection() -> None:
    async with Hub(FAST) as a, Hub(FAST) as b:
        connection, _ = await connect(a)
        with pytest.raises(UnknownConnection):
            await b.handle_message(connection, '{"type":"subscribe","sessionId":"s"}')
        with pytest.raises(UnknownConnection):
            await b.subscribe(connection, "s")


@virtual_clock()
async def test_a_broker_whose_deadline_fails_does_not_stop_the_scheduler() -> None:
    from sessionfanout import LocalBroker

    class Failing(LocalBroker):
        def next_deadline(self) -> float | None:
            raise RuntimeError("a broker's bug")

    async with Hub(HubConfig(batch_interval=0.05, client_rate=None), broker=Failing()) as hub:
        client = await TestClient.connect(hub)
        await client.subscribe("s")
        await hub.queue_delta("s", "still batched")
        frame = await client.receive(type="text_delta", timeout=5)
        assert "still batched" == frame["delta"]
        assert hub.statistics().session_faults >= 1

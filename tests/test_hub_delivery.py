"""Hub delivery: order, batching, global broadcast, isolation of slow and broken sinks."""

from __future__ import annotations

import json
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionfanout import (
    Complete,
    ConfigChanged,
    Error,
    Hub,
    HubConfig,
    PermissionTimeout,
    SlowConsumerPolicy,
    TextComplete,
    ToolResult,
    ToolStart,
)
from sessionfanout.testing import TestClient
from tests.hubtools import (
    BrokenSink,
    DirectSink,
    RecordingSink,
    StuckSink,
    connect,
    subscribe,
    virtual_clock,
    wait_for,
)

pytestmark = pytest.mark.anyio

FAST = HubConfig(batch_interval=0.01)


async def test_connect_sends_connected_with_timestamp_and_id() -> None:
    async with Hub() as hub:
        connection, sink = await connect(hub)
        await wait_for(lambda: len(sink.texts) == 1)
    [frame] = sink.frames[:1]
    assert "connected" == frame["type"]
    assert connection.id == frame["connectionId"]
    assert isinstance(frame["timestamp"], int)
    assert frame["timestamp"] > 1_600_000_000_000


BARRIER_EVENTS: list[Any] = [
    TextComplete("s", "whole text"),
    ToolStart("s", "bash", "u1", {"cmd": "ls"}),
    ToolResult("s", "u1", "bash", "ok"),
    Complete("s"),
    Error("s", "boom"),
    PermissionTimeout("s", "r1"),
]


@pytest.mark.parametrize("event", BARRIER_EVENTS, ids=lambda e: e.TYPE)
async def test_pending_deltas_go_out_before_any_other_event_of_the_session(event: Any) -> None:
    async with Hub(HubConfig(batch_interval=60)) as hub:
        connection, sink = await connect(hub)
        await subscribe(hub, connection, "s")
        await hub.queue_delta("s", "Hel")
        await hub.queue_delta("s", "lo")
        await hub.broadcast_to_session("s", event)
        await wait_for(lambda: len(sink.session_frames("s")) == 3)
    frames = sink.session_frames("s")
    assert [f["type"] for f in frames] == ["subscribed", "text_delta", event.TYPE]
    assert "Hello" == frames[1]["delta"]
    assert [1, 2] == [f["seq"] for f in frames[1:]]


async def test_permission_request_is_an_ordering_barrier_too() -> None:
    async with Hub(HubConfig(batch_interval=60)) as hub:
        connection, sink = await connect(hub)
        await subscribe(hub, connection, "s")
        await hub.queue_delta("s", "thinking")
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.request_permission, "s", "bash", "ls", "list files")
            await wait_for(lambda: bool(sink.of_type("permission_request")))
            tg.cancel_scope.cancel()
    assert [
        "text_delta",
        "permission_request",
    ] == [f["type"] for f in sink.of_type("text_delta", "permission_request")]


async def test_deltas_are_coalesced_and_a_turn_change_splits_the_batch() -> None:
    async with Hub(HubConfig(batch_interval=60)) as hub:
        connection, sink = await connect(hub)
        await subscribe(hub, connection, "s")
        for text in ("a", "b", "c"):
            await hub.queue_delta("s", text, "t1")
        for text in ("d", "e"):
            await hub.queue_delta("s", text, "t2")
        await hub.flush_delta("s")
        await wait_for(lambda: len(sink.of_type("text_delta")) == 2)
    deltas = sink.of_type("text_delta")
    assert [
        ("abc", "t1", 1),
        ("de", "t2", 2),
    ] == [(f["delta"], f["turnId"], f["seq"]) for f in deltas]


@virtual_clock()
async def test_batches_go_out_on_their_own_within_the_interval() -> None:
    async with Hub(HubConfig(batch_interval=0.05)) as hub:
        connection, sink = await connect(hub)
        await subscribe(hub, connection, "s")
        await hub.queue_delta("s", "tick")
        await anyio.sleep(0.039)  # a batch may leave a fifth of the interval early, no sooner
        assert [] == sink.of_type("text_delta")
        await anyio.sleep(0.011)
        assert ["tick"] == [f["delta"] for f in sink.of_type("text_delta")]
        assert 0 == hub.statistics().pending_deltas


async def test_global_broadcast_reaches_each_connected_sink_exactly_once() -> None:
    async with Hub() as hub:
        _, none_sink = await connect(hub)
        one_conn, one_sink = await connect(hub)
        many_conn, many_sink = await connect(hub)
        await subscribe(hub, one_conn, "s1")
        for session in ("s1", "s2", "s3"):
            await subscribe(hub, many_conn, session)
        await hub.broadcast_global(ConfigChanged("theme"))
        sinks = (none_sink, one_sink, many_sink)
        await wait_for(lambda: all(s.of_type("config_changed") for s in sinks))
        await anyio.sleep(0.01)
    for sink in sinks:
        assert [{"type": "config_changed", "changeType": "theme"}] == sink.of_type("config_changed")


async def test_sessions_are_isolated() -> None:
    async with Hub(FAST) as hub:
        a_conn, a_sink = await connect(hub)
        b_conn, b_sink = await connect(hub)
        await subscribe(hub, a_conn, "a")
        await subscribe(hub, b_conn, "b")
        await hub.queue_delta("a", "for a")
        await hub.broadcast_to_session("b", Complete("b"))
        await wait_for(
            lambda: bool(a_sink.of_type("text_delta")) and bool(b_sink.of_type("complete"))
        )
    assert [] == b_sink.of_type("text_delta")
    assert [] == a_sink.of_type("complete")


async def test_each_event_is_encoded_once_for_all_subscribers() -> None:
    async with Hub() as hub:
        sinks = []
        for _ in range(5):
            connection, sink = await connect(hub)
            await subscribe(hub, connection, "s")
            sinks.append(sink)
        await hub.broadcast_to_session("s", Complete("s"))
        await wait_for(lambda: all(s.of_type("complete") for s in sinks))
    texts = [next(t for t in s.texts if '"complete"' in t) for s in sinks]
    assert all(text is texts[0] for text in texts), "the same string object goes to every outbox"


async def test_leaving_the_hub_ends_every_writer_even_a_stuck_one() -> None:
    """No writer outlives the hub, not even one whose send takes time to unwind."""

    class SlowToUnwind(StuckSink):
        ended = False

        async def send(self, text: str) -> None:
            try:
                await super().send(text)
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(0.05)
                self.ended = True

    stuck = SlowToUnwind()
    async with Hub(HubConfig(close_timeout=0.05)) as hub:
        await connect(hub, stuck)
        _, reader = await connect(hub)
        await wait_for(lambda: bool(reader.texts))
    assert stuck.ended
    assert (1001, "server shutting down") == reader.closed


async def test_a_stuck_sink_delays_nobody_and_is_closed_when_its_outbox_overflows() -> None:
    config = HubConfig(batch_interval=0.005, outbox_max_messages=50)
    async with Hub(config) as hub:
        stuck_conn, stuck = await connect(hub, StuckSink())
        reader_conn, reader = await connect(hub)
        await subscribe(hub, reader_conn, "s")
        await hub.handle_message(stuck_conn, '{"type":"subscribe","sessionId":"s"}')
        for n in range(200):
            await hub.broadcast_to_session("s", ToolResult("s", f"u{n}", "t", "x"))
            assert all(o.queued_frames <= 50 for o in hub.statistics().outboxes), "memory bounded"
            # The reader keeps up within a generous bound while the stuck one never reads.
            await wait_for(lambda n=n: len(reader.of_type("tool_result")) == n + 1, seconds=5)
        await wait_for(lambda: stuck.closed is not None)
        stats = hub.statistics()
    assert [n + 1 for n in range(200)] == [f["seq"] for f in reader.of_type("tool_result")]
    assert 1008 == stuck.closed[0]
    assert "slow" in stuck.closed[1]
    assert 1 == stats.closed_slow
    assert 1 == stats.connections


async def test_overflow_first_coalesces_queued_deltas_of_the_same_turn() -> None:
    config = HubConfig(
        batch_interval=60, max_batch_chars=1, outbox_max_messages=10, close_timeout=0.1
    )
    async with Hub(config) as hub:
        stuck_conn, stuck = await connect(hub, StuckSink())
        await hub.handle_message(stuck_conn, '{"type":"subscribe","sessionId":"s"}')
        await anyio.sleep(0.01)
        for n in range(30):
            await hub.queue_delta("s", str(n % 10), "t1")
        stats = hub.statistics()
        queued = list(stuck_conn.outbox)
        assert stuck.closed is None, "coalescing made room"
    assert stats.coalesced > 0
    deltas = [json.loads(getattr(item, "text", item)) for item in queued]
    deltas = [d for d in deltas if d["type"] == "text_delta"]
    assert "".join(str(n % 10) for n in range(30)) == "".join(d["delta"] for d in deltas)
    assert 30 == deltas[-1]["seq"]
    # A merged frame says which seqs it holds: every number is accounted for, once.
    held = [n for d in deltas for n in range(d.get("firstSeq", d["seq"]), d["seq"] + 1)]
    assert list(range(1, 31)) == held
    assert any("firstSeq" in d for d in deltas)


async def test_the_close_policy_closes_without_coalescing() -> None:
    config = HubConfig(
        batch_interval=60, max_batch_chars=1, outbox_max_messages=10,
        slow_consumer=SlowConsumerPolicy.CLOSE,
    )  # fmt: skip
    async with Hub(config) as hub:
        stuck_conn, stuck = await connect(hub, StuckSink())
        await hub.handle_message(stuck_conn, '{"type":"subscribe","sessionId":"s"}')
        for n in range(30):
            await hub.queue_delta("s", str(n % 10), "t1")
        await wait_for(lambda: stuck.closed is not None)
        assert 0 == hub.statistics().coalesced


async def test_one_large_frame_never_closes_a_reading_client() -> None:
    config = HubConfig(outbox_max_bytes=64 * 1024)
    async with Hub(config) as hub:
        connection, sink = await connect(hub)
        await subscribe(hub, connection, "s")
        big = "x" * (1024 * 1024)
        for _ in range(3):
            await hub.broadcast_to_session("s", TextComplete("s", big))
            await wait_for(lambda: not connection.outbox)
        await wait_for(lambda: len(sink.of_type("text_complete")) == 3)
    assert (1001, "server shutting down") == sink.closed


async def test_a_sink_that_raises_is_dropped_without_a_trace() -> None:
    async with Hub() as hub:
        broken_conn, _ = await connect(hub, BrokenSink(ok=2))
        good_conn, good = await connect(hub)
        for connection in (broken_conn, good_conn):
            await hub.handle_message(connection, '{"type":"subscribe","sessionId":"s"}')
        for n in range(5):
            await hub.broadcast_to_session("s", ToolResult("s", f"u{n}", "t", "x"))
        await wait_for(lambda: len(good.of_type("tool_result")) == 5)
        await wait_for(lambda: hub.statistics().connections == 1)
        stats = hub.statistics()
        assert frozenset() == hub.sessions_of(broken_conn)
    assert 1 == stats.closed_broken
    assert 1 == stats.subscriptions
    assert 1 == stats.sessions


async def test_leaving_the_hub_flushes_pending_deltas_before_closing_sinks() -> None:
    async with Hub(HubConfig(batch_interval=60)) as hub:
        connection, sink = await connect(hub)
        await subscribe(hub, connection, "s")
        await hub.queue_delta("s", "last words")
    assert "last words" == sink.of_type("text_delta")[0]["delta"]
    assert (1001, "server shutting down") == sink.closed


async def test_cancelling_the_surrounding_scope_loses_nothing_accepted() -> None:
    sink = RecordingSink()
    with anyio.CancelScope() as scope:
        async with Hub(HubConfig(batch_interval=60)) as hub:
            connection = await hub.connect(sink)
            await hub.handle_message(connection, '{"type":"subscribe","sessionId":"s"}')
            for n in range(100):
                await hub.queue_delta("s", f"{n},")
            await hub.broadcast_to_session("s", TextComplete("s", "done"))
            await hub.queue_delta("s", "tail")
            scope.cancel()
            await anyio.sleep_forever()
    assert "".join(f"{n}," for n in range(100)) + "tail" == "".join(
        f["delta"] for f in sink.of_type("text_delta")
    )
    assert [
        "text_delta",
        "text_complete",
        "text_delta",
    ] == [f["type"] for f in sink.of_type("text_delta", "text_complete")]
    assert sink.closed is not None


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pattern=st.lists(st.sampled_from(["event", "full", "room", "yield"]), max_size=60))
async def test_direct_writes_and_the_outbox_never_reorder(pattern: list[str]) -> None:
    """A sink that sometimes takes frames directly and sometimes refuses
    (backpressure) still gets every frame once, in order."""
    async with Hub(HubConfig(client_rate=None)) as hub:
        sink = DirectSink()
        connection = await hub.connect(sink)
        await hub.handle_message(connection, '{"type":"subscribe","sessionId":"s"}')
        published = 0
        for step in pattern:
            if step == "event":
                published += 1
                await hub.broadcast_to_session("s", ToolResult("s", str(published), "t", "x"))
            elif step == "full":
                sink.room = False
            elif step == "room":
                sink.room = True
            else:
                await anyio.lowlevel.checkpoint()
        await wait_for(lambda: len(sink.of_type("tool_result")) == published)
    assert [str(n) for n in range(1, published + 1)] == [
        f["toolUseId"] for f in sink.of_type("tool_result")
    ]


async def test_an_idle_direct_sink_is_written_to_without_a_writer_task() -> None:
    async with Hub() as hub:
        sink = DirectSink()
        connection = await hub.connect(sink)
        await hub.handle_message(connection, '{"type":"subscribe","sessionId":"s"}')
        for n in range(10):
            await hub.broadcast_to_session("s", ToolResult("s", str(n), "t", "x"))
        assert (None, "IDLE") == (connection.task, repr(connection.state))
        assert (12, 0) == (sink.direct, sink.queued), "connected, subscribed, 10 events"
        sink.room = False
        await hub.broadcast_to_session("s", Complete("s"))
        await wait_for(lambda: bool(sink.of_type("complete")))
        assert 1 == sink.queued, "backpressure: through the outbox and a writer"
    assert sink.closed == (1001, "server shutting down")


async def test_a_direct_sink_that_raises_is_dropped() -> None:
    class Exploding(DirectSink):
        def try_send(self, text: str) -> bool:
            if '"complete"' in text:
                raise ConnectionResetError("gone")
            return super().try_send(text)

    async with Hub() as hub:
        connection = await hub.connect(Exploding())
        await hub.handle_message(connection, '{"type":"subscribe","sessionId":"s"}')
        await hub.broadcast_to_session("s", Complete("s"))
        stats = hub.statistics()
    assert (0, 1) == (stats.connections, stats.closed_broken)


async def test_a_writer_ended_before_it_ran_is_not_counted() -> None:
    async with Hub() as hub:
        connection, _ = await connect(hub)  # "connected" is queued: a writer is started
        await hub.disconnect(connection)  # and ended before it ran
        await wait_for(lambda: hub.statistics().writers == 0)


@virtual_clock()
async def test_an_idle_writer_retires_and_a_new_one_starts_when_needed() -> None:
    """Idle connections cost no task; the next frame that must wait starts one."""
    config = HubConfig(writer_idle_seconds=1.0)
    async with Hub(config) as hub:
        connection, sink = await connect(hub)  # no try_send: every frame needs a writer
        await subscribe(hub, connection, "s")
        assert 1 == hub.statistics().writers
        await anyio.sleep(0.9)
        assert 1 == hub.statistics().writers, "parked, not yet idle long enough"
        await anyio.sleep(1.2)  # the sweep runs once a second: retired within two
        assert 0 == hub.statistics().writers
        for n in range(3):
            await hub.broadcast_to_session("s", ToolResult("s", str(n), "t", "x"))
        await anyio.sleep(0.001)
        assert 3 == len(sink.of_type("tool_result"))
        assert 1 == hub.statistics().writers
        await anyio.sleep(2.1)
        assert 0 == hub.statistics().writers
    assert ["0", "1", "2"] == [f["toolUseId"] for f in sink.of_type("tool_result")]
    assert (1001, "server shutting down") == sink.closed


async def test_without_batching_a_delta_is_sent_before_queue_delta_returns() -> None:
    async with Hub(HubConfig(batch_interval=0)) as hub:
        client = await TestClient.connect(hub, direct=True)
        await client.subscribe("s")
        for word in ("one ", "two "):
            await hub.queue_delta("s", word)
            assert word == client.frames[-1]["delta"], "no batching: one frame per delta, at once"
        assert 0 == hub.statistics().pending_deltas

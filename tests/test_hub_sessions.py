"""Hub sessions: resume, authorization, rate limits, bad input, churn, misuse."""

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
    Connection,
    CustomFrame,
    Hub,
    HubClosed,
    HubConfig,
    InvalidArgument,
    ProtocolError,
    SessionMismatch,
    TextComplete,
    ToolResult,
    UnknownConnection,
)
from tests.hubtools import RecordingSink, connect, subscribe, wait_for

pytestmark = pytest.mark.anyio


async def publish(hub: Hub, session: str, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        await hub.broadcast_to_session(session, ToolResult(session, f"u{n}", "tool", f"r{n}"))


async def test_resume_replays_exactly_what_was_missed() -> None:
    async with Hub() as hub:
        first_conn, first = await connect(hub)
        subscribed = await subscribe(hub, first_conn, "s")
        epoch = subscribed["epoch"]
        await publish(hub, "s", 5)
        await wait_for(lambda: len(first.of_type("tool_result")) == 5)
        await hub.disconnect(first_conn)
        await publish(hub, "s", 5, start=5)
        again_conn, again = await connect(hub)
        reply = await subscribe(hub, again_conn, "s", lastSeq=5, epoch=epoch)
        await wait_for(lambda: len(again.of_type("tool_result")) == 5)
    assert {
        "type": "subscribed",
        "sessionId": "s",
        "seq": 10,
        "epoch": epoch,
        "resumed": True,
        "firstSeq": 6,
    } == reply
    assert [6, 7, 8, 9, 10] == [f["seq"] for f in again.of_type("tool_result")]


async def test_resume_while_live_events_keep_arriving_has_no_gap_or_duplicate() -> None:
    async with Hub() as hub:
        watcher_conn, _ = await connect(hub)
        epoch = (await subscribe(hub, watcher_conn, "s"))["epoch"]
        await publish(hub, "s", 20)
        resumed: list[RecordingSink] = []

        async def producer() -> None:
            for n in range(20, 200):
                await publish(hub, "s", 1, start=n)
                await anyio.lowlevel.checkpoint()

        async def resumer(last_seq: int) -> None:
            connection, sink = await connect(hub)
            await hub.handle_message(
                connection,
                json.dumps(
                    {"type": "subscribe", "sessionId": "s", "lastSeq": last_seq, "epoch": epoch}
                ),
            )
            resumed.append(sink)

        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            for last_seq in (0, 7, 20, 20, 3):
                await anyio.lowlevel.checkpoint()
                tg.start_soon(resumer, last_seq)
        await wait_for(lambda: all(len(s.of_type("tool_result")) >= 180 for s in resumed))
        await wait_for(lambda: all(s.of_type("tool_result")[-1]["seq"] == 200 for s in resumed))
    for sink in resumed:
        [reply] = sink.of_type("subscribed")
        assert reply["resumed"] is True
        seqs = [f["seq"] for f in sink.of_type("tool_result")]
        assert seqs == list(range(seqs[0], 201)), "no gap, no duplicate, in order"


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"lastSeq": 1, "epoch": "not-the-epoch"}, "wrong epoch"),
        ({"lastSeq": 1}, "no epoch"),
        ({"lastSeq": 99, "epoch": None}, "ahead"),
    ],
)
async def test_resume_that_cannot_be_complete_answers_resumed_false(
    extra: dict[str, Any], why: str
) -> None:
    async with Hub() as hub:
        connection, _ = await connect(hub)
        epoch = (await subscribe(hub, connection, "s"))["epoch"]
        await publish(hub, "s", 3)
        if extra.get("epoch", "") is None:
            extra = {**extra, "epoch": epoch}
        other_conn, other = await connect(hub)
        reply = await subscribe(
            hub, other_conn, "s", **{k: v for k, v in extra.items() if v is not None}
        )
        await anyio.sleep(0.01)
    assert reply["resumed"] is False, why
    assert [] == other.of_type("tool_result"), "never a partial replay"


async def test_resume_older_than_the_history_answers_resumed_false() -> None:
    async with Hub(HubConfig(history_max_events=5)) as hub:
        connection, _ = await connect(hub)
        epoch = (await subscribe(hub, connection, "s"))["epoch"]
        await publish(hub, "s", 10)
        too_old_conn, too_old = await connect(hub)
        refused = await subscribe(hub, too_old_conn, "s", lastSeq=4, epoch=epoch)
        fits_conn, fits = await connect(hub)
        accepted = await subscribe(hub, fits_conn, "s", lastSeq=5, epoch=epoch)
        await wait_for(lambda: len(fits.of_type("tool_result")) == 5)
    assert refused["resumed"] is False
    assert [] == too_old.of_type("tool_result")
    assert accepted["resumed"] is True


async def test_an_authorize_hook_that_says_no_gives_forbidden_and_no_subscription() -> None:
    asked: list[tuple[str, str]] = []

    async def authorize(connection: Connection, session_id: str) -> bool:
        asked.append((connection.context, session_id))
        return session_id.startswith(f"{connection.context}:")

    async with Hub(HubConfig(authorize=authorize)) as hub:
        connection = await hub.connect(sink := RecordingSink(), context="alice")
        refused = await subscribe(hub, connection, "bob:1")
        accepted = await subscribe(hub, connection, "alice:1")
        assert frozenset({"alice:1"}) == hub.sessions_of(connection)
        await hub.broadcast_to_session("bob:1", Complete("bob:1"))
        await anyio.sleep(0.01)
    assert {
        "type": "client_error",
        "code": "forbidden",
        "requestType": "subscribe",
    } == {k: v for k, v in refused.items() if k != "message"}
    assert "subscribed" == accepted["type"]
    assert [("alice", "bob:1"), ("alice", "alice:1")] == asked
    assert [] == sink.of_type("complete")


async def test_a_failing_authorize_hook_refuses_and_nothing_escapes() -> None:
    def authorize(connection: Connection, session_id: str) -> bool:
        raise RuntimeError("auth service down")

    async with Hub(HubConfig(authorize=authorize)) as hub:
        connection, _ = await connect(hub)
        assert "forbidden" == (await subscribe(hub, connection, "s"))["code"]
        assert 0 == hub.statistics().subscriptions


async def test_a_connection_over_its_rate_gets_rate_limited_and_stays_usable() -> None:
    async with Hub(HubConfig(client_rate=50, client_burst=5)) as hub:
        connection, sink = await connect(hub)
        for _ in range(8):
            await hub.handle_message(connection, '{"type":"unsubscribe","sessionId":"x"}')
        await wait_for(lambda: len(sink.of_type("unsubscribed", "client_error")) == 8)
        codes = [f.get("code") for f in sink.of_type("unsubscribed", "client_error")]
        assert codes == [None] * 5 + ["rate_limited"] * 3
        await anyio.sleep(0.1)
        assert "subscribed" == (await subscribe(hub, connection, "s"))["type"]


client_frames = st.one_of(
    st.text(max_size=50),
    st.binary(max_size=50),
    st.builds(
        json.dumps,
        st.dictionaries(
            st.sampled_from(["type", "sessionId", "requestId", "lastSeq", "epoch", "allowed", "x"]),
            st.none()
            | st.booleans()
            | st.integers()
            | st.text(max_size=5)
            | st.sampled_from(["subscribe", "unsubscribe", "permission_response", "echo"]),
            max_size=5,
        ),
    ),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frames=st.lists(client_frames, min_size=1, max_size=8))
async def test_handle_message_fuzz_nothing_escapes_and_rejections_change_nothing(
    frames: list[str | bytes],
) -> None:
    async def echo(connection: Connection, frame: CustomFrame) -> None:
        if not isinstance(frame.data.get("x"), int):
            raise ProtocolError("invalid_message", "field 'x' must be an integer", frame.type)

    async with Hub(HubConfig(client_rate=None)) as hub:
        hub.register_client_frame("echo", echo)
        connection, sink = await connect(hub)
        await wait_for(lambda: len(sink.texts) == 1)
        for raw in frames:
            before_sessions = hub.sessions_of(connection)
            before_stats = hub.statistics()
            sent = len(sink.texts)
            await hub.handle_message(connection, raw)
            await wait_for(lambda: not connection.outbox)
            replies = sink.frames[sent:]
            if any(f["type"] == "client_error" for f in replies):
                assert 1 == len(replies)
                assert before_sessions == hub.sessions_of(connection)
                after = hub.statistics()
                assert before_stats.subscriptions == after.subscriptions
                assert before_stats.known_sessions == after.known_sessions
                assert before_stats.client_errors + 1 == after.client_errors
                code = replies[0]["code"]
                counted = before_stats.client_errors_by_code.get(code, 0) + 1
                assert counted == after.client_errors_by_code[code]


async def test_unsubscribe_stops_delivery_and_answers() -> None:
    async with Hub() as hub:
        connection, sink = await connect(hub)
        await subscribe(hub, connection, "s")
        await hub.handle_message(connection, '{"type":"unsubscribe","sessionId":"s"}')
        await hub.broadcast_to_session("s", Complete("s"))
        await wait_for(lambda: bool(sink.of_type("unsubscribed")))
        await anyio.sleep(0.01)
    assert [{"type": "unsubscribed", "sessionId": "s"}] == sink.of_type("unsubscribed")
    assert [] == sink.of_type("complete")


async def test_the_server_subscribes_a_connection_itself_with_the_wire_replay_rules() -> None:
    async with Hub(HubConfig(authorize=lambda connection, session_id: False)) as hub:
        connection, sink = await connect(hub)
        first = await hub.subscribe(connection, "s")
        await publish(hub, "s", 3)
        await wait_for(lambda: len(sink.of_type("tool_result")) == 3)
        again_conn, again = await connect(hub)
        resumed = await hub.subscribe(again_conn, "s", last_seq=1, epoch=first.epoch)
        await wait_for(lambda: len(again.of_type("tool_result")) == 2)
        with pytest.raises(InvalidArgument, match="lastSeq"):
            await hub.subscribe(again_conn, "s", last_seq=-1)
    assert (0, False) == (first.seq, first.resumed), (
        "the hook is the clients' gate, not the server's"
    )
    assert (3, True) == (resumed.seq, resumed.resumed)
    assert [2, 3] == [f["seq"] for f in again.of_type("tool_result")]
    assert ["subscribed", "tool_result", "tool_result"] == [f["type"] for f in again.frames[1:]]


async def test_the_server_ends_a_subscription_at_once_with_a_reason() -> None:
    async with Hub() as hub:
        connection, sink = await connect(hub)
        await subscribe(hub, connection, "s")
        assert await hub.unsubscribe(connection, "s", reason="access revoked")
        assert not await hub.unsubscribe(connection, "s", reason="again")
        await hub.broadcast_to_session("s", Complete("s"))
        await anyio.sleep(0.01)
        assert frozenset() == hub.sessions_of(connection)
    assert [{"type": "unsubscribed", "sessionId": "s", "reason": "access revoked"}] == (
        sink.of_type("unsubscribed")
    )
    assert [] == sink.of_type("complete")


async def test_a_refused_resubscribe_ends_the_existing_subscription() -> None:
    """Revocation: once the hook says no, the client stops receiving at once."""
    allowed = {"s"}
    config = HubConfig(authorize=lambda connection, session_id: session_id in allowed)
    async with Hub(config) as hub:
        connection, sink = await connect(hub)
        assert "subscribed" == (await subscribe(hub, connection, "s"))["type"]
        allowed.clear()
        assert "client_error" == (await subscribe(hub, connection, "s"))["type"]
        await hub.broadcast_to_session("s", Complete("s"))
        await anyio.sleep(0.01)
        assert frozenset() == hub.sessions_of(connection)
    assert [{"type": "unsubscribed", "sessionId": "s", "reason": "forbidden"}] == (
        sink.of_type("unsubscribed")
    )
    assert [] == sink.of_type("complete")


async def test_custom_client_frames_reach_their_handler() -> None:
    seen: list[dict[str, Any]] = []

    async def start(connection: Connection, frame: CustomFrame) -> None:
        seen.append(frame.data)
        await hub.send(connection, ConfigChanged("config"))

    async with Hub() as hub:
        hub.register_client_frame("start_agent", start)
        connection, sink = await connect(hub)
        await hub.handle_message(connection, '{"type":"start_agent","sessionId":"s"}')
        await wait_for(lambda: bool(sink.of_type("config_changed")))
    assert [{"type": "start_agent", "sessionId": "s"}] == seen


@pytest.mark.slow
async def test_churn_leaves_nothing_behind() -> None:
    """100,000 connect, subscribe, disconnect cycles leave every table empty."""
    async with Hub(HubConfig(client_rate=None, history_idle_ttl=0.05)) as hub:
        for n in range(100_000):
            connection = await hub.connect(RecordingSink())
            session = f"s{n % 1000}"
            await hub.handle_message(connection, f'{{"type":"subscribe","sessionId":"{session}"}}')
            if n % 100 == 0:
                await hub.broadcast_to_session(session, Complete(session))
            await hub.disconnect(connection)
        await anyio.sleep(0.2)  # past the idle time-to-live of the sessions that had events
        stats = hub.statistics()
    assert (0, 0, 0, 0, 0, ()) == (
        stats.connections,
        stats.subscriptions,
        stats.sessions,
        stats.known_sessions,
        stats.pending_permissions,
        stats.outboxes,
    )


async def test_api_misuse_raises_precise_errors() -> None:
    hub = Hub()
    with pytest.raises(HubClosed):
        await hub.broadcast_to_session("s", Complete("s"))
    async with hub:
        with pytest.raises(SessionMismatch):
            await hub.broadcast_to_session("s", Complete("t"))
        for bad in ("", "x" * 257, 7):
            with pytest.raises(InvalidArgument):
                await hub.queue_delta(bad, "text")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            await hub.queue_delta("s", b"bytes")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            await hub.broadcast_global(TextComplete("s", "x"))  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            hub.register_client_frame("subscribe", lambda c, f: anyio.lowlevel.checkpoint())  # type: ignore[arg-type,return-value]
        stranger = Connection("nobody", RecordingSink())
        with pytest.raises(UnknownConnection):
            await hub.handle_message(stranger, "{}")
    with pytest.raises(HubClosed):
        await hub.queue_delta("s", "late")


def test_config_refuses_bad_values() -> None:
    for bad in ({"batch_interval": -1}, {"outbox_max_messages": 0}, {"client_rate": 0}):
        with pytest.raises(InvalidArgument):
            HubConfig(**bad)  # type: ignore[arg-type]


async def test_a_late_joiner_is_replayed_the_whole_session_then_live() -> None:
    async with Hub() as hub:
        await publish(hub, "s", 3)
        connection, sink = await connect(hub)
        reply = await subscribe(hub, connection, "s", **{"from": "start"})
        await publish(hub, "s", 1, start=3)
        await wait_for(lambda: len(sink.of_type("tool_result")) == 4)
    assert (3, True, 1) == (reply["seq"], reply["resumed"], reply["firstSeq"])
    assert [1, 2, 3, 4] == [f["seq"] for f in sink.of_type("tool_result")]


async def test_a_late_joiner_past_the_history_gets_what_is_kept_and_resumed_false() -> None:
    async with Hub(HubConfig(history_max_events=2)) as hub:
        await publish(hub, "s", 5)
        connection, sink = await connect(hub)
        subscribed = await hub.subscribe(connection, "s", from_start=True)
        await wait_for(lambda: len(sink.of_type("tool_result")) == 2)
        empty_conn, _ = await connect(hub)
        nothing = await hub.subscribe(empty_conn, "new", from_start=True)
    assert (5, False, 4) == (subscribed.seq, subscribed.resumed, subscribed.first_seq)
    assert [4, 5] == [f["seq"] for f in sink.of_type("tool_result")]
    assert (0, True, None) == (nothing.seq, nothing.resumed, nothing.first_seq)


async def test_a_resume_says_which_seq_its_replay_starts_at() -> None:
    async with Hub() as hub:
        await publish(hub, "s", 4)
        connection, _ = await connect(hub)
        epoch = (await subscribe(hub, connection, "s"))["epoch"]
        again, _ = await connect(hub)
        replayed = await subscribe(hub, again, "s", lastSeq=2, epoch=epoch)
        up_to_date = await subscribe(hub, again, "t", lastSeq=0, epoch="x")
    assert (True, 3) == (replayed["resumed"], replayed["firstSeq"])
    assert "firstSeq" not in up_to_date


async def test_from_start_and_last_seq_exclude_each_other() -> None:
    async with Hub() as hub:
        connection, _ = await connect(hub)
        refused = await subscribe(hub, connection, "s", lastSeq=1, **{"from": "start"})
        bad_from = await subscribe(hub, connection, "s", **{"from": "end"})
        with pytest.raises(InvalidArgument):
            await hub.subscribe(connection, "s", last_seq=1, from_start=True)
    assert ("client_error", "invalid_message") == (refused["type"], refused["code"])
    assert ("client_error", "invalid_message") == (bad_from["type"], bad_from["code"])


async def test_a_permission_answered_through_the_api_counts_like_a_frame() -> None:
    async with Hub() as hub, anyio.create_task_group() as tg:
        connection, sink = await connect(hub)
        await subscribe(hub, connection, "s")
        stranger, _ = await connect(hub)
        decisions = []

        async def ask() -> None:
            decisions.append(await hub.request_permission("s", "bash", "ls", "list"))

        tg.start_soon(ask)
        await wait_for(lambda: bool(sink.of_type("permission_request")))
        request_id = sink.of_type("permission_request")[0]["request"]["requestId"]
        with pytest.raises(ProtocolError, match="unknown_request"):
            await hub.answer_permission(stranger, request_id, True)
        await hub.answer_permission(connection, request_id, True, always_allow=True)
        with pytest.raises(ProtocolError, match="unknown_request"):
            await hub.answer_permission(connection, request_id, False)
        await wait_for(lambda: bool(decisions))
    assert (True, True) == (decisions[0].allowed, decisions[0].always_allow)

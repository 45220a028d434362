"""RedisBroker against a real redis-server: two hubs stand for two processes.

asyncio only: redis-py's client runs on asyncio.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import redis.asyncio as aioredis

from sessionfanout import (
    AgentTextDelta,
    BrokerUnavailable,
    Complete,
    ConfigChanged,
    Hub,
    HubConfig,
    InvalidArgument,
    PermissionDecision,
    TextComplete,
    ToolResult,
)
from sessionfanout.codec import encode
from sessionfanout.redis_broker import RedisBroker
from sessionfanout.redis_broker.scripts import Names
from tests.hubtools import RecordingSink, connect, subscribe, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.anyio]

SF = Names("sf", "")
"""Where the tests with ``prefix="sf"`` find their keys and channels."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def hub(server: Any, **broker: Any) -> Hub:
    config = HubConfig(batch_interval=0.01, client_rate=None, close_timeout=1)
    return Hub(config, broker=RedisBroker(server.url, **broker))


def events(sink: RecordingSink, session_id: str) -> list[dict[str, Any]]:
    return [f for f in sink.session_frames(session_id) if f["type"] != "subscribed"]


def check_gap_free(frames: list[dict[str, Any]]) -> None:
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))


async def test_a_stream_published_on_one_process_reaches_the_other_in_order(
    redis_server: Any,
) -> None:
    async with hub(redis_server) as a, hub(redis_server) as b:
        conn_a, sink_a = await connect(a)
        conn_b, sink_b = await connect(b)
        await subscribe(a, conn_a, "s")
        await subscribe(b, conn_b, "s")
        words = [f"w{n} " for n in range(200)]
        for word in words:
            await b.queue_delta("s", word, "t1")
            await anyio.sleep(0.0005)
        await b.broadcast_to_session("s", TextComplete("s", "".join(words)))
        await b.broadcast_to_session("s", Complete("s"))
        for sink in (sink_a, sink_b):
            await wait_for(lambda sink=sink: bool(sink.of_type("complete")))
    for sink in (sink_a, sink_b):
        frames = events(sink, "s")
        check_gap_free(frames)
        assert "".join(words) == "".join(f["delta"] for f in frames if f["type"] == "text_delta")
        assert ["text_complete", "complete"] == [f["type"] for f in frames[-2:]]
    assert sink_a.texts[-3:] == sink_b.texts[-3:], "the same frames, byte for byte"


async def test_global_broadcast_reaches_clients_on_both_processes_exactly_once(
    redis_server: Any,
) -> None:
    async with hub(redis_server) as a, hub(redis_server) as b:
        sinks = []
        for h in (a, a, b, b):
            _, sink = await connect(h)
            sinks.append(sink)
        await a.broadcast_global(ConfigChanged("theme"))
        await b.broadcast_global(ConfigChanged("config"))
        await wait_for(lambda: all(len(s.of_type("config_changed")) == 2 for s in sinks))
        await anyio.sleep(0.1)
    for sink in sinks:
        assert 2 == len(sink.of_type("config_changed"))


async def test_a_permission_raised_on_one_process_is_answered_from_the_other(
    redis_server: Any,
) -> None:
    decisions: list[PermissionDecision] = []

    async def ask(h: Hub) -> None:
        decisions.append(await h.request_permission("s", "bash", "ls", "list"))

    async with hub(redis_server) as a, hub(redis_server) as b:
        answerer, answerer_sink = await connect(a)
        outsider, outsider_sink = await connect(a)
        await subscribe(a, answerer, "s")
        await subscribe(a, outsider, "elsewhere")
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, b)
            await wait_for(lambda: bool(answerer_sink.of_type("permission_request")))
            request_id = answerer_sink.of_type("permission_request")[0]["request"]["requestId"]
            answer = {"type": "permission_response", "requestId": request_id}
            await a.handle_message(outsider, json.dumps({**answer, "allowed": True}))
            await wait_for(lambda: bool(outsider_sink.of_type("client_error")))
            await a.handle_message(answerer, json.dumps({**answer, "allowed": True}))
        await a.handle_message(answerer, json.dumps({**answer, "allowed": False}))
        await wait_for(lambda: bool(answerer_sink.of_type("client_error")))
    assert [PermissionDecision(request_id, allowed=True)] == decisions
    assert "unknown_request" == outsider_sink.of_type("client_error")[0]["code"]
    assert "unknown_request" == answerer_sink.of_type("client_error")[0]["code"], "decided once"


async def test_a_permission_times_out_once_across_processes(redis_server: Any) -> None:
    async with hub(redis_server) as a, hub(redis_server) as b:
        watcher, sink = await connect(a)
        await subscribe(a, watcher, "s")
        decision = await b.request_permission("s", "bash", "ls", "list", deny_after=0.2)
        await wait_for(lambda: bool(sink.of_type("permission_timeout")))
        await a.handle_message(
            watcher,
            json.dumps({"type": "permission_response", "requestId": decision.request_id,
                        "allowed": True}),
        )  # fmt: skip
        await wait_for(lambda: bool(sink.of_type("client_error")))
    assert decision.timed_out
    assert not decision.allowed


async def test_resume_on_the_other_process_has_no_gap_or_duplicate(redis_server: Any) -> None:
    async with hub(redis_server) as a, hub(redis_server) as b, hub(redis_server) as producer:
        first, first_sink = await connect(a)
        epoch = (await subscribe(a, first, "s"))["epoch"]
        for n in range(30):
            await producer.broadcast_to_session("s", ToolResult("s", f"u{n}", "t", str(n)))
        await wait_for(lambda: len(events(first_sink, "s")) == 30)
        seen = events(first_sink, "s")[:12]
        await a.disconnect(first)

        async def keep_publishing() -> None:
            for n in range(30, 80):
                await producer.broadcast_to_session("s", ToolResult("s", f"u{n}", "t", str(n)))
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_publishing)
            second, second_sink = await connect(b)
            reply = await subscribe(b, second, "s", lastSeq=12, epoch=epoch)
        await wait_for(
            lambda: events(second_sink, "s")[-1:] and events(second_sink, "s")[-1]["seq"] == 80
        )
    assert reply["resumed"] is True
    check_gap_free(seen + events(second_sink, "s"))


async def test_a_wrong_epoch_is_not_resumed_on_another_process(redis_server: Any) -> None:
    async with hub(redis_server) as a, hub(redis_server) as b:
        first, _ = await connect(a)
        await subscribe(a, first, "s")
        await a.broadcast_to_session("s", Complete("s"))
        other, _ = await connect(b)
        reply = await subscribe(b, other, "s", lastSeq=0, epoch="stale")
    assert reply["resumed"] is False
    assert 1 == reply["seq"]


async def test_redis_killed_mid_stream_and_restarted(redis_server: Any) -> None:
    """Nothing crashes; publishing fails clearly while Redis is gone; afterwards the
    broker has reconnected, new events flow, and every client saw either a gap-free
    stream or the resync signal."""
    async with hub(redis_server) as a, hub(redis_server) as b:
        clients = []
        for h in (a, a, b):
            connection, sink = await connect(h)
            await subscribe(h, connection, "s")
            clients.append(sink)
        outcomes: list[str] = []
        for n in range(20):
            await b.broadcast_to_session("s", ToolResult("s", f"u{n}", "t", "before"))
        await wait_for(lambda: all(len(events(s, "s")) == 20 for s in clients))
        redis_server.kill()
        await wait_for(lambda: not b.broker.available)
        with pytest.raises(BrokerUnavailable):
            await b.broadcast_to_session("s", ToolResult("s", "x", "t", "during"))
        with pytest.raises(BrokerUnavailable):
            await b.queue_delta("s", "lost?")
        redis_server.start()
        await wait_for(lambda: a.broker.available and b.broker.available, seconds=20)
        for n in range(5):
            await b.broadcast_to_session("s", ToolResult("s", f"y{n}", "t", "after"))
        await wait_for(lambda: all(events(s, "s")[-1]["result"] == "after" for s in clients))
        for sink in clients:
            frames = sink.frames
            resyncs = [f for f in frames[1:] if f["type"] == "subscribed"][1:]
            if resyncs:
                outcomes.append("resync")
                # Before the signal: gap-free; after it: gap-free from its seq.
                cut = frames.index(resyncs[-1])
                check_gap_free([f for f in frames[:cut] if f["type"] == "tool_result"])
                after = [f for f in frames[cut:] if f["type"] == "tool_result"]
                start = resyncs[-1]["seq"]
                assert [f["seq"] for f in after] == list(range(start + 1, start + 1 + len(after)))
            else:
                outcomes.append("gap-free")
                check_gap_free([f for f in frames if f["type"] == "tool_result"])
        assert 3 == len(outcomes)
        assert a.statistics().broker["reconnects"] >= 1


async def test_a_forged_envelope_is_dropped_and_counted(redis_server: Any) -> None:
    async with hub(redis_server, secret="s3cret", prefix="sf") as a:
        connection, sink = await connect(a)
        await subscribe(a, connection, "s")
        client = aioredis.Redis.from_url(redis_server.url)
        forged = "e1|1|" + "0" * 32 + '|e|{"type":"complete","sessionId":"s"}'
        await client.publish(SF.channel("s"), forged)
        await client.publish(
            "sf:global", "0" * 32 + '|{"type":"config_changed","changeType":"theme"}'
        )
        await wait_for(lambda: a.statistics().broker["forged"] == 2)
        await a.broadcast_to_session("s", Complete("s"))
        await wait_for(lambda: bool(sink.of_type("complete")))
        await client.aclose()
    assert [] == sink.of_type("config_changed")
    assert [1] == [f["seq"] for f in sink.of_type("complete")], "only the signed one"


async def test_signed_processes_interoperate(redis_server: Any) -> None:
    async with hub(redis_server, secret=b"k") as a, hub(redis_server, secret=b"k") as b:
        connection, sink = await connect(a)
        await subscribe(a, connection, "s")
        await b.broadcast_to_session("s", Complete("s"))
        await wait_for(lambda: bool(sink.of_type("complete")))
        assert 0 == a.statistics().broker["forged"]


async def test_starting_without_redis_raises_broker_unavailable(tmp_path: Any) -> None:
    from tests.servers import free_port

    with pytest.raises(BrokerUnavailable):
        async with Hub(broker=RedisBroker(f"redis://127.0.0.1:{free_port()}/0")):
            pass


async def test_sessions_are_watched_only_while_they_have_local_subscribers(
    redis_server: Any,
) -> None:
    async with hub(redis_server) as a:
        connection, _ = await connect(a)
        await subscribe(a, connection, "s")
        assert 1 == a.statistics().broker["watched_sessions"]
        await a.handle_message(connection, '{"type":"unsubscribe","sessionId":"s"}')
        await wait_for(lambda: a.statistics().broker["watched_sessions"] == 0)
        client = aioredis.Redis.from_url(redis_server.url)
        await wait_for(lambda: True)
        channels = await client.pubsub_channels("sessionfanout:ev:*")
        await client.aclose()
    assert [] == channels


async def test_a_dropped_subscription_is_caught_up_from_the_history_without_a_gap(
    redis_server: Any,
) -> None:
    """Redis keeps its data but one process's pub/sub connection drops while
    another publishes: it fills what it missed from the session's history;
    its clients see no gap and no resync."""
    config = HubConfig(client_rate=None, close_timeout=1)
    a = Hub(config, broker=RedisBroker(redis_server.url, client_name="process-a"))
    async with a, hub(redis_server) as b:
        connection, sink = await connect(a)
        await subscribe(a, connection, "s")
        for n in range(10):
            await b.broadcast_to_session("s", ToolResult("s", f"u{n}", "t", str(n)))
        admin = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        [victim] = [
            c["id"]
            for c in await admin.client_list()
            if c["name"] == "process-a" and c["sub"] != "0"  # its pub/sub connection
        ]
        await admin.client_kill_filter(_id=victim)
        for n in range(10, 60):  # while a reconnects
            await b.broadcast_to_session("s", ToolResult("s", f"u{n}", "t", str(n)))
        await admin.aclose()
        await wait_for(lambda: len(events(sink, "s")) == 60)
        stats = a.statistics()
    check_gap_free(events(sink, "s"))
    assert [] == [f for f in sink.frames[2:] if f["type"] == "subscribed"], "no resync needed"
    assert 1 == stats.broker["reconnects"]
    assert 1 == stats.broker["gaps_filled"]
    assert 0 == stats.resyncs


async def test_leaving_the_hub_delivers_the_last_flushed_deltas_first(redis_server: Any) -> None:
    """Shutdown flushes pending deltas through Redis and waits for them to come
    back before closing the sinks."""
    config = HubConfig(batch_interval=60, client_rate=None)
    async with Hub(config, broker=RedisBroker(redis_server.url)) as only:
        connection, sink = await connect(only)
        await subscribe(only, connection, "s")
        await only.queue_delta("s", "last words")
    assert ["last words"] == [f["delta"] for f in sink.of_type("text_delta")]
    assert (1001, "server shutting down") == sink.closed


async def test_publishing_goes_on_while_the_pubsub_connections_reconnect(
    redis_server: Any,
) -> None:
    """Only the pub/sub connections drop (CLIENT KILL TYPE pubsub) while a process
    publishes: no publish fails, and the subscribers of both processes get every
    event, gap-free and whole (the publisher's own ones from its catch-up)."""
    async with hub(redis_server) as a, hub(redis_server) as b:
        sinks = []
        for h in (a, b):
            connection, sink = await connect(h)
            await subscribe(h, connection, "s")
            sinks.append(sink)
        words: list[str] = []

        async def say(n: int) -> None:
            words.append(f"w{n} ")
            await b.queue_delta("s", f"w{n} ", "t1")
            await b.broadcast_to_session("s", ToolResult("s", f"u{n}", "t", str(n)))

        for n in range(10):
            await say(n)
        admin = aioredis.Redis.from_url(redis_server.url)
        await admin.client_kill_filter(_type="pubsub")
        await admin.aclose()
        with anyio.fail_after(20):
            while b.statistics().broker["reconnects"] < 1:  # all through the reconnect
                await say(len(words))
        for n in range(len(words), len(words) + 10):
            await say(n)
        await b.broadcast_to_session("s", Complete("s"))
        await wait_for(lambda: all(sink.of_type("complete") for sink in sinks))
    for sink in sinks:
        frames = events(sink, "s")
        check_gap_free(frames)
        assert "".join(words) == "".join(f["delta"] for f in frames if f["type"] == "text_delta")
        results = [f["result"] for f in frames if f["type"] == "tool_result"]
        assert [str(n) for n in range(len(words))] == results


def signed_hub(server: Any) -> Hub:
    return hub(server, secret="s3cret", prefix="sf")


async def raw_client(server: Any) -> aioredis.Redis:
    return aioredis.Redis.from_url(server.url, decode_responses=True)


def results(sink: RecordingSink, session_id: str) -> list[tuple[int, str]]:
    return [(f["seq"], f["result"]) for f in events(sink, session_id) if "result" in f]


async def test_a_replay_renumbered_as_the_next_seq_is_dropped_and_the_real_one_delivered(
    redis_server: Any,
) -> None:
    async with signed_hub(redis_server) as a, signed_hub(redis_server) as b:
        connection, sink = await connect(a)
        await subscribe(a, connection, "s")
        await b.broadcast_to_session("s", ToolResult("s", "u1", "t", "one"))
        await wait_for(lambda: len(events(sink, "s")) == 1)
        raw = await raw_client(redis_server)
        epoch = await raw.hget(SF.key("s", "meta"), "epoch")
        _, _, placeless = (await raw.lindex(SF.key("s", "log"), 0)).partition("|")
        await raw.publish(SF.channel("s"), f"{epoch}|2|{placeless}")
        await raw.aclose()
        await wait_for(lambda: a.statistics().broker["forged"] >= 1)
        await b.broadcast_to_session("s", ToolResult("s", "u2", "t", "two"))
        await b.broadcast_to_session("s", ToolResult("s", "u3", "t", "three"))
        await wait_for(lambda: len(events(sink, "s")) == 3)
    assert [(1, "one"), (2, "two"), (3, "three")] == results(sink, "s")


async def test_an_envelope_moved_to_a_new_epoch_of_its_session_is_dropped_and_counted(
    redis_server: Any,
) -> None:
    """An event of a lost incarnation of the session (its keys idled out of Redis)
    replayed into the new one, at the seq it had."""
    async with signed_hub(redis_server) as a, signed_hub(redis_server) as b:
        await b.broadcast_to_session("s", ToolResult("s", "u1", "t", "old"))
        raw = await raw_client(redis_server)
        entry = await raw.lindex(SF.key("s", "log"), 0)
        await raw.delete(SF.key("s", "meta"), SF.key("s", "log"))
        connection, sink = await connect(a)
        await subscribe(a, connection, "s")
        epoch = await raw.hget(SF.key("s", "meta"), "epoch")
        await raw.publish(SF.channel("s"), f"{epoch}|{entry}")
        await raw.aclose()
        await wait_for(lambda: a.statistics().broker["forged"] >= 1)
        await b.broadcast_to_session("s", ToolResult("s", "u1", "t", "new"))
        await wait_for(lambda: len(events(sink, "s")) == 1)
    assert [(1, "new")] == results(sink, "s")


async def test_an_envelope_moved_to_another_session_is_dropped_and_counted(
    redis_server: Any,
) -> None:
    async with signed_hub(redis_server) as a, signed_hub(redis_server) as b:
        await b.broadcast_to_session("s", ToolResult("s", "u1", "t", "of s"))
        connection, sink = await connect(a)
        await subscribe(a, connection, "other")
        raw = await raw_client(redis_server)
        entry = await raw.lindex(SF.key("s", "log"), 0)
        epoch = await raw.hget(SF.key("other", "meta"), "epoch")
        await raw.publish(SF.channel("other"), f"{epoch}|{entry}")
        await raw.aclose()
        await wait_for(lambda: a.statistics().broker["forged"] >= 1)
        await b.broadcast_to_session("other", ToolResult("other", "u1", "t", "of other"))
        await wait_for(lambda: len(events(sink, "other")) == 1)
    assert [(1, "of other")] == results(sink, "other")


async def test_a_replay_renumbered_in_the_history_is_dropped_and_the_clients_told_to_reload(
    redis_server: Any,
) -> None:
    """Written into the history as the next seq, a replay is not delivered from it
    when a process catches up; the seq it took cannot be delivered in order, so
    clients are told to reload, and later events flow."""
    async with signed_hub(redis_server) as a, signed_hub(redis_server) as b:
        connection, sink = await connect(a)
        await subscribe(a, connection, "s")
        await b.broadcast_to_session("s", ToolResult("s", "u1", "t", "one"))
        await wait_for(lambda: len(events(sink, "s")) == 1)
        raw = await raw_client(redis_server)
        _, _, placeless = (await raw.lindex(SF.key("s", "log"), 0)).partition("|")
        await raw.rpush(SF.key("s", "log"), f"2|{placeless}")
        await raw.hincrby(SF.key("s", "meta"), "seq", 1)
        await raw.aclose()
        await b.broadcast_to_session("s", ToolResult("s", "u3", "t", "three"))  # seq 3: a gap
        await wait_for(lambda: a.statistics().broker["forged"] >= 1)
        await b.broadcast_to_session("s", ToolResult("s", "u4", "t", "four"))
        await wait_for(lambda: results(sink, "s")[-1:] == [(4, "four")])
    assert [(1, "one"), (4, "four")] == results(sink, "s")
    assert [3] == [f["seq"] for f in sink.of_type("subscribed")[1:]], "reload from seq 3"


async def test_two_processes_publishing_to_one_session_share_one_gap_free_sequence(
    redis_server: Any,
) -> None:
    """Pipelined publications of two processes race for the same seqs: each is
    committed once, with no gap, and each process's in the order it made them."""
    async with signed_hub(redis_server) as a, signed_hub(redis_server) as b:
        watcher, sink = await connect(a)
        await subscribe(a, watcher, "s")

        async def produce(h: Hub, name: str) -> None:
            acks = []
            for n in range(300):
                body = encode(ToolResult("s", f"{name}{n}", "t", name))
                acks.append(h.broker.publish("s", body, is_delta=False))
                if n % 7 == 0:
                    await anyio.lowlevel.checkpoint()
            for ack in acks:
                assert ack is not None
                await ack

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, a, "a")
            tg.start_soon(produce, b, "b")
        await wait_for(lambda: len(events(sink, "s")) == 600)
    frames = events(sink, "s")
    check_gap_free(frames)
    for name in ("a", "b"):
        mine = [f["toolUseId"] for f in frames if f["result"] == name]
        assert [f"{name}{n}" for n in range(300)] == mine


@pytest.mark.parametrize("secret", [None, "s3cret"])
async def test_a_session_id_with_a_lone_surrogate_travels_like_any_other(
    redis_server: Any, secret: str | None
) -> None:
    """Any Python string is a valid session id (JSON can carry it), UTF-8 or not."""
    session_id = "s\ud800"
    async with hub(redis_server, secret=secret) as a, hub(redis_server, secret=secret) as b:
        connection, sink = await connect(a)
        await subscribe(a, connection, session_id)
        await b.broadcast_to_session(session_id, ToolResult(session_id, "u1", "t", "one"))
        await wait_for(lambda: len(events(sink, session_id)) == 1)
    assert [(1, "one")] == results(sink, session_id)


async def test_a_client_subscribing_while_the_pubsub_connection_reconnects_resumes(
    redis_server: Any,
) -> None:
    """The session is loaded over the command connection: the reply has its real
    epoch and seq, and later events follow with no gap and no reload."""
    config = HubConfig(client_rate=None, close_timeout=1)
    a = Hub(config, broker=RedisBroker(redis_server.url, client_name="process-a"))
    async with a, hub(redis_server) as b:
        for n in range(5):
            await b.broadcast_to_session("s", ToolResult("s", f"u{n}", "t", str(n)))
        raw = await raw_client(redis_server)
        epoch = await raw.hget(Names("sessionfanout", "").key("s", "meta"), "epoch")
        [victim] = [
            c["id"]
            for c in await raw.client_list()
            if c["name"] == "process-a" and c["sub"] != "0"  # its pub/sub connection
        ]
        await raw.client_kill_filter(_id=victim)
        await raw.aclose()
        connection, sink = await connect(a)
        reply = await subscribe(a, connection, "s", lastSeq=2, epoch=epoch)
        for n in range(5, 10):
            await b.broadcast_to_session("s", ToolResult("s", f"u{n}", "t", str(n)))
        await wait_for(lambda: results(sink, "s")[-1:] == [(10, "9")])
    assert (True, 5, epoch) == (reply["resumed"], reply["seq"], reply["epoch"])
    assert [(n + 1, str(n)) for n in range(2, 10)] == results(sink, "s")
    assert [reply] == sink.of_type("subscribed"), "no reload"


async def test_an_agent_on_one_process_is_seen_and_stopped_from_the_other(
    redis_server: Any,
) -> None:
    started = anyio.Event()

    async def forever() -> Any:
        yield AgentTextDelta("so far", "t1")
        started.set()
        await anyio.sleep_forever()

    async with hub(redis_server) as a, hub(redis_server) as b, anyio.create_task_group() as tg:
        conn, sink = await connect(b)
        await subscribe(b, conn, "s")
        tg.start_soon(a.run_agent, "s", forever())
        await started.wait()
        assert (True, False) == (await b.is_running("s"), await b.is_running("other"))
        assert await b.abort("s", "stopped elsewhere")
        await wait_for(lambda: bool(sink.of_type("complete")))
        with anyio.fail_after(5):
            # Polling on purpose: the run unmarks itself in Redis once it has ended.
            while await b.is_running("s"):  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert not await b.abort("s")
    frames = events(sink, "s")
    check_gap_free(frames)
    assert [("text_delta", "so far"), ("error", "stopped elsewhere"), ("complete", None)] == [
        (f["type"], f.get("delta", f.get("error"))) for f in frames
    ]


async def test_an_answer_whose_decision_message_was_lost_is_read_back_at_the_timeout(
    redis_server: Any,
) -> None:
    """The answer won in Redis but its published decision never reached the
    waiting process (a pub/sub outage): the agent is not left waiting."""
    async with hub(redis_server, prefix="sf") as a, anyio.create_task_group() as tg:
        conn, sink = await connect(a)
        await subscribe(a, conn, "s")
        decisions: list[PermissionDecision] = []

        async def ask() -> None:
            decisions.append(await a.request_permission("s", "bash", "ls", "l", deny_after=0.5))

        tg.start_soon(ask)
        await wait_for(lambda: bool(sink.of_type("permission_request")))
        request_id = sink.of_type("permission_request")[0]["request"]["requestId"]
        raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        body = json.dumps({"r": request_id, "a": True, "w": False}, separators=(",", ":"))
        await raw.set(f"sf:perm:{request_id}", f"d|-|{body}", keepttl=True)  # won, not published
        await raw.aclose()
        await wait_for(lambda: bool(decisions))
    assert (True, False) == (decisions[0].allowed, decisions[0].timed_out)
    assert [] == sink.of_type("permission_timeout"), "an answer decided it, not the timeout"


async def test_subscribes_at_once_on_a_process_all_get_the_sessions_state(
    redis_server: Any,
) -> None:
    async with hub(redis_server) as a, hub(redis_server) as b:
        for n in range(3):
            await a.broadcast_to_session("s", ToolResult("s", f"u{n}", "t", "x"))
        watcher, _ = await connect(a)
        epoch = (await subscribe(a, watcher, "s"))["epoch"]  # the session's, from Redis
        pairs = [await connect(b) for _ in range(3)]
        replies: list[dict[str, Any]] = []

        async def join(connection: Any, sink: RecordingSink) -> None:
            replies.append(await subscribe(b, connection, "s", **{"from": "start"}))

        async with anyio.create_task_group() as tg:
            for connection, sink in pairs:
                tg.start_soon(join, connection, sink)
    assert [(epoch, 3, True, 1)] * 3 == [
        (r["epoch"], r["seq"], r["resumed"], r.get("firstSeq")) for r in replies
    ]


@pytest.mark.parametrize("secret", ["", b"", 42])
def test_a_secret_that_signs_nothing_or_is_not_text_is_refused(secret: Any) -> None:
    with pytest.raises(InvalidArgument, match="secret"):
        RedisBroker("redis://127.0.0.1:1/0", secret=secret)


async def ten_events_then_a_store_left_at_seven(a: Hub, b: Hub, redis_server: Any) -> RecordingSink:
    """A subscriber on ``a`` has seq 1..10 of "s" (published on ``b``); then the
    store loses 8..10, as a replica promoted before it had them would."""
    on_a, sink_a = await connect(a)
    await subscribe(a, on_a, "s")
    for n in range(10):
        await b.broadcast_to_session("s", ToolResult("s", f"u{n}", "t", str(n)))
    await wait_for(lambda: len(events(sink_a, "s")) == 10)
    raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    names = Names("sessionfanout", "")
    await raw.hset(names.key("s", "meta"), "seq", 7)
    await raw.ltrim(names.key("s", "log"), 0, 6)
    await raw.aclose()
    return sink_a


async def test_events_lost_by_the_store_start_a_new_epoch_and_clients_reload(
    redis_server: Any,
) -> None:
    """A lagging replica promoted in a failover lacks the last committed events:
    the seqs they had are not reused for other events (which subscribers that
    had the lost ones would drop as duplicates); the session starts a new epoch
    and its subscribers are told to reload."""
    async with hub(redis_server) as a, hub(redis_server) as b:
        sink_a = await ten_events_then_a_store_left_at_seven(a, b, redis_server)
        for n in range(10, 13):
            await b.broadcast_to_session("s", ToolResult("s", f"u{n}", "t", str(n)))
        await wait_for(lambda: "12" in [f.get("result") for f in sink_a.frames])
    reload = sink_a.of_type("subscribed")[-1]
    assert reload["resumed"] is False
    after = sink_a.frames[sink_a.frames.index(reload) + 1 :]
    assert 1 == reload["seq"], "the new epoch's first event is in the history to reload"
    assert ["11", "12"] == [f["result"] for f in after]
    assert [2, 3] == [f["seq"] for f in after]
    assert reload["epoch"] != sink_a.of_type("subscribed")[0]["epoch"]


async def test_a_store_found_behind_on_reconnect_tells_clients_to_reload(
    redis_server: Any,
) -> None:
    """Catching up after a reconnect, a process that delivered more of a session
    than Redis now holds (in the same epoch) resyncs its clients: the seqs it
    delivered will be numbered again for other events."""
    async with hub(redis_server) as a, hub(redis_server) as b:
        sink_a = await ten_events_then_a_store_left_at_seven(a, b, redis_server)
        raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        await raw.client_kill_filter(_type="pubsub")
        await raw.aclose()
        await wait_for(lambda: len(sink_a.of_type("subscribed")) == 2)
        async with hub(redis_server) as c:  # knows nothing: it numbers from Redis
            await c.broadcast_to_session("s", ToolResult("s", "u-new", "t", "new"))
        await wait_for(lambda: "new" in [f.get("result") for f in sink_a.frames])
    reload = sink_a.of_type("subscribed")[-1]
    assert (False, 7) == (reload["resumed"], reload["seq"])
    assert [("new", 8)] == [
        (f["result"], f["seq"]) for f in sink_a.frames[sink_a.frames.index(reload) + 1 :]
    ]


async def test_presence_spans_processes_and_a_closed_one_leaves_at_once(
    redis_server: Any,
) -> None:
    from sessionfanout import PresenceMember
    from sessionfanout.testing import TestClient

    def info(connection: Any) -> dict[str, Any]:
        return {"user": connection.context}

    config = HubConfig(presence_info=info, presence_interval=0.05, client_rate=None)
    async with Hub(config, broker=RedisBroker(redis_server.url)) as a:
        watcher = await TestClient.connect(a, "w")
        await watcher.subscribe("room", presence=True)
        await watcher.receive(type="presence")
        async with Hub(config, broker=RedisBroker(redis_server.url)) as b:
            member = await TestClient.connect(b, "m")
            await member.subscribe("room")
            joined = await watcher.receive(type="presence")
            assert [{"connectionId": member.connection.id, "info": {"user": "m"}}] == joined[
                "joined"
            ]
            members = await a.presence("room")
            assert PresenceMember(member.connection.id, {"user": "m"}) in members
            assert members == await b.presence("room")
        left = await watcher.receive(type="presence", timeout=5)  # b shut down: no TTL wait
        assert [member.connection.id] == [m["connectionId"] for m in left["left"]]
        assert (PresenceMember(watcher.connection.id, {"user": "w"}),) == await a.presence("room")


@pytest.mark.parametrize("ttl", [0, -1, "30", True, float("nan")])
def test_a_presence_ttl_that_is_not_seconds_is_refused(ttl: Any) -> None:
    with pytest.raises(InvalidArgument, match="presence_ttl"):
        RedisBroker(presence_ttl=ttl)


async def test_presence_is_whole_again_after_redis_restarts_empty(redis_server: Any) -> None:
    """Redis comes back with nothing: each process writes its members again and
    says so, so watchers end up knowing everyone, each member once."""
    from sessionfanout.testing import TestClient

    config = HubConfig(presence_interval=0.05, client_rate=None, close_timeout=1)

    def broker() -> RedisBroker:
        return RedisBroker(redis_server.url, reconnect_max_delay=0.2)

    async with Hub(config, broker=broker()) as a, Hub(config, broker=broker()) as b:
        watcher = await TestClient.connect(a)
        await watcher.subscribe("room", presence=True)
        member = await TestClient.connect(b)
        await member.subscribe("room")
        await watcher.receive(type="presence", where=lambda f: "joined" in f)
        redis_server.kill()
        await wait_for(lambda: not a.broker.available)
        redis_server.start()
        await wait_for(lambda: a.broker.available and b.broker.available, seconds=20)
        everyone = {watcher.connection.id, member.connection.id}

        async def known() -> set[str]:
            return {m.connection_id for m in await a.presence("room")}

        for _ in range(200):  # the members are written again by the next refresh
            if await known() == everyone:
                break
            await anyio.sleep(0.05)
        await anyio.sleep(0.5)  # the last diff is out
        view: set[str] = set()
        for frame in watcher.frames:
            if frame["type"] == "presence":
                view = {m["connectionId"] for m in frame.get("members", [])} or view
                view -= {m["connectionId"] for m in frame.get("left", [])}
                view |= {m["connectionId"] for m in frame.get("joined", [])}
        assert everyone == view


@pytest.mark.parametrize(
    ("argument", "value"),
    [("reconnect_max_delay", "5"), ("reconnect_max_delay", 0), ("reconnect_max_delay", True),
     ("client_name", ""), ("client_name", "two words"), ("client_name", 7)],
)  # fmt: skip
def test_reconnect_delays_and_client_names_that_redis_cannot_take_are_refused(
    argument: str, value: Any
) -> None:
    with pytest.raises(InvalidArgument, match=argument):
        RedisBroker(**{argument: value})


async def test_each_reconnect_that_works_starts_the_backoff_again(redis_server: Any) -> None:
    """A long-lived process whose pub/sub connection drops now and then comes
    back within moments each time, not after the longest backoff."""
    async with hub(redis_server) as a:
        raw = aioredis.Redis.from_url(redis_server.url)
        for drops in range(1, 9):
            await raw.client_kill_filter(_type="pubsub")
            started = anyio.current_time()
            await wait_for(lambda n=drops: a.statistics().broker["reconnects"] >= n)
            assert anyio.current_time() - started < 2.0, f"drop {drops}"
        await raw.aclose()


async def test_subscribing_again_to_a_busy_session_does_not_stall(redis_server: Any) -> None:
    """Unsubscribed and subscribed again while the session's messages still come:
    those on the socket from before must not hold up the new subscription."""
    async with hub(redis_server) as a, anyio.create_task_group() as tg:
        raw = aioredis.Redis.from_url(redis_server.url)
        channel = Names("sessionfanout", "").channel("s")
        stop = anyio.Event()

        async def flood() -> None:
            while not stop.is_set():
                async with raw.pipeline(transaction=False) as pipe:
                    for _ in range(50):
                        pipe.publish(channel, "not an envelope")
                    await pipe.execute()

        tg.start_soon(flood)
        connection, _ = await connect(a)
        for _ in range(10):
            await a.subscribe(connection, "s")
            await a.unsubscribe(connection, "s")
            started = anyio.current_time()
            await a.subscribe(connection, "s")
            assert anyio.current_time() - started < 3.0
            await a.unsubscribe(connection, "s")
        stop.set()
    await raw.aclose()

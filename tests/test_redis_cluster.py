"""RedisBroker on a real Redis Cluster (3 masters, 3 replicas): two hubs stand for
two processes; sessions spread over every shard; a master killed mid-stream.

asyncio only: redis-py's client runs on asyncio.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from redis.crc import key_slot

from sessionfanout import BrokerUnavailable, Complete, ConfigChanged, Hub, HubConfig, ToolResult
from sessionfanout.redis_broker import RedisBroker
from sessionfanout.redis_broker.scripts import Names
from tests.hubtools import RecordingSink, connect, subscribe, wait_for
from tests.redis_cluster import Cluster, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.anyio]

NAMES = Names("sessionfanout", "")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def hub(cluster: Cluster) -> Hub:
    config = HubConfig(batch_interval=0.01, client_rate=None, close_timeout=1)
    return Hub(config, broker=RedisBroker(cluster.url, secret="s3cret"))


def by_shard(cluster: Cluster, count: int, name: str) -> dict[int, list[str]]:
    """``count`` sessions named ``name``... on each master (by port), some with
    braces in their ids."""
    shards: dict[int, list[str]] = defaultdict(list)
    n = 0
    while len(shards) < 3 or min(len(s) for s in shards.values()) < count:
        session_id = f"{{{name}}}{n}" if n % 3 == 0 else f"{name}{n}}}"
        port = cluster.master_of(NAMES.key(session_id, "meta")).port
        if len(shards[port]) < count:
            shards[port].append(session_id)
        n += 1
    return shards


def events(sink: RecordingSink, session_id: str) -> list[dict[str, Any]]:
    return [f for f in sink.session_frames(session_id) if f["type"] != "subscribed"]


class TimedSink(RecordingSink):
    """Also notes when each frame arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[tuple[float, str]] = []

    async def send(self, text: str) -> None:
        await super().send(text)
        self.arrivals.append((time.monotonic(), text))


def test_every_key_and_the_channel_of_a_session_share_one_slot() -> None:
    for session_id in ("s", "{a}b", "}{", "{}", "x{y}z", "\ud800"):
        data = [NAMES.key(session_id, "meta"), NAMES.key(session_id, "log")]
        data += [NAMES.channel(session_id), NAMES.runs_key(session_id)]
        slots = {key_slot(k.encode("utf-8", "surrogatepass")) for k in data}
        assert 1 == len(slots), session_id
        assert session_id == NAMES.session_of(NAMES.channel(session_id))
    assert key_slot(NAMES.key("{a}b", "meta").encode()) != key_slot(b"a")


async def test_streams_on_every_shard_reach_both_processes_in_order(cluster: Cluster) -> None:
    shards = by_shard(cluster, 4, "stream")
    sessions = [s for group in shards.values() for s in group]
    async with hub(cluster) as a, hub(cluster) as b:
        on_a, sink_a = await connect(a)
        on_b, sink_b = await connect(b)
        for session_id in sessions:
            await subscribe(a, on_a, session_id)
            await subscribe(b, on_b, session_id)
        for n in range(30):
            for session_id in sessions:
                producer = (a, b)[n % 2]
                await producer.broadcast_to_session(
                    session_id, ToolResult(session_id, f"u{n}", "t", str(n))
                )
        for session_id in sessions:
            await b.broadcast_to_session(session_id, Complete(session_id))
        await a.broadcast_global(ConfigChanged("theme"))
        for sink in (sink_a, sink_b):
            await wait_for(lambda sink=sink: len(sink.of_type("complete")) == len(sessions))
            await wait_for(lambda sink=sink: bool(sink.of_type("config_changed")))
        await anyio.sleep(0.2)
    for sink in (sink_a, sink_b):
        assert 1 == len(sink.of_type("config_changed")), "every process, once"
        for session_id in sessions:
            frames = events(sink, session_id)
            assert list(range(1, 32)) == [f["seq"] for f in frames]
            assert [str(n) for n in range(30)] == [f["result"] for f in frames[:-1]]
    assert 0 == a.statistics().broker["failed"] + b.statistics().broker["failed"]


async def test_a_client_resumes_on_the_other_process(cluster: Cluster) -> None:
    [session_id, *_] = by_shard(cluster, 1, "resume")[cluster.live_masters().pop()]
    async with hub(cluster) as a, hub(cluster) as b:
        first, first_sink = await connect(a)
        epoch = (await subscribe(a, first, session_id))["epoch"]
        for n in range(20):
            await b.broadcast_to_session(session_id, ToolResult(session_id, f"u{n}", "t", str(n)))
        await wait_for(lambda: len(events(first_sink, session_id)) == 20)
        await a.disconnect(first)
        for n in range(20, 30):
            await b.broadcast_to_session(session_id, ToolResult(session_id, f"u{n}", "t", str(n)))
        second, second_sink = await connect(b)
        reply = await subscribe(b, second, session_id, lastSeq=8, epoch=epoch)
        await wait_for(lambda: len(events(second_sink, session_id)) == 22)
    assert reply["resumed"] is True
    frames = events(first_sink, session_id)[:8] + events(second_sink, session_id)
    assert list(range(1, 31)) == [f["seq"] for f in frames]


async def test_a_session_whose_slot_moves_mid_stream_loses_nothing(cluster: Cluster) -> None:
    """Resharding moves a session's slot to another master while it streams:
    publishing follows (MOVED, ASK, TRYAGAIN), the subscriptions move to the
    new owner, and every event arrives once, in order."""
    [session_id, *_] = by_shard(cluster, 1, "moving").popitem()[1]
    sent: list[str] = []
    failed: list[BaseException] = []
    async with hub(cluster) as a, hub(cluster) as b:
        sinks = []
        for h in (a, b):
            connection, sink = await connect(h)
            await subscribe(h, connection, session_id)
            sinks.append(sink)

        async def stream(count: int) -> None:
            for n in range(len(sent), len(sent) + count):
                try:
                    event = ToolResult(session_id, f"u{n}", "t", str(n))
                    await b.broadcast_to_session(session_id, event)
                    sent.append(str(n))
                except BrokerUnavailable as exc:
                    failed.append(exc)
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            tg.start_soon(stream, 150)
            await anyio.sleep(0.2)
            owner = await anyio.to_thread.run_sync(cluster.migrate, NAMES.key(session_id, "meta"))
        await stream(20)  # after the move
        await wait_for(lambda: all(sent[-1] in {f.get("result") for f in s.frames} for s in sinks))
    assert owner.port == cluster.master_of(NAMES.key(session_id, "meta")).port
    assert [] == failed
    for sink in sinks:
        assert not check_delivered(sink, session_id, sent), "nothing lost: no reload"


async def test_presence_spans_processes_on_every_shard(cluster: Cluster) -> None:
    from sessionfanout import PresenceMember
    from sessionfanout.testing import TestClient

    def info(connection: Any) -> dict[str, Any]:
        return {"user": connection.context}

    sessions = [group[0] for group in by_shard(cluster, 1, "presence").values()]
    config = HubConfig(presence_info=info, presence_interval=0.05, client_rate=None)
    async with Hub(config, broker=RedisBroker(cluster.url)) as a:
        watcher = await TestClient.connect(a, "w")
        for session_id in sessions:
            await watcher.subscribe(session_id, presence=True)
            await watcher.receive(type="presence")
        async with Hub(config, broker=RedisBroker(cluster.url)) as b:
            member = await TestClient.connect(b, "m")
            for session_id in sessions:
                await member.subscribe(session_id)
                joined = await watcher.receive(type="presence")
                assert member.connection.id == joined["joined"][0]["connectionId"]
            for session_id in sessions:
                members = await a.presence(session_id)
                assert PresenceMember(member.connection.id, {"user": "m"}) in members
                assert members == await b.presence(session_id)


async def stream_until(
    stop: anyio.Event,
    producer: Hub,
    session_id: str,
    sent: list[str],
    refused: Callable[[bool], None],
    *,
    deltas: bool = False,
) -> None:
    """Publish a numbered event every 20 ms (and a delta, with ``deltas``) until
    ``stop``: what was accepted goes in ``sent``; a refusal calls ``refused``
    (with whether it was the delta)."""
    n = 0
    while not stop.is_set():
        result = f"{session_id}/{n}"
        try:
            await producer.broadcast_to_session(
                session_id, ToolResult(session_id, f"u{n}", "t", result)
            )
            sent.append(result)
        except BrokerUnavailable:
            refused(False)
        if deltas:
            try:
                await producer.queue_delta(session_id, f"d{n} ")
            except BrokerUnavailable:
                refused(True)
        n += 1
        await anyio.sleep(0.02)


def check_delivered(sink: RecordingSink, session_id: str, sent: list[str]) -> bool:
    """Every event published without error arrived, once, in order, numbered
    without a gap; or the session's clients were told to reload (then what
    follows the signal is gap-free). True when that signal came."""
    frames = sink.session_frames(session_id)
    resynced = [i for i, f in enumerate(frames) if f["type"] == "subscribed" and i > 0]
    after = frames[resynced[-1] :] if resynced else frames
    seqs = [f["seq"] for f in after if f["type"] != "subscribed"]
    start = after[0]["seq"] + 1 if resynced else 1
    assert list(range(start, start + len(seqs))) == seqs, session_id
    got = [f["result"] for f in frames if f["type"] == "tool_result"]
    assert len(got) == len(set(got)), "no duplicate"
    if not resynced:
        assert [r for r in got if r in set(sent)] == [r for r in sent if r in set(got)]
        assert set(sent) <= set(got), f"{session_id}: a silent gap"
    for frame in frames[1:]:
        if frame["type"] == "subscribed":
            assert frame["resumed"] is False
    return bool(resynced)


@pytest.mark.slow
async def test_a_master_killed_mid_stream(own_cluster: Cluster) -> None:
    """Publishing to the dead shard fails only until its replica is promoted; its
    subscribers get every event or the reload signal; the other shards flow on."""
    cluster = own_cluster
    shards = by_shard(cluster, 3, "failover")
    victim_port = next(iter(shards))
    victims = shards[victim_port]
    sessions = [s for group in shards.values() for s in group]
    sent: dict[str, list[str]] = defaultdict(list)
    failures: dict[str, list[float]] = defaultdict(list)
    refused_deltas: dict[str, int] = defaultdict(int)
    killed_at = healed_at = 0.0
    stop = anyio.Event()

    async def stream(producer: Hub, session_id: str) -> None:
        def refused(delta: bool) -> None:
            if delta:
                refused_deltas[session_id] += 1
            else:
                failures[session_id].append(time.monotonic())

        await stream_until(stop, producer, session_id, sent[session_id], refused, deltas=True)

    async with hub(cluster) as a, hub(cluster) as b:
        sinks = []
        for h in (a, b):
            connection, sink = await connect(h, TimedSink())
            for session_id in sessions:
                await subscribe(h, connection, session_id)
            sinks.append(sink)
        async with anyio.create_task_group() as tg:
            for session_id in sessions:
                tg.start_soon(stream, b, session_id)
            await anyio.sleep(1.0)
            victim = next(n for n in cluster.nodes if n.port == victim_port)
            killed_at = time.monotonic()
            victim.kill()
            await anyio.to_thread.run_sync(
                lambda: wait_until(cluster.healthy, 30, "a replica took over")
            )
            healed_at = time.monotonic()
            await anyio.sleep(2.0)
            stop.set()
        await wait_for(lambda: all(delivered(s, sent) for s in sinks), seconds=20)
    others = [s for s in sessions if s not in victims]
    for session_id in sessions:
        for sink in sinks:
            check_delivered(sink, session_id, sent[session_id])
    assert not [s for s in others if failures[s]], "the other shards never refuse"
    assert not [s for s in others if refused_deltas[s]], "nor their deltas"
    assert any(refused_deltas[s] for s in victims), "a dead shard's deltas are refused, not lost"
    for session_id in victims:
        late = [t for t in failures[session_id] if t > healed_at + 1.5 or t < killed_at]
        assert not late, "refused only while no master serves the slot"
        assert sent[session_id][-1] in {f.get("result") for f in sinks[0].frames}
    for sink in sinks:
        assert longest_pause(sink, others, killed_at, healed_at) < 0.75


def delivered(sink: RecordingSink, sent: dict[str, list[str]]) -> bool:
    results = {f.get("result") for f in sink.frames}
    return all(events[-1] in results for events in sent.values() if events)


def longest_pause(sink: TimedSink, sessions: list[str], start: float, end: float) -> float:
    """The longest wait between two frames of one of ``sessions`` around the failover."""
    longest = 0.0
    for session_id in sessions:
        marker = f'"sessionId":"{session_id}"'
        times = [t for t, text in sink.arrivals if marker in text and start - 1 < t < end + 1]
        longest = max([longest, *(b - a for a, b in itertools.pairwise(times))])
    return longest

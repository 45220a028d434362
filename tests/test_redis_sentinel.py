"""RedisBroker through Redis Sentinel (one master, one replica, three sentinels):
two hubs stand for two processes; the master is killed mid-stream.

asyncio only: redis-py's client runs on asyncio.
"""

from __future__ import annotations

import time
from collections import defaultdict

import anyio
import pytest

from sessionfanout import Hub, HubConfig
from sessionfanout.redis_broker import RedisBroker
from tests.hubtools import RecordingSink, connect, subscribe, wait_for
from tests.redis_cluster import Sentinels, wait_until
from tests.test_redis_cluster import check_delivered, delivered, stream_until

pytestmark = [pytest.mark.redis, pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def hub(sentinels: Sentinels) -> Hub:
    config = HubConfig(batch_interval=0.01, client_rate=None, close_timeout=1)
    broker = RedisBroker(sentinels.url, secret="s3cret", reconnect_max_delay=0.5)
    return Hub(config, broker=broker)


async def test_the_master_killed_mid_stream(sentinels: Sentinels) -> None:
    """Events flow through the master the sentinels name; after the master dies,
    the hubs follow the promoted replica; every subscriber got every event
    published without error, or the reload signal; publishing was refused only
    until the promotion."""
    sessions = [f"s{n}" for n in range(6)]
    sent: dict[str, list[str]] = defaultdict(list)
    failures: list[float] = []
    stop = anyio.Event()

    async def stream(producer: Hub, session_id: str) -> None:
        def refused(delta: bool) -> None:
            failures.append(time.monotonic())

        await stream_until(stop, producer, session_id, sent[session_id], refused)

    async with hub(sentinels) as a, hub(sentinels) as b:
        sinks: list[RecordingSink] = []
        for h in (a, b):
            connection, sink = await connect(h)
            for session_id in sessions:
                await subscribe(h, connection, session_id)
            sinks.append(sink)
        async with anyio.create_task_group() as tg:
            for n, session_id in enumerate(sessions):
                tg.start_soon(stream, (a, b)[n % 2], session_id)
            await anyio.sleep(1.0)
            old = sentinels.master.port
            killed_at = time.monotonic()
            sentinels.master.kill()
            await anyio.to_thread.run_sync(
                lambda: wait_until(lambda: sentinels.master_port() != old, 30, "a promotion")
            )
            promoted_at = time.monotonic()
            await anyio.sleep(2.5)
            stop.set()
        await wait_for(lambda: all(delivered(s, sent) for s in sinks), seconds=20)
    for session_id in sessions:
        for sink in sinks:
            check_delivered(sink, session_id, sent[session_id])
    assert failures, "the master was gone for a while"
    assert killed_at < min(failures)
    assert max(failures) < promoted_at + 2.0, "refused only until the promotion is seen"
    for session_id in sessions:
        assert any(r.startswith(session_id) for r in sent[session_id][-5:])

"""Cross-process delivery on loopback Redis: sessionfanout beside its peers.

Run: ``.venv/bin/python benchmarks/backplane.py`` (starts its own redis-server on a
free port; ``--redis URL`` to use another). The peers come from the ``bench``
extra: ``pip install -e '.[bench]'``.

Each implementation gets two independent backplane clients in this process,
standing for two processes: one publishes E small events for one group, the
other has one subscriber that receives them.

- sessionfanout: two Hubs on ``RedisBroker``; ``broadcast_to_session`` on one,
  a sink subscribed on the other (seq numbering and history in Redis included).
- channels_redis: two ``RedisChannelLayer``s; ``group_send`` on one, a
  consumer's ``receive`` loop on the other.
- python-socketio: two ``AsyncServer``s on ``AsyncRedisManager``; ``emit`` to
  a room on one, the room's member counted where its packet would be sent on
  the other.

Throughput: events published back to back (each publish awaited), until the
last one is received. Latency: one event every millisecond; publish-to-receive
per event, p50 and p99. Median of the repetitions.

``--deployments``: sessionfanout alone on one Redis server, a Redis Cluster of
one shard and one of three, across two processes and 1,000 sessions, with
each master's CPU (see ``scaling.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from sessionfanout import Hub, HubConfig, ToolResult
from sessionfanout.redis_broker import RedisBroker

Publish = Callable[[int], Awaitable[None]]
Run = Callable[[Publish], Awaitable[None]]


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found (make test installs Debian's redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder = tempfile.mkdtemp()
    args = [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", folder]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.02)
    return process, f"redis://127.0.0.1:{port}/0"


class Clock:
    """Receive times by event index."""

    def __init__(self, count: int) -> None:
        self.received: list[float] = [0.0] * count
        self.count = 0
        self.done = asyncio.Event()

    def got(self, index: int) -> None:
        self.received[index] = time.perf_counter()
        self.count += 1
        if self.count == len(self.received):
            self.done.set()


async def sessionfanout_pair(
    url: str, clock: Clock, run: Callable[[Publish], Awaitable[None]]
) -> None:
    class Sink:
        async def send(self, text: str) -> None:
            if '"tool_result"' in text:
                clock.got(int(text.split('"toolUseId":"', 1)[1].split('"', 1)[0]))

        async def close(self, code: int, reason: str) -> None:
            pass

    config = HubConfig(client_rate=None, outbox_max_messages=100_000)
    async with Hub(config, broker=RedisBroker(url)) as a, Hub(config, broker=RedisBroker(url)) as b:
        connection = await a.connect(Sink())
        await a.handle_message(connection, '{"type":"subscribe","sessionId":"bench"}')

        async def publish(index: int) -> None:
            await b.broadcast_to_session("bench", ToolResult("bench", str(index), "t", "x" * 40))

        await run(publish)


async def channels_pair(url: str, clock: Clock, run: Run) -> None:
    from channels_redis.core import RedisChannelLayer

    receiver_layer = RedisChannelLayer(hosts=[url])
    sender_layer = RedisChannelLayer(hosts=[url])
    channel = await receiver_layer.new_channel()
    await receiver_layer.group_add("bench", channel)

    async def consume() -> None:
        while True:
            message = await receiver_layer.receive(channel)
            clock.got(message["i"])

    consumer = asyncio.create_task(consume())

    async def publish(index: int) -> None:
        await sender_layer.group_send("bench", {"type": "bench.event", "i": index, "x": "x" * 40})

    try:
        await run(publish)
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await receiver_layer.flush()
        for layer in (receiver_layer, sender_layer):
            await layer.close_pools()


async def socketio_pair(url: str, clock: Clock, run: Run) -> None:
    import socketio

    class CountingServer(socketio.AsyncServer):  # type: ignore[misc]
        async def _send_eio_packet(self, eio_sid: str, eio_pkt: Any) -> None:
            clock.got(int(eio_pkt.data.split('"i":', 1)[1].split(",", 1)[0].rstrip("}]")))

    receiver = CountingServer(client_manager=socketio.AsyncRedisManager(url))
    sender = socketio.AsyncServer(client_manager=socketio.AsyncRedisManager(url))
    for server in (receiver, sender):
        server.manager_initialized = True  # what its first Engine.IO connection would do
        server.manager.initialize()
    manager = receiver.manager
    sid = await manager.connect("eio-1", "/")
    manager.basic_enter_room(sid, "/", "bench")
    await asyncio.sleep(0.5)  # both managers' listeners subscribe

    async def publish(index: int) -> None:
        await sender.emit("event", {"i": index, "x": "x" * 40}, room="bench")

    try:
        await run(publish)
    finally:
        listeners = [t for t in asyncio.all_tasks() if "_thread" in repr(t.get_coro())]
        for task in listeners:
            task.cancel()  # the managers' listeners
        await asyncio.gather(*listeners, return_exceptions=True)


PAIRS = {
    "sessionfanout (RedisBroker)": sessionfanout_pair,
    "channels_redis (group_send)": channels_pair,
    "python-socketio (AsyncRedisManager)": socketio_pair,
}


async def measure(
    pair: Any, url: str, events: int, pace: float | None
) -> tuple[float, list[float]]:
    clock = Clock(events)
    sent: list[float] = [0.0] * events
    elapsed = 0.0

    async def run(publish: Publish) -> None:
        nonlocal elapsed
        start = time.perf_counter()
        for index in range(events):
            sent[index] = time.perf_counter()
            await publish(index)
            if pace:
                await asyncio.sleep(pace)
        await asyncio.wait_for(clock.done.wait(), 60)
        elapsed = time.perf_counter() - start

    await pair(url, clock, run)
    latencies = sorted(r - s for r, s in zip(clock.received, sent, strict=True))
    return events / elapsed, latencies


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p * len(values)))] * 1000


async def main(args: argparse.Namespace) -> None:
    if args.deployments:
        from scaling import main as deployments

        await deployments(args.events * 4, args.paced_events * 2)
        return
    process = None
    url = args.redis
    if url is None:
        process, url = start_redis()
    try:
        print(f"Cross-process delivery over Redis at {url}: 1 publisher, 1 subscriber")
        print(f"{'implementation':<38} {'events/s':>10} {'ratio':>7} {'p50 ms':>8} {'p99 ms':>8}")
        rows = []
        for name, pair in PAIRS.items():
            try:
                rates = [
                    (await measure(pair, url, args.events, None))[0] for _ in range(args.repeat)
                ]
                paced = await measure(pair, url, args.paced_events, 0.001)
            except ImportError as exc:
                print(f"{name:<38} skipped: {exc} (pip install -e '.[bench]')")
                continue
            rows.append((name, statistics.median(rates), pct(paced[1], 0.5), pct(paced[1], 0.99)))
        ours = rows[0][1]
        for name, rate, p50, p99 in rows:
            print(f"{name:<38} {rate:>10,.0f} {rate / ours:>6.2f}x {p50:>8.2f} {p99:>8.2f}")
    finally:
        if process is not None:
            process.terminate()
            process.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", help="a Redis URL (default: start redis-server here)")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--paced-events", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--deployments", action="store_true", help="one server vs a cluster of 1 and 3 shards"
    )
    anyio.run(main, parser.parse_args())

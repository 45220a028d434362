"""sessionfanout beside the alternatives, same workload, one process, one run.

Run: ``.venv/bin/pip install -e '.[bench]'`` then
``.venv/bin/python benchmarks/compare.py`` (``--quick`` for a short run,
``--json`` for machine-readable output). Every figure is from this run on
this machine: compare the ratios, not the absolute numbers.

Workload: S sessions with K subscribers each; E small JSON events per session
({"type":"text_delta","sessionId":...,"delta":...}). Burst: the publisher
sends back to back. Paced: it yields to the event loop after each event, as
a streaming agent does. Every implementation delivers into in-memory sinks
that count; a first, checking run of each verifies order (per session) and
isolation (no sink gets another session's event) before the timed runs.

What each measured path includes:

- bare loop: the event encoded once, then ``for sink in sinks: await
  sink.send(payload)``. No isolation: a slow sink stalls everyone. The floor.
- queue + writer: one asyncio.Queue and one writer task per sink; publish is
  ``put_nowait`` into each queue. The floor for isolated delivery.
- sessionfanout: ``Hub.broadcast_to_session``: ordering barrier, seq
  stamped, history kept, bounded outbox per connection with overflow policy,
  writer per connection (or a direct write when the sink takes one).
- broadcaster (memory backend): ``Broadcast.publish``; one listener task
  fans out to one asyncio.Queue per subscriber, drained by a task each.
- python-socketio: ``AsyncServer.emit(room=...)`` with the in-memory
  manager; counted where the packet would go to Engine.IO (one task each).
- Channels: ``InMemoryChannelLayer.group_send``; a consumer task per
  subscriber drains its channel with ``receive``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import statistics
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from sessionfanout import Hub, HubConfig, TextDelta

CONFIGS = [(1, 100, 2000), (1000, 2, 50), (100, 10, 200)]
SLOW_RUN_SECONDS = 5.0

Publish = Callable[[str, int], Awaitable[None]]
Setup = Callable[[list[list[Any]]], Any]  # async context manager yielding publish


class CountingSink:
    """Counts deliveries; ``try_send`` lets a hub write straight to it."""

    __slots__ = ("count", "done", "target")

    def __init__(self, target: int, done: Callable[[], None]) -> None:
        self.count = 0
        self.target = target
        self.done = done

    def got(self) -> None:
        self.count += 1
        if self.count == self.target:
            self.done()

    async def send(self, text: Any) -> None:
        self.got()

    def try_send(self, text: str) -> bool:
        self.got()
        return True

    async def close(self, code: int, reason: str) -> None:
        pass


class CheckingSink(CountingSink):
    """Also checks order and isolation (used in the verification run)."""

    __slots__ = ("expected", "session")

    def __init__(self, target: int, done: Callable[[], None], session: str) -> None:
        super().__init__(target, done)
        self.session = session
        self.expected = 0

    def check(self, payload: Any) -> None:
        data = payload if isinstance(payload, dict) else json.loads(payload)
        if isinstance(data, list):  # socket.io: ["event", {...}]
            data = data[1]
        if data["type"] in ("connected", "subscribed"):
            return  # the hub's own frames
        assert data["sessionId"] == self.session, "isolation"
        assert data["delta"] == f"token {self.expected} ", "order"
        self.expected += 1
        self.got()

    async def send(self, text: Any) -> None:
        self.check(text)

    def try_send(self, text: str) -> bool:
        self.check(text)
        return True


async def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def payload(session_id: str, n: int) -> dict[str, str]:
    return {"type": "text_delta", "sessionId": session_id, "delta": f"token {n} "}


# -- implementations -----------------------------------------------------------


@asynccontextmanager
async def bare_loop(groups: dict[str, list[Any]]) -> AsyncIterator[Publish]:
    async def publish(session_id: str, n: int) -> None:
        text = json.dumps(payload(session_id, n))
        for sink in groups[session_id]:
            await sink.send(text)

    yield publish


@asynccontextmanager
async def queue_writer(groups: dict[str, list[Any]]) -> AsyncIterator[Publish]:
    async def writer(queue: asyncio.Queue[str], sink: Any) -> None:
        while True:
            await sink.send(await queue.get())

    queues = {s: [asyncio.Queue[str]() for _ in sinks] for s, sinks in groups.items()}
    tasks = [
        asyncio.create_task(writer(q, sink))
        for s, sinks in groups.items()
        for q, sink in zip(queues[s], sinks, strict=True)
    ]

    async def publish(session_id: str, n: int) -> None:
        text = json.dumps(payload(session_id, n))
        for queue in queues[session_id]:
            queue.put_nowait(text)

    try:
        yield publish
    finally:
        await cancel_all(tasks)


class WriterOnly:
    """A sink without ``try_send``: every frame goes through the hub's writer task."""

    __slots__ = ("send",)

    def __init__(self, inner: Any) -> None:
        self.send = inner.send

    async def close(self, code: int, reason: str) -> None:
        pass


def hub_impl(direct: bool) -> Any:
    @asynccontextmanager
    async def sessionfanout(groups: dict[str, list[Any]]) -> AsyncIterator[Publish]:
        config = HubConfig(client_rate=None, outbox_max_messages=1_000_000)
        async with Hub(config) as hub:
            targets = {}
            for session_id, sinks in groups.items():
                for sink in sinks:
                    # The hub's own frames (connected, subscribed) are not deliveries.
                    targets[sink], sink.target = sink.target, -1
                    connection = await hub.connect(sink if direct else WriterOnly(sink))
                    subscribe = json.dumps({"type": "subscribe", "sessionId": session_id})
                    await hub.handle_message(connection, subscribe)
            await asyncio.sleep(0.01)
            for sink, target in targets.items():
                sink.count, sink.target = 0, target

            async def publish(session_id: str, n: int) -> None:
                await hub.broadcast_to_session(session_id, TextDelta(session_id, f"token {n} "))

            yield publish

    return sessionfanout


@asynccontextmanager
async def broadcaster_impl(groups: dict[str, list[Any]]) -> AsyncIterator[Publish]:
    from broadcaster import Broadcast

    broadcast = Broadcast("memory://")
    await broadcast.connect()
    ready = asyncio.Event()
    subscribed = 0
    total = sum(map(len, groups.values()))

    async def consume(session_id: str, sink: Any) -> None:
        nonlocal subscribed
        async with broadcast.subscribe(channel=session_id) as subscriber:
            subscribed += 1
            if subscribed == total:
                ready.set()
            async for event in subscriber:
                await sink.send(event.message)

    tasks = [asyncio.create_task(consume(s, sink)) for s, sinks in groups.items() for sink in sinks]
    await ready.wait()

    async def publish(session_id: str, n: int) -> None:
        await broadcast.publish(channel=session_id, message=json.dumps(payload(session_id, n)))

    try:
        yield publish
    finally:
        await cancel_all(tasks)
        await broadcast.disconnect()


@asynccontextmanager
async def socketio_impl(groups: dict[str, list[Any]]) -> AsyncIterator[Publish]:
    import socketio

    sinks_by_eio: dict[str, Any] = {}

    class CountingServer(socketio.AsyncServer):  # type: ignore[misc]
        async def _send_eio_packet(self, eio_sid: str, eio_pkt: Any) -> None:
            await sinks_by_eio[eio_sid].send(eio_pkt.data[1:])  # drop the packet type digit

    server = CountingServer()
    for session_id, sinks in groups.items():
        for sink in sinks:
            eio_sid = f"eio-{len(sinks_by_eio)}"
            sinks_by_eio[eio_sid] = sink
            sid = await server.manager.connect(eio_sid, "/")
            server.manager.basic_enter_room(sid, "/", session_id)

    async def publish(session_id: str, n: int) -> None:
        await server.emit("event", payload(session_id, n), room=session_id)

    yield publish


@asynccontextmanager
async def channels_impl(
    groups: dict[str, list[Any]], consumers: bool = True
) -> AsyncIterator[Publish]:
    from channels.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer(capacity=1_000_000)

    async def consume(channel: str, sink: Any) -> None:
        while True:
            await sink.send((await layer.receive(channel))["p"])

    tasks = []
    for session_id, sinks in groups.items():
        for sink in sinks:
            channel = await layer.new_channel()
            await layer.group_add(session_id, channel)
            if consumers:
                tasks.append(asyncio.create_task(consume(channel, sink)))

    async def publish(session_id: str, n: int) -> None:
        await layer.group_send(session_id, {"type": "x", "p": payload(session_id, n)})

    try:
        yield publish
    finally:
        await cancel_all(tasks)


IMPLEMENTATIONS: dict[str, Any] = {
    "bare loop (floor)": bare_loop,
    "queue + writer task per sink": queue_writer,
    "sessionfanout Hub": hub_impl(direct=True),
    "sessionfanout Hub (writer only)": hub_impl(direct=False),
    "broadcaster (memory)": broadcaster_impl,
    "python-socketio (rooms)": socketio_impl,
    "Channels (InMemoryChannelLayer)": channels_impl,
}

# Channels' in-memory layer scans every channel on each receive, so 100,000
# waiting consumers take hours to start: its memory figure is group membership
# alone, without a consumer task per subscriber.
MEMORY_VARIANTS: dict[str, Any] = {
    "Channels (InMemoryChannelLayer)": functools.partial(channels_impl, consumers=False),
}

# -- delivery ------------------------------------------------------------------------


async def run_once(impl: Any, config: tuple[int, int, int], paced: bool, check: bool) -> float:
    sessions, subscribers, events = config
    finished = asyncio.Event()
    remaining = sessions * subscribers

    def one_done() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            finished.set()

    groups: dict[str, list[Any]] = {}
    for s in range(sessions):
        session_id = f"session-{s}"
        groups[session_id] = [
            CheckingSink(events, one_done, session_id) if check else CountingSink(events, one_done)
            for _ in range(subscribers)
        ]
    session_ids = list(groups)
    async with impl(groups) as publish:
        gc.collect()
        start = time.perf_counter()
        for n in range(events):
            for session_id in session_ids:
                await publish(session_id, n)
                if paced:
                    await asyncio.sleep(0)
        await asyncio.wait_for(finished.wait(), 300)
        elapsed = time.perf_counter() - start
    return elapsed / (sessions * subscribers * events) * 1e6


async def delivery(repeat: int, scale: float, only: list[str]) -> list[dict[str, Any]]:
    """Every implementation, each configuration and mode; the timed runs take
    turns (one of each, then again) so that a noisy spell of the machine falls
    on all of them alike rather than on one."""
    rows = []
    names = [n for n in IMPLEMENTATIONS if not only or any(o in n for o in only)]
    for sessions, subscribers, events in CONFIGS:
        config = (sessions, subscribers, max(2, int(events * scale)))
        for paced in (False, True):
            times: dict[str, list[float]] = {}
            slow: set[str] = set()
            for name in names:
                try:
                    started = time.perf_counter()
                    await run_once(IMPLEMENTATIONS[name], config, paced, check=True)
                except ImportError as exc:
                    print(f"  {name}: skipped ({exc}); pip install -e '.[bench]'")
                    continue
                times[name] = []
                # The slowest peers take minutes a run: one timed run keeps the
                # suite short, and their ratios are far from any close call.
                if time.perf_counter() - started > SLOW_RUN_SECONDS:
                    slow.add(name)
            for turn in range(repeat):
                for name, runs in times.items():
                    if turn == 0 or name not in slow:
                        impl = IMPLEMENTATIONS[name]
                        runs.append(await run_once(impl, config, paced, check=False))
            for name, runs in times.items():
                rows.append(
                    {
                        "runs": len(runs),
                        "implementation": name,
                        "sessions": sessions,
                        "subscribers": subscribers,
                        "events": config[2],
                        "mode": "paced" if paced else "burst",
                        "us_per_delivery": statistics.median(runs),
                    }
                )
    return rows


def print_delivery(rows: list[dict[str, Any]]) -> None:
    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row["sessions"], row["subscribers"], row["events"], row["mode"])

    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    for (s, k, e, mode), members in groups.items():
        floor = next((r for r in members if r["implementation"].startswith("bare")), members[0])
        queue = next((r for r in members if r["implementation"].startswith("queue")), None)
        hub = next((r for r in members if r["implementation"] == "sessionfanout Hub"), None)
        print(f"\nS={s} K={k} E={e}, {mode}")
        columns = ("deliveries/s", 13), ("us/delivery", 12), ("x bare", 7), ("x Hub", 7)
        print(f"  {'implementation':<34}" + "".join(f" {n:>{w}}" for n, w in columns))
        for row in members:
            us = row["us_per_delivery"]
            row["ratio_to_bare"] = us / floor["us_per_delivery"]
            row["ratio_to_hub"] = us / hub["us_per_delivery"] if hub else None
            vs_hub = f"{row['ratio_to_hub']:>6.1f}x" if hub else "      -"
            print(
                f"  {row['implementation']:<34} {1e6 / us:>13,.0f} {us:>12.3f}"
                f" {row['ratio_to_bare']:>6.1f}x {vs_hub}"
            )
        if hub and queue:
            print(f"  Hub / queue floor: {hub['us_per_delivery'] / queue['us_per_delivery']:.2f}x")


# -- memory ------------------------------------------------------------------------------


async def memory(sessions: int, subscribers: int, only: list[str]) -> list[dict[str, Any]]:
    """tracemalloc over subscribing (and, for us, connecting) idle subscribers."""
    rows = []
    for name, impl in {**IMPLEMENTATIONS, **MEMORY_VARIANTS}.items():
        if name.startswith("bare") or (only and not any(o in name for o in only)):
            continue
        groups = {
            f"session-{s}": [CountingSink(1, lambda: None) for _ in range(subscribers)]
            for s in range(sessions)
        }
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        try:
            async with impl(groups):
                await asyncio.sleep(0.05)
                gc.collect()
                after = tracemalloc.get_traced_memory()[0]
        except ImportError:
            tracemalloc.stop()
            continue
        tracemalloc.stop()
        count = sessions * subscribers
        rows.append({"implementation": name, "bytes_per_subscriber": (after - before) / count})
    return rows


async def idle_writers_retired(hub: Hub) -> None:
    """Writers retire after ``writer_idle_seconds`` idle; wait until all have."""
    # Polling on purpose: a statistics snapshot has no event to wait on.
    while hub.statistics().writers:  # noqa: ASYNC110
        await asyncio.sleep(0.1)


async def hub_memory(sessions: int, subscribers: int, direct: bool) -> dict[str, float]:
    """Our figures apart: an idle connection, then an idle subscription of it.

    ``direct``: sinks that take frames with ``try_send``; otherwise every frame
    goes through a writer task: measured once idle writers have retired, and
    (in a second hub) with every writer parked, waiting for a frame.
    """
    count = sessions * subscribers
    figures: dict[str, float] = {}
    for parked in (False, True) if not direct else (False,):
        idle_seconds = 3600.0 if parked else 0.2
        config = HubConfig(client_rate=None, writer_idle_seconds=idle_seconds)
        async with Hub(config) as hub:
            sinks = [CountingSink(0, lambda: None) for _ in range(count)]
            if not direct:
                sinks = [WriterOnly(sink) for sink in sinks]
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            connections = [await hub.connect(sink) for sink in sinks]
            if parked:
                # Every writer has sent its connection's first frame and waits.
                while hub.statistics().frames_sent < count:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
                gc.collect()
                figures["connection_with_parked_writer_bytes"] = (
                    tracemalloc.get_traced_memory()[0] - base
                ) / count
                tracemalloc.stop()
                continue
            await idle_writers_retired(hub)
            gc.collect()
            connected = tracemalloc.get_traced_memory()[0]
            for n, connection in enumerate(connections):
                frame = json.dumps({"type": "subscribe", "sessionId": f"session-{n % sessions}"})
                await hub.handle_message(connection, frame)
            await idle_writers_retired(hub)
            gc.collect()
            subscribed = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
        figures["idle_connection_bytes"] = (connected - base) / count
        figures["idle_subscription_bytes"] = (subscribed - connected) / count
    return figures


async def main(args: argparse.Namespace) -> None:
    scale = 0.1 if args.quick else 1.0
    repeat = 3 if args.quick else args.repeat
    result: dict[str, Any] = {}
    result["delivery"] = rows = await delivery(repeat, scale, args.only)
    if not args.json:
        print_delivery(rows)
    mem_sessions = 1000 if args.quick else 10_000
    result["memory"] = mem = await memory(mem_sessions, 10, args.only)
    result["hub_memory"] = ours = {
        kind: await hub_memory(mem_sessions, 10, direct)
        for kind, direct in (("direct", True), ("writer", False))
    }
    if not args.json:
        print(f"\nMemory per idle subscriber ({mem_sessions:,} sessions x 10, tracemalloc)")
        for row in mem:
            print(f"  {row['implementation']:<34} {row['bytes_per_subscriber']:>10,.0f} B")
        for kind, figures in ours.items():
            print(
                f"  sessionfanout ({kind} sinks): idle connection"
                f" {figures['idle_connection_bytes']:,.0f} B, idle subscription of a connection"
                f" {figures['idle_subscription_bytes']:,.0f} B"
            )
            if "connection_with_parked_writer_bytes" in figures:
                print(
                    "    idle connection whose writer still waits (before it retires):"
                    f" {figures['connection_with_parked_writer_bytes']:,.0f} B"
                )
    if not args.no_batching:
        from fanout import batching_table

        for direct in (False, True):
            await batching_table(1000, 50, 1 if args.quick else 5, direct)
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of the events, fewer runs")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--only", nargs="*", default=[], help="implementations whose name contains")
    parser.add_argument("--no-batching", action="store_true")
    asyncio.run(main(parser.parse_args()))

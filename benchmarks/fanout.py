"""Hub fan-out cost beside a bare send loop, idle memory, and batching under load.

Run: ``.venv/bin/python benchmarks/fanout.py`` (``--quick`` for a short run).
Every figure comes from this run on this machine; compare the ratios.

- Delivery: S sessions x K subscribers, E events per session published with
  ``broadcast_to_session``; the time until every in-memory sink has counted
  every delivery, per delivery. Beside it, in the same run, the floor: each
  event encoded once, then ``for sink in sinks: await sink.send(payload)``.
- Memory: tracemalloc over connecting idle sinks (with their writer tasks),
  then over subscribing them.
- Batching: many sessions streaming deltas at a steady rate; frames per
  second per session and the latency each delta gains by being batched.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import deque
from typing import Any

import anyio
import anyio.lowlevel

from sessionfanout import Hub, HubConfig, TextDelta, encode


class CountingSink:
    def __init__(self) -> None:
        self.count = 0

    async def send(self, text: str) -> None:
        self.count += 1

    async def close(self, code: int, reason: str) -> None:
        pass


async def until(predicate: Any) -> None:
    while not predicate():
        await anyio.lowlevel.checkpoint()


async def bare_loop(sessions: int, subscribers: int, events: int) -> float:
    sinks = {f"s{s}": [CountingSink() for _ in range(subscribers)] for s in range(sessions)}
    start = time.perf_counter()
    for n in range(events):
        for session_id, session_sinks in sinks.items():
            payload = encode(TextDelta(session_id, f"token {n} ", seq=n + 1))
            for sink in session_sinks:
                await sink.send(payload)
    return time.perf_counter() - start


async def hub_run(sessions: int, subscribers: int, events: int) -> float:
    config = HubConfig(client_rate=None, outbox_max_messages=events + 10)
    async with Hub(config) as hub:
        sinks = []
        for s in range(sessions):
            for _ in range(subscribers):
                sink = CountingSink()
                connection = await hub.connect(sink)
                await hub.handle_message(connection, f'{{"type":"subscribe","sessionId":"s{s}"}}')
                sinks.append(sink)
        await until(lambda: all(sink.count == 2 for sink in sinks))
        session_ids = [f"s{s}" for s in range(sessions)]
        start = time.perf_counter()
        for n in range(events):
            for session_id in session_ids:
                await hub.broadcast_to_session(session_id, TextDelta(session_id, f"token {n} "))
        await until(lambda: all(sink.count == events + 2 for sink in sinks))
        return time.perf_counter() - start


async def delivery_table(repeat: int, scale: float) -> None:
    configs = [(1, 100, 2000), (1000, 2, 50), (100, 10, 200)]
    print("Delivery cost, microseconds per delivery (median of", repeat, "runs)")
    print(f"{'S x K x E':<18} {'bare loop':>10} {'Hub':>10} {'Hub/bare':>9}")
    for sessions, subscribers, events in configs:
        events = max(1, int(events * scale))
        deliveries = sessions * subscribers * events
        bare = statistics.median(
            [await bare_loop(sessions, subscribers, events) for _ in range(repeat)]
        )
        hub = statistics.median(
            [await hub_run(sessions, subscribers, events) for _ in range(repeat)]
        )
        label = f"{sessions}x{subscribers}x{events}"
        bare_us, hub_us = bare / deliveries * 1e6, hub / deliveries * 1e6
        print(f"{label:<18} {bare_us:>10.2f} {hub_us:>10.2f} {hub_us / bare_us:>8.1f}x")


async def memory_table(sessions: int, subscribers: int) -> None:
    from compare import hub_memory  # one measurement, shared with the comparison suite

    print(f"\nMemory ({sessions:,} sessions x {subscribers} subscribers, tracemalloc)")
    for kind, direct in (("direct", True), ("writer", False)):
        figures = await hub_memory(sessions, subscribers, direct)
        print(
            f"  {kind} sinks: idle connection {figures['idle_connection_bytes']:8.0f} B,"
            f" idle subscription of a connection {figures['idle_subscription_bytes']:6.0f} B"
        )


async def batching_table(sessions: int, rate: float, seconds: float, direct: bool = False) -> None:
    """``direct``: the sinks take frames with ``try_send`` (no writer task)."""
    interval = 0.05
    queued: dict[str, deque[float]] = {f"s{n}": deque() for n in range(sessions)}
    latencies: list[float] = []
    frames = 0

    class TimingSink(CountingSink):
        def __init__(self, session_id: str) -> None:
            super().__init__()
            self.pending = queued[session_id]

        async def send(self, text: str) -> None:
            self.record(text)

        def record(self, text: str) -> None:
            nonlocal frames
            if '"text_delta"' not in text:
                return
            frames += 1
            now = time.perf_counter()
            for _ in range(text.count("|")):
                latencies.append(now - self.pending.popleft())

    class DirectTimingSink(TimingSink):
        def try_send(self, text: str) -> bool:
            self.record(text)
            return True

    sink_type = DirectTimingSink if direct else TimingSink

    async with Hub(HubConfig(batch_interval=interval, client_rate=None)) as hub:
        for session_id in queued:
            connection = await hub.connect(sink_type(session_id))
            await hub.handle_message(
                connection, f'{{"type":"subscribe","sessionId":"{session_id}"}}'
            )
        session_ids = list(queued)
        tick = 0.002
        per_tick = max(1, int(sessions * rate * tick))
        start = time.perf_counter()
        next_tick = start
        cursor = 0
        while time.perf_counter() - start < seconds:
            for _ in range(per_tick):
                session_id = session_ids[cursor % sessions]
                cursor += 1
                queued[session_id].append(time.perf_counter())
                await hub.queue_delta(session_id, "tok|", "turn")
            next_tick += tick
            await anyio.sleep(max(0.0, next_tick - time.perf_counter()))
        elapsed = time.perf_counter() - start
        await until(lambda: all(not q for q in queued.values()))
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    offered = cursor / elapsed / sessions
    how = "direct writes" if direct else "writer tasks"
    print(
        f"\nBatching under load ({sessions:,} sessions, {rate:.0f} deltas/s each,"
        f" {seconds:.0f} s, {how})"
    )
    print(f"  deltas per second per session offered: {offered:8.1f}")
    print(f"  frames per second per session sent:    {frames / elapsed / sessions:8.1f}")
    print(
        f"  added latency p50 / p99 / max (ms):    {pct(0.5):.1f} / {pct(0.99):.1f} / {pct(1):.1f}"
    )
    print(f"  (batch interval {interval * 1000:.0f} ms)")


async def main(args: argparse.Namespace) -> None:
    scale = 0.25 if args.quick else 1.0
    await delivery_table(3 if args.quick else 5, scale)
    await memory_table(1000 if args.quick else 10_000, 10 if not args.quick else 2)
    for direct in (False, True):
        await batching_table(1000, 50, 1 if args.quick else 5, direct)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller workloads")
    anyio.run(main, parser.parse_args())

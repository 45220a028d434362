"""Cost of the core: encoding per event, batching per delta, delivery per frame.

Run: ``.venv/bin/python benchmarks/core.py`` (or ``make bench``). Prints a
table; numbers are for this machine and this run, compare them within a run.

Each optimisation the library keeps is measured here beside its plain
baseline, in the same run:

- compiled per-class encoders vs the cattrs converter plus ``json.dumps``;
- the direct write to an idle sink that offers ``try_send`` vs the same
  frames through an outbox and a writer task.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from fanout import CountingSink

from sessionfanout import (
    Complete,
    DeltaBatcher,
    Hub,
    HubConfig,
    PermissionRequest,
    PermissionRequestInfo,
    TextComplete,
    TextDelta,
    ToolResult,
    ToolStart,
    decode_client,
    encode,
    with_seq,
)
from sessionfanout.codec import unstructure
from sessionfanout.publishing import BATCH_EARLY
from sessionfanout.sse import SseFramer

Row = tuple[str, float]


def per_call(fn: Callable[[], Any], calls: int, repeat: int = 5) -> float:
    """Median microseconds per call over ``repeat`` runs of ``calls`` calls."""
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(runs)


def encode_rows(calls: int) -> list[tuple[str, float]]:
    events: list[tuple[str, Any]] = [
        ("text_delta", TextDelta("session-0001", "Hello, streaming world. ", "turn-1")),
        ("text_complete", TextComplete("session-0001", "Hello " * 200, False, "turn-1")),
        ("tool_start", ToolStart("session-0001", "bash", "toolu_01", {"command": "ls -la"})),
        ("tool_result", ToolResult("session-0001", "toolu_01", "bash", "total 0", is_error=False)),
        (
            "permission_request",
            PermissionRequest(
                "session-0001", PermissionRequestInfo("r" * 22, "bash", "rm -rf build", "clean")
            ),
        ),
        ("complete", Complete("session-0001")),
    ]
    rows = []
    for name, event in events:
        compiled = per_call(lambda e=event: encode(e), calls)
        plain = per_call(lambda e=event: _converter_json(e), calls)
        rows.append((f"encode {name}", compiled))
        rows.append((f"  baseline: converter + json.dumps ({plain / compiled:.1f}x)", plain))
    body = encode(events[0][1])
    stamp = per_call(lambda: with_seq(body, 12345), calls)
    rows.append(("with_seq (stamp seq on an encoded frame)", stamp))
    raw = json.dumps({"type": "subscribe", "sessionId": "session-0001", "lastSeq": 5, "epoch": "e"})
    rows.append(("decode_client subscribe", per_call(lambda: decode_client(raw), calls)))
    return rows


def _converter_json(event: Any) -> str:
    return json.dumps(unstructure(event), separators=(",", ":"))


def batcher_rows(sessions: int, deltas_per_session: int) -> list[tuple[str, float]]:
    """Every session streams; deltas arrive round-robin, due() runs every 5 ms of virtual time."""
    session_ids = [f"session-{n:05d}" for n in range(sessions)]
    total = sessions * deltas_per_session
    step = 0.02 / sessions  # each session gets a delta every 20 ms (50 deltas/s)

    def drive(add: Callable[..., Any], due: Callable[[float], Any]) -> float:
        now = 0.0
        next_due = 0.005
        start = time.perf_counter()
        for i in range(total):
            now += step
            add(session_ids[i % sessions], "token ", "turn-1", now)
            if now >= next_due:
                due(now)
                next_due += 0.005
        return (time.perf_counter() - start) / total * 1e6

    def nothing(*args: Any) -> Any:
        return ()

    driver, with_batcher = [], []
    for _ in range(5):
        driver.append(drive(nothing, nothing))
        batcher = DeltaBatcher(0.05, 16384, early=0.05 * BATCH_EARLY)  # as the hub makes it
        with_batcher.append(drive(batcher.add, batcher.due))
        batcher.flush_all()
    loop = statistics.median(driver)
    gross = statistics.median(with_batcher)
    return [
        (f"driver loop alone (calls a no-op), {sessions:,} sessions", loop),
        (f"driver loop with batcher add+due, {sessions:,} sessions", gross),
        (f"batcher add+due per delta, {sessions:,} concurrent sessions", gross - loop),
    ]


class _SseSink(CountingSink):
    """The writer path with each frame framed as Server-Sent Events, as the
    example app's event streams do."""

    def __init__(self) -> None:
        super().__init__()
        self.framer = SseFramer()

    async def send(self, text: str) -> None:
        self.framer.frame(text)
        self.count += 1


class _DirectSink(CountingSink):
    def try_send(self, text: str) -> bool:
        self.count += 1
        return True


async def _deliver(
    sink_type: type[CountingSink], sessions: int, subscribers: int, events: int
) -> float:
    """Microseconds per delivered frame, paced as a streaming agent publishes."""
    async with Hub(HubConfig(client_rate=None)) as hub:
        sinks = []
        for s in range(sessions):
            for _ in range(subscribers):
                sink = sink_type()
                await hub.subscribe(await hub.connect(sink), f"session-{s}")
                sinks.append(sink)
        before = sum(sink.count for sink in sinks)
        start = time.perf_counter()
        for n in range(events):
            for s in range(sessions):
                session_id = f"session-{s}"
                await hub.broadcast_to_session(session_id, ToolResult(session_id, str(n), "t", "x"))
                await asyncio.sleep(0)
        # Polling on purpose: counting sinks have nothing to wait on.
        while sum(sink.count for sink in sinks) - before < sessions * subscribers * events:  # noqa: ASYNC110
            await asyncio.sleep(0)
        return (time.perf_counter() - start) / (sessions * subscribers * events) * 1e6


def delivery_rows(sessions: int = 100, subscribers: int = 2, events: int = 100) -> list[Row]:
    sinks = (_DirectSink, CountingSink, _SseSink)
    runs: list[list[float]] = [[] for _ in sinks]
    for _ in range(5):
        for sink, times in zip(sinks, runs, strict=True):
            times.append(asyncio.run(_deliver(sink, sessions, subscribers, events)))
    fast, plain, framed = (statistics.median(times) for times in runs)
    shape = f"{sessions}x{subscribers}, paced"
    return [
        (f"deliver a frame, direct write (try_send), {shape}", fast),
        (f"  baseline: outbox + writer task ({plain / fast:.1f}x)", plain),
        (f"deliver a frame as SSE: writer task + framing ({framed / plain:.2f}x writer)", framed),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--sessions", type=int, default=10_000)
    args = parser.parse_args()
    rows = encode_rows(args.calls) + delivery_rows() + batcher_rows(args.sessions, 20)
    width = max(len(name) for name, _ in rows)
    print(f"{'operation':<{width}}  us/op")
    print(f"{'-' * width}  -----")
    for name, micros in rows:
        print(f"{name:<{width}}  {micros:5.2f}")
    batch_cost = rows[-1][1]
    verdict = "meets" if batch_cost <= 2.0 else "misses"
    print(f"\nbatcher: {batch_cost:.2f} us per delta ({verdict} the 2 us aim)")


if __name__ == "__main__":
    main()

"""End to end over real sockets: a real uvicorn server, real WebSocket clients.

    make e2e                         # or: .venv/bin/python benchmarks/e2e.py
    .venv/bin/python benchmarks/e2e.py --quick --impls sf sf0 bare

For each load, each implementation of ``e2e_server.py`` runs in its own
uvicorn process, with its producers inside it; two client processes hold the
WebSocket connections (one per subscriber; a session's subscribers are
spread over both). Runs are interleaved (every implementation once, then
again) and repeated; the table shows medians.

Measured, per run:

- server CPU per 1,000 delivered tokens: the server process's own CPU time
  (user + system) from the start of the producers until the last client has
  every token, producers included (the same work for everyone);
- delivered tokens/s: tokens that arrived, in order, over that window;
- token latency p50/p99/max: from the producer's emit time (in the token)
  to the frame's arrival at the client (both on this machine's clock);
- frames/s per client, and the client processes' CPU share of the window
  (over 90% of a core: the run was client-bound, and says so).

Every client checks its text: the tokens ``0..n-1`` in order, then the end
marker with ``n``. A run where any client's text is wrong or incomplete is
marked failed. Loads: 100 sessions x 2 subscribers and 20 x 20 at 50
tokens/s each, and saturation (50 x 4, producers flat out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import attrs
import httpx

HERE = Path(__file__).resolve().parent
IMPLS = ("sf", "sf0", "sf-plain", "bare", "broadcaster", "socketio")
"""What a run compares (``e2e_server.py`` also has ``producers``, measured
with every paced load: what the producers cost by themselves)."""
LABELS = {
    "sf": "sessionfanout, 50 ms batching",
    "sf0": "sessionfanout, batch_interval=0",
    "sf-plain": "sessionfanout, batch_interval=0, no try_send",
    "bare": "bare Starlette loop",
    "broadcaster": "broadcaster + Starlette",
    "socketio": "python-socketio ASGI",
}
CLIENT_PROCESSES = 2


@attrs.frozen
class Load:
    name: str
    sessions: int
    subscribers: int
    rate: float  # tokens/s per session; 0: flat out
    duration: float


# -- the client process ------------------------------------------------------------------------


class Stream:
    """One connection's session: checks its tokens and times them."""

    __slots__ = ("buffer", "done", "expected", "ok")

    def __init__(self) -> None:
        self.buffer = ""
        self.expected = 0
        self.done = False
        self.ok = True

    def take(self, delta: str, now_us: int, latencies: dict[int, int]) -> int:
        """Tokens checked in ``delta``; latencies counted in 0.1 ms buckets."""
        self.buffer += delta
        *tokens, self.buffer = self.buffer.split(";")
        for token in tokens:
            if token[0] == "E":
                self.ok = self.ok and int(token[1:]) == self.expected
                self.done = True
                continue
            index, _, emitted = token.partition("@")
            if int(index) != self.expected:
                self.ok = False
            self.expected += 1
            bucket = (now_us - int(emitted)) // 100
            latencies[bucket] = latencies.get(bucket, 0) + 1
        return len(tokens)


async def client_main(spec: dict[str, Any]) -> None:
    """Connect, subscribe, say ready, then read until every stream ended."""
    import websockets

    impl, port = spec["impl"], spec["port"]
    latencies: dict[int, int] = {}
    streams: list[Stream] = []
    frames = 0
    last_arrival = 0.0

    async def open_one(session_id: str) -> Any:
        if impl == "socketio":
            url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
            ws = await websockets.connect(url, max_size=None, ping_interval=None)
            await ws.recv()  # the Engine.IO open packet
            await ws.send("40")
            while not str(await ws.recv()).startswith("40"):
                pass
            await ws.send("42" + json.dumps(["subscribe", session_id]))
            while not str(await ws.recv()).startswith('42["subscribed"'):
                pass
            return ws
        url = f"ws://127.0.0.1:{port}/ws"
        ws = await websockets.connect(url, max_size=None, ping_interval=None)
        await ws.send(json.dumps({"type": "subscribe", "sessionId": session_id}))
        while json.loads(await ws.recv())["type"] != "subscribed":
            pass
        return ws

    async def read(ws: Any, stream: Stream) -> None:
        nonlocal frames, last_arrival
        async for text in ws:
            if impl == "socketio":
                if text == "2":  # Engine.IO ping
                    await ws.send("3")
                    continue
                if not text.startswith("42"):
                    continue
                frame = json.loads(text[2:])[1]
            else:
                frame = json.loads(text)
            if frame.get("type") != "text_delta":
                continue
            now = time.time()
            frames += 1
            stream.take(frame["delta"], int(now * 1e6), latencies)
            last_arrival = now
            if stream.done:
                break

    semaphore = asyncio.Semaphore(50)

    async def opened(session_id: str) -> Any:
        async with semaphore:
            return await open_one(session_id)

    sockets = await asyncio.gather(*(opened(s) for s in spec["sessions"]))
    streams = [Stream() for _ in sockets]
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    cpu0 = time.process_time()
    with suppress(TimeoutError):
        async with asyncio.timeout(spec["timeout"]):
            await asyncio.gather(*(read(ws, st) for ws, st in zip(sockets, streams, strict=True)))
    cpu = time.process_time() - cpu0
    result = {
        "tokens": sum(s.expected for s in streams if s.ok),
        "complete": sum(1 for s in streams if s.ok and s.done),
        "streams": len(streams),
        "frames": frames,
        "latencies": latencies,
        "cpu": cpu,
        "last_arrival": last_arrival,
    }
    print(json.dumps(result), flush=True)
    for ws in sockets:
        await ws.close()


# -- the parent: servers, clients, figures ------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PROFILE: list[str] = []
"""--profile: a folder for each server's cProfile statistics."""


@contextmanager
def server(impl: str) -> Iterator[int]:
    port = free_port()
    args = [sys.executable, str(HERE / "e2e_server.py"), "--impl", impl, "--port", str(port)]
    if PROFILE:
        args += ["--profile", str(Path(PROFILE[0]) / f"{impl}.prof")]
    process = subprocess.Popen(args, cwd=HERE.parent)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/cpu", timeout=1)
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the {impl} server did not start") from None
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def server_cpu(port: int) -> float:
    return float(httpx.get(f"http://127.0.0.1:{port}/cpu", timeout=10).json()["cpu"])


def producers_cpu(load: Load) -> float:
    """CPU seconds the producers of a paced load cost by themselves."""
    with server("producers") as port:
        cpu0 = server_cpu(port)
        spec = {"sessions": [f"s{n}" for n in range(load.sessions)], "rate": load.rate}
        httpx.post(f"http://127.0.0.1:{port}/start", json={**spec, "duration": load.duration})
        time.sleep(load.duration)
        while httpx.get(f"http://127.0.0.1:{port}/cpu", timeout=10).json()["producing"]:
            time.sleep(0.05)
        return server_cpu(port) - cpu0


def run_once(impl: str, load: Load) -> dict[str, Any]:
    sessions = [f"s{n}" for n in range(load.sessions)]
    connections = [s for s in sessions for _ in range(load.subscribers)]
    timeout = load.duration + 20
    with server(impl) as port:
        clients = []
        for index in range(CLIENT_PROCESSES):
            spec = {
                "impl": impl,
                "port": port,
                "sessions": connections[index::CLIENT_PROCESSES],
                "timeout": timeout,
            }
            clients.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--client", json.dumps(spec)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for client in clients:
            assert client.stdout is not None
            if client.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a {impl} client failed to connect")
        for client in clients:
            assert client.stdin is not None
            client.stdin.write("go\n")
            client.stdin.flush()
        cpu0 = server_cpu(port)
        started = time.time()
        spec = {"sessions": sessions, "rate": load.rate, "duration": load.duration}
        httpx.post(f"http://127.0.0.1:{port}/start", json=spec, timeout=10)
        results = []
        for client in clients:
            out, _ = client.communicate(timeout=timeout + 30)
            results.append(json.loads(out.strip().splitlines()[-1]))
        cpu1 = server_cpu(port)
    return summarise(results, cpu1 - cpu0, started, load)


def percentile(histogram: dict[int, int], fraction: float) -> float:
    total = sum(histogram.values())
    target = fraction * total
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= target:
            return bucket / 10
    return 0.0


def summarise(
    results: list[dict[str, Any]], server_seconds: float, started: float, load: Load
) -> dict[str, Any]:
    latencies: dict[int, int] = {}
    for result in results:
        for bucket, count in result["latencies"].items():
            latencies[int(bucket)] = latencies.get(int(bucket), 0) + count
    tokens = sum(r["tokens"] for r in results)
    window = max(max(r["last_arrival"] for r in results) - started, 1e-3)
    streams = sum(r["streams"] for r in results)
    return {
        "verified": all(r["complete"] == r["streams"] for r in results),
        "tokens": tokens,
        "tokens_per_s": tokens / window,
        "cpu_ms_per_1000": 1e6 * server_seconds / max(tokens, 1),
        "cpu_seconds": server_seconds,
        "server_cpu_share": server_seconds / window,
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies, default=0) / 10,
        "frames_per_s_per_client": sum(r["frames"] for r in results) / window / streams,
        "client_cpu_share": max(r["cpu"] for r in results) / window,
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and k != "verified"]
    summary = {k: statistics.median(r[k] for r in runs) for k in keys}
    summary["verified"] = all(r.get("verified", True) for r in runs)
    summary["client_bound"] = any(r.get("client_cpu_share", 0) > 0.9 for r in runs)
    return summary


def print_table(load: Load, summaries: dict[str, dict[str, Any]]) -> None:
    rate = f"{load.rate:g} tokens/s" if load.rate else "flat out"
    print(f"\n{load.name}: {load.sessions} sessions x {load.subscribers} subscribers, {rate}")
    print(
        "| server | CPU ms / 1,000 tokens | tokens/s | latency p50 / p99 / max (ms)"
        " | frames/s per client | client CPU | verified |"
    )
    print("|---|---|---|---|---|---|---|")
    for impl, s in summaries.items():
        if impl == "producers":
            continue
        bound = " (client-bound)" if s["client_bound"] else ""
        print(
            f"| {LABELS[impl]} | {s['cpu_ms_per_1000']:.1f} | {s['tokens_per_s']:,.0f}"
            f" | {s['p50']:.1f} / {s['p99']:.1f} / {s['max']:.0f}"
            f" | {s['frames_per_s_per_client']:.1f} | {s['client_cpu_share']:.0%}{bound}"
            f" | {'yes' if s['verified'] else 'NO'} |"
        )
    base = summaries.get("bare")
    delivering = {impl: s for impl, s in summaries.items() if impl != "producers"}
    if base:
        ratios = ", ".join(
            f"{impl} {s['cpu_ms_per_1000'] / base['cpu_ms_per_1000']:.2f}x"
            for impl, s in delivering.items()
        )
        print(f"CPU per token relative to the bare loop: {ratios}")
    producers = summaries.get("producers")
    if producers and base:
        own = producers["cpu_seconds"]
        print(
            f"The producers alone cost {1e6 * own / base['tokens']:.1f} ms per 1,000 delivered"
            " tokens of that; less that, relative to the bare loop: "
            + ", ".join(
                f"{impl} {(s['cpu_seconds'] - own) / (base['cpu_seconds'] - own):.2f}x"
                for impl, s in delivering.items()
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description="end-to-end benchmark over real sockets")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="one repeat, shorter runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument("--loads", nargs="+", default=["100x2", "20x20", "saturation"])
    parser.add_argument("--duration", type=float, help="seconds the producers run (default 10)")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--profile", metavar="DIR", help="profile each server (cProfile) into DIR")
    args = parser.parse_args()
    if args.profile:
        PROFILE.append(args.profile)
    if args.client:
        asyncio.run(client_main(json.loads(args.client)))
        return
    duration = args.duration or (4.0 if args.quick else 10.0)
    loads = {
        "100x2": Load("100x2", 100, 2, 50, duration),
        "20x20": Load("20x20", 20, 20, 50, duration),
        "saturation": Load("saturation", 50, 4, 0, duration / 2),
    }
    repeats = 1 if args.quick else args.repeats
    print(f"e2e: {os.cpu_count()} cores, Python {sys.version.split()[0]}, {repeats} repeat(s)")
    everything = {}
    for name in args.loads:
        load = loads[name]
        runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in args.impls}
        for repeat in range(repeats):
            order = args.impls[repeat % len(args.impls) :] + args.impls[: repeat % len(args.impls)]
            for impl in order:
                runs[impl].append(run_once(impl, load))
            if load.rate:
                runs.setdefault("producers", []).append({"cpu_seconds": producers_cpu(load)})
        summaries = {impl: median_of(runs[impl]) for impl in runs}
        print_table(load, summaries)
        everything[name] = summaries
    if args.json:
        print(json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()

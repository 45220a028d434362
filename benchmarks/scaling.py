"""One Redis server against a Redis Cluster of 1 and of 3 shards, across two processes.

Run: ``.venv/bin/python benchmarks/backplane.py --deployments`` (or this file;
starts its own redis-server processes on free ports; needs redis-server and
redis-cli).

For each deployment, this process publishes (one Hub on ``RedisBroker``) to
1,000 sessions, and a second process (started here, one Hub, one sink
subscribed to all of them) receives. Throughput: E events published by 100
concurrent producers, each publish awaited; "published/s" is E over the time
until the last publish returned, "delivered/s" E over the time until the
second process had them all. Latency: one event every millisecond over the
sessions in turn, publish-to-receive (a monotonic clock both processes share).
Redis CPU: user+sys seconds each master spent over both runs (``INFO cpu``),
the evidence of how the load spreads by session.

On a 2-core machine three shards, both Python processes and the kernel share
the same two cores: the rates show the cost of the cluster path, not its
capacity; the CPU split shows the load spreading.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
import redis

from sessionfanout import Hub, HubConfig, ToolResult
from sessionfanout.redis_broker import RedisBroker

SESSIONS = [f"session-{n}" for n in range(1000)]
CONFIG = HubConfig(client_rate=None, outbox_max_messages=1_000_000, outbox_max_bytes=1 << 30)


def port_pair() -> int:
    """A free port whose cluster bus port (10000 higher) is free too."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port > 55535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def start_server(stack: ExitStack, folder: Path, *extra: str) -> int:
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("redis-cli") is None:
        raise SystemExit("redis-server and redis-cli are needed (make system-deps)")
    port = port_pair()
    path = folder / str(port)
    path.mkdir()
    args = [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(path)]
    process = subprocess.Popen([*args, *extra], stdout=subprocess.DEVNULL)
    stack.callback(process.wait)
    stack.callback(process.terminate)
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return port
        except OSError:
            time.sleep(0.02)
    raise SystemExit("redis-server did not start")


def deploy(stack: ExitStack, shards: int) -> tuple[str, list[int]]:
    """A URL and the masters' ports: one server (0 shards) or a cluster."""
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
    if shards == 0:
        port = start_server(stack, folder)
        return f"redis://127.0.0.1:{port}/0", [port]
    ports = [start_server(stack, folder, "--cluster-enabled", "yes") for _ in range(shards)]
    if shards == 1:
        cli(ports[0], "cluster", "addslotsrange", "0", "16383")
    else:
        cli(ports[0], "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-yes")
    for _ in range(500):
        if all("cluster_state:ok" in cli(p, "cluster", "info") for p in ports):
            break
        time.sleep(0.02)
    return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports), ports


def cli(port: int, *args: str) -> str:
    done = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True)
    return done.stdout


def cpu_seconds(ports: list[int]) -> list[float]:
    seconds = []
    for port in ports:
        with redis.Redis(port=port) as client:
            info = client.info("cpu")
        seconds.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return seconds


async def subscriber(url: str) -> None:
    """The second process: subscribe to every session, then, for each ``expect N``
    line, report when N events arrived and how late each was."""
    arrivals: list[tuple[float, float]] = []
    expected = 0
    done = anyio.Event()

    class Sink:
        async def send(self, text: str) -> None:
            if '"tool_result"' in text:
                sent = float(text.split('"result":"', 1)[1].split('"', 1)[0])
                arrivals.append((time.monotonic(), sent))
                if len(arrivals) >= expected:
                    done.set()

        async def close(self, code: int, reason: str) -> None:
            pass

    async with Hub(CONFIG, broker=RedisBroker(url)) as hub:
        connection = await hub.connect(Sink())
        for session_id in SESSIONS:
            message = {"type": "subscribe", "sessionId": session_id}
            await hub.handle_message(connection, json.dumps(message))
        print("ready", flush=True)
        while line := await anyio.to_thread.run_sync(sys.stdin.readline):
            expected, done = int(line.split()[1]), anyio.Event()
            arrivals.clear()
            print("armed", flush=True)
            with anyio.move_on_after(120):
                await done.wait()
            times = [at for at, _ in arrivals]
            latencies = sorted(at - sent for at, sent in arrivals)
            print(json.dumps({"last": max(times, default=0), "latencies": latencies}), flush=True)


class Receiver:
    """The second process, driven through its stdin and stdout."""

    def __init__(self, url: str) -> None:
        args = [sys.executable, __file__, "--subscriber", url]
        pipe = subprocess.PIPE
        self.process = subprocess.Popen(args, stdin=pipe, stdout=pipe, text=True)
        assert "ready" == self._line()

    def _line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def expect(self, count: int) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"expect {count}\n")
        self.process.stdin.flush()
        assert "armed" == self._line()

    def result(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self._line())
        return result

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


async def run(url: str, ports: list[int], events: int, paced: int) -> dict[str, Any]:
    receiver = Receiver(url)
    try:
        async with Hub(CONFIG, broker=RedisBroker(url)) as hub:

            async def publish(index: int) -> None:
                session_id = SESSIONS[index % len(SESSIONS)]
                event = ToolResult(session_id, str(index), "t", f"{time.monotonic():.6f}")
                await hub.broadcast_to_session(session_id, event)

            async def producer(first: int) -> None:
                for index in range(first, events, 100):
                    await publish(index)

            for n in range(len(SESSIONS)):  # every session numbered once before timing
                await publish(n)
            cpu_before = cpu_seconds(ports)
            receiver.expect(events)
            start = time.monotonic()
            async with anyio.create_task_group() as tg:
                for first in range(100):
                    tg.start_soon(producer, first)
            published = time.monotonic() - start
            delivered = receiver.result()["last"] - start
            receiver.expect(paced)
            for index in range(paced):
                await publish(index)
                await anyio.sleep(0.001)
            latencies = receiver.result()["latencies"]
            cpu = [b - a for a, b in zip(cpu_before, cpu_seconds(ports), strict=True)]
    finally:
        receiver.close()
    pct = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000  # noqa: E731
    return {
        "published": events / published,
        "delivered": events / delivered,
        "p50": pct(0.5),
        "p99": pct(0.99),
        "cpu": cpu,
    }


DEPLOYMENTS = {"single server": 0, "cluster, 1 shard": 1, "cluster, 3 shards": 3}


async def main(events: int, paced: int) -> None:
    print(f"{len(SESSIONS):,} sessions, two processes: {events:,} events, then {paced:,} paced")
    print(f"{'deployment':<20} {'published/s':>12} {'delivered/s':>12} {'p50 ms':>8} {'p99 ms':>8}"
          "  Redis CPU s per master")  # fmt: skip
    for name, shards in DEPLOYMENTS.items():
        with ExitStack() as stack:
            url, ports = deploy(stack, shards)
            row = await run(url, ports, events, paced)
        split = " / ".join(f"{s:.2f}" for s in row["cpu"])
        print(f"{name:<20} {row['published']:>12,.0f} {row['delivered']:>12,.0f} "
              f"{row['p50']:>8.2f} {row['p99']:>8.2f}  {split}", flush=True)  # fmt: skip


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--paced-events", type=int, default=2_000)
    parser.add_argument("--subscriber", metavar="URL", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = arguments()
    if args.subscriber:
        asyncio.run(subscriber(args.subscriber))
    else:
        asyncio.run(main(args.events, args.paced_events))

"""Presence across example-app processes on one real Redis, and a process that dies."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from tests.servers import Client, free_port, http_ready, python, running, ws_url

pytestmark = [pytest.mark.slow, pytest.mark.redis]

TTL = 3.0

Frame = dict[str, Any]


@pytest.fixture
def servers(
    redis_server: Any, tmp_path: Any
) -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    """Three example-app processes: a, b and c (the one that dies)."""
    started = []
    with ExitStack() as stack:
        for name in ("a", "b", "c"):
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            args = [python(), "examples/asgi_app.py", "--port", str(port), "--log-level", "warning"]
            args += ["--redis", redis_server.url, "--presence-ttl", str(TTL)]
            process = stack.enter_context(
                running(args, http_ready(base + "/"), log=tmp_path / f"{name}.log")
            )
            started.append((base, process))
        yield started


def named(base: str, name: str) -> Client:
    return Client(ws_url(base) + f"?name={name}")


def changes(client: Client, session_id: str) -> tuple[list[str], list[str]]:
    """Every name a watcher was told joined, and every name it was told left."""
    joined: list[str] = []
    left: list[str] = []
    for frame in client.frames:
        if frame.get("type") == "presence" and frame["sessionId"] == session_id:
            joined += [m["info"]["name"] for m in frame.get("joined", [])]
            left += [m["info"]["name"] for m in frame.get("left", [])]
    return joined, left


def next_presence(client: Client, timeout: float = 10) -> Frame:
    return client.recv_until(lambda f: f["type"] == "presence", timeout=timeout)[-1]


def names(members: list[Frame]) -> list[str]:
    return sorted(m["info"]["name"] for m in members)


def test_watchers_see_members_of_every_process_join_and_leave_once(
    servers: list[tuple[str, subprocess.Popen[bytes]]],
) -> None:
    (a, _), (b, _), _ = servers
    watcher = named(b, "watcher")
    watcher.subscribe("room", presence=True)
    assert ["watcher"] == names(next_presence(watcher)["members"])
    x = named(a, "x")
    x.subscribe("room")
    assert ["x"] == names(next_presence(watcher)["joined"])
    second = named(a, "second")
    second.subscribe("room", presence=True)
    seen = names(next_presence(second)["members"])
    assert ["second", "watcher", "x"] == seen, "every process's members, itself included"
    listed = httpx.get(f"{a}/api/sessions/room/presence", timeout=10).json()["members"]
    assert ["second", "watcher", "x"] == sorted(m["info"]["name"] for m in listed)
    x.close()
    assert ["x"] == names(next_presence(watcher)["left"])
    watcher.quiet_for(1.5)
    assert (["x", "second"], ["x"]) == changes(watcher, "room"), "each exactly once"
    for client in (watcher, second):
        client.close()


def test_the_members_of_a_killed_process_leave_within_the_ttl(
    servers: list[tuple[str, subprocess.Popen[bytes]]],
) -> None:
    _, (b, _), (c, doomed) = servers
    watcher = named(b, "watcher")
    watcher.subscribe("room", presence=True)
    next_presence(watcher)
    victims = [named(c, name) for name in ("k1", "k2")]
    for victim in victims:
        victim.subscribe("room")
    joined: list[str] = []
    while len(joined) < 2:
        joined += names(next_presence(watcher)["joined"])
    assert ["k1", "k2"] == sorted(joined)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    killed = time.monotonic()
    left = names(next_presence(watcher, timeout=TTL + 10)["left"])
    waited = time.monotonic() - killed
    assert ["k1", "k2"] == left
    # Within the TTL, plus the throttle interval and the announcement; generous
    # on a loaded machine, and far below what a never-expiring entry would give.
    assert waited < TTL + 3, waited
    assert ["watcher"] == [
        m["info"]["name"]
        for m in httpx.get(f"{b}/api/sessions/room/presence", timeout=10).json()["members"]
    ]
    watcher.close()

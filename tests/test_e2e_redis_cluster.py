"""End to end: two uvicorn processes of the example app on a real Redis Cluster
(3 masters, 3 replicas), real WebSocket clients on sessions over every shard."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.redis_cluster import Cluster, wait_until
from tests.servers import (
    Client,
    Frame,
    check_stream,
    free_port,
    http_ready,
    python,
    running,
    session_frames,
    ws_url,
)
from tests.test_redis_cluster import by_shard

pytestmark = [pytest.mark.slow, pytest.mark.redis]


@contextmanager
def two_apps(cluster: Cluster, folder: Path) -> Iterator[tuple[str, str]]:
    bases = []
    with ExitStack() as stack:
        for name in ("a", "b"):
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            args = [python(), "examples/asgi_app.py", "--port", str(port), "--log-level", "warning"]
            args += ["--redis-cluster", cluster.seeds, "--secret", "e2e-secret"]
            stack.enter_context(running(args, http_ready(base + "/"), log=folder / f"{name}.log"))
            bases.append(base)
        yield bases[0], bases[1]


@pytest.fixture(scope="module")
def apps(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    with two_apps(cluster, tmp_path_factory.mktemp("apps")) as bases:
        yield bases


def post(base: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, timeout=10)


class TimedClient(Client):
    """Reads on a thread of its own, and notes when each frame arrived."""

    def __init__(self, url: str) -> None:
        self.arrivals: list[tuple[float, Frame]] = []
        super().__init__(url)
        self._reader: threading.Thread | None = None

    def recv(self, timeout: float = 15) -> Frame:
        frame = super().recv(timeout)
        self.arrivals.append((time.monotonic(), frame))
        return frame

    def read_on(self) -> None:
        """From now on, frames are read as they come (see ``wait``)."""

        def read() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    with contextlib.suppress(TimeoutError):
                        self.recv(timeout=0.2)

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def wait(self, predicate: Callable[[list[Frame]], bool], timeout: float = 30) -> None:
        wait_until(lambda: predicate(list(self.frames)), timeout, "frames")

    def close(self) -> None:
        super().close()
        if self._reader is not None:
            self._reader.join(timeout=5)


def completes(client: Client, sessions: set[str], timeout: float = 60) -> None:
    """Read until every one of ``sessions`` has sent ``complete``."""
    done = {f["sessionId"] for f in client.frames if f["type"] == "complete"}

    def finished(frame: Frame) -> bool:
        if frame["type"] == "complete":
            done.add(frame["sessionId"])
        return done >= sessions

    if not done >= sessions:
        client.recv_until(finished, timeout=timeout)


def test_streams_on_every_shard_reach_clients_on_both_processes(
    cluster: Cluster, apps: tuple[str, str]
) -> None:
    a, b = apps
    sessions = [s for group in by_shard(cluster, 3, "e2e").values() for s in group]
    on_a, on_b = Client(ws_url(a)), Client(ws_url(b))
    for session_id in sessions:
        epoch = on_a.subscribe(session_id)["epoch"]
        assert epoch == on_b.subscribe(session_id)["epoch"]
    messages = {s: "".join(f"<{s}:{n}>" for n in range(60)) for s in sessions}
    for n, session_id in enumerate(sessions):
        knobs = {"message": messages[session_id], "deltas": 40, "deltaIntervalMs": 2}
        path = f"/api/sessions/{session_id}/messages"
        assert 202 == post((a, b)[n % 2], path, knobs).status_code
    for client in (on_a, on_b):
        completes(client, set(sessions))
        for session_id in sessions:
            check_stream(session_frames(client.frames, session_id), messages[session_id])
    for client in (on_a, on_b):
        client.close()


def test_permissions_are_answered_on_the_other_process_on_every_shard(
    cluster: Cluster, apps: tuple[str, str]
) -> None:
    a, b = apps
    sessions = [group[0] for group in by_shard(cluster, 1, "e2e-perm").values()]
    on_a, on_b = Client(ws_url(a)), Client(ws_url(b))
    for session_id in sessions:
        on_a.subscribe(session_id)
        on_b.subscribe(session_id)
    for session_id in sessions:
        post(b, f"/api/sessions/{session_id}/messages",
             {"message": "may I?", "deltas": 2, "permission": True})  # fmt: skip
        [request] = [
            f["request"]
            for f in on_a.recv_until(lambda f: f["type"] == "permission_request")
            if f["type"] == "permission_request"
        ]
        on_a.send(
            {"type": "permission_response", "requestId": request["requestId"], "allowed": True}
        )
    completes(on_b, set(sessions))
    results = {f["sessionId"]: f["result"] for f in on_b.frames if f["type"] == "tool_result"}
    assert dict.fromkeys(sessions, "allowed") == results
    for client in (on_a, on_b):
        client.close()


def test_a_client_resumes_on_the_other_process(cluster: Cluster, apps: tuple[str, str]) -> None:
    a, b = apps
    [session_id, *_] = by_shard(cluster, 1, "e2e-resume").popitem()[1]
    first = Client(ws_url(a))
    epoch = first.subscribe(session_id)["epoch"]
    message = "".join(f"<{n}>" for n in range(300))
    post(b, f"/api/sessions/{session_id}/messages",
         {"message": message, "deltas": 150, "deltaIntervalMs": 3, "tool": False})  # fmt: skip
    first.recv_until(lambda f: f.get("seq", 0) >= 10 and f["type"] != "subscribed")
    seen = session_frames(first.frames, session_id)
    first.close()
    again = Client(ws_url(b))
    assert again.subscribe(session_id, lastSeq=seen[-1]["seq"], epoch=epoch)["resumed"] is True
    again.recv_until(lambda f: f["type"] == "complete")
    check_stream(seen + session_frames(again.frames, session_id), message)
    again.close()


def test_an_agent_is_stopped_from_the_other_process(
    cluster: Cluster, apps: tuple[str, str]
) -> None:
    a, b = apps
    [session_id, *_] = by_shard(cluster, 1, "e2e-abort").popitem()[1]
    watcher = Client(ws_url(b))
    watcher.subscribe(session_id)
    post(a, f"/api/sessions/{session_id}/messages",
         {"message": "x" * 2000, "deltas": 2000, "deltaIntervalMs": 5})  # fmt: skip
    watcher.recv_until(lambda f: f["type"] == "text_delta")
    assert 409 == post(b, f"/api/sessions/{session_id}/messages", {"message": "me too"}).status_code
    assert 202 == post(b, f"/api/sessions/{session_id}/abort", {}).status_code
    watcher.recv_until(lambda f: f["type"] == "complete")
    events = session_frames(watcher.frames, session_id)
    assert ["error", "complete"] == [f["type"] for f in events[-2:]]
    assert "aborted" == events[-2]["error"]
    watcher.close()


def check_gap_free_or_reload(frames: list[Frame], session_id: str) -> None:
    """Seq 1..n each once, except that after a ``resumed: false`` it starts again
    from the seq that frame names."""
    mine = [f for f in frames if f.get("sessionId") == session_id]
    expected = None
    for frame in mine:
        if frame["type"] == "subscribed":
            assert expected is None or frame["resumed"] is False, "a reload signal"
            expected = frame["seq"] + 1
            continue
        first = frame.get("firstSeq", frame["seq"])
        assert expected == first, f"{session_id}: seq {first} after {expected - 1}"
        expected = frame["seq"] + 1


def test_a_master_killed_mid_stream(tmp_path: Path) -> None:
    """Clients of the dead shard's sessions get every event or the reload
    signal; the other shards' streams arrive whole, without a long pause; the
    dead shard's sessions take new runs once a replica took over."""
    cluster = Cluster(tmp_path)
    cluster.start()
    try:
        with two_apps(cluster, tmp_path) as (a, b):
            run_through_a_failover(cluster, a, b)
    finally:
        cluster.stop()


def run_through_a_failover(cluster: Cluster, a: str, b: str) -> None:
    shards = by_shard(cluster, 2, "failover")
    victim_port, victims = next(iter(shards.items()))
    sessions = [s for group in shards.values() for s in group]
    others = [s for s in sessions if s not in victims]
    clients = [TimedClient(ws_url(a)), TimedClient(ws_url(b))]
    for client in clients:
        for session_id in sessions:
            client.subscribe(session_id)
    messages = {s: "".join(f"<{s}:{n}>" for n in range(150)) for s in sessions}
    for session_id in sessions:
        post(b, f"/api/sessions/{session_id}/messages",
             {"message": messages[session_id], "deltas": 150, "deltaIntervalMs": 20,
              "tool": False})  # fmt: skip
    for client in clients:
        client.read_on()
    clients[0].wait(lambda frames: any(f.get("seq", 0) >= 20 for f in frames))
    victim = next(node for node in cluster.nodes if node.port == victim_port)
    killed_at = time.monotonic()
    victim.kill()
    wait_until(cluster.healthy, 30, "a replica took over")
    healed_at = time.monotonic()

    def ended(frames: list[Frame]) -> bool:
        return {f["sessionId"] for f in frames if f["type"] == "complete"} >= set(others)

    for client in clients:
        client.wait(ended, 60)
    time.sleep(1.0)  # what else is on its way
    for client in clients:
        for session_id in others:
            check_stream(session_frames(client.frames, session_id), messages[session_id])
            times = [t for t, f in client.arrivals if f.get("sessionId") == session_id]
            window = [t for t in times if killed_at - 1 < t < healed_at + 1]
            pauses = [later - earlier for earlier, later in itertools.pairwise(window)]
            assert max(pauses, default=0) < 0.75, f"{session_id} paused"
        for session_id in victims:
            check_gap_free_or_reload(client.frames, session_id)
    # The dead shard takes a new run once a replica serves it.
    session_id = victims[0]
    wait_until(
        lambda: 202 == post(a, f"/api/sessions/{session_id}/messages",
                            {"message": "again", "deltas": 2, "tool": False}).status_code,
        10, "a new run",
    )  # fmt: skip
    for client in clients:
        client.wait(lambda frames: any(f.get("text") == "again" for f in frames))
        check_gap_free_or_reload(client.frames, session_id)
        client.close()

"""End to end: two uvicorn processes of the example app through Redis Sentinel
(one master, one replica, three sentinels); the master killed mid-stream."""

from __future__ import annotations

import contextlib
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.redis_cluster import Sentinels, wait_until
from tests.servers import free_port, http_ready, python, running, ws_url
from tests.test_e2e_redis_cluster import TimedClient, check_gap_free_or_reload, post

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def test_the_apps_follow_the_promoted_master(sentinels: Sentinels, tmp_path: Path) -> None:
    """Every client gets each session's events gap-free, or the reload signal;
    once the replica is promoted, new runs stream to clients on both processes."""
    with ExitStack() as stack:
        bases = []
        for name in ("a", "b"):
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            args = [python(), "examples/asgi_app.py", "--port", str(port), "--log-level", "warning"]
            args += ["--redis-sentinel", sentinels.seeds, "--redis-master", sentinels.name]
            args += ["--secret", "e2e-secret"]
            stack.enter_context(running(args, http_ready(base + "/"), log=tmp_path / f"{name}.log"))
            bases.append(base)
        a, b = bases
        sessions = [f"sentinel-{n}" for n in range(4)]
        clients = [TimedClient(ws_url(a)), TimedClient(ws_url(b))]
        for client in clients:
            for session_id in sessions:
                client.subscribe(session_id)
            client.read_on()
        for session_id in sessions:
            knobs = {"message": "x" * 400, "deltas": 100, "deltaIntervalMs": 20, "tool": False}
            post(b, f"/api/sessions/{session_id}/messages", knobs)
        clients[0].wait(lambda frames: any(f.get("seq", 0) >= 10 for f in frames))
        old = sentinels.master.port
        sentinels.master.kill()
        wait_until(lambda: sentinels.master_port() != old, 30, "a promotion")
        # A run is refused, or fails, until a's broker has reconnected (it backs
        # off up to 5 s); then it streams to both processes.
        arrived: list[str] = []

        def new_run_arrived() -> bool:
            text = f"again-{len(arrived)}"
            arrived.append(text)
            answer = post(a, f"/api/sessions/{sessions[0]}/messages",
                          {"message": text, "deltas": 2, "tool": False})  # fmt: skip
            assert answer.status_code in (202, 409, 503), answer.text
            with contextlib.suppress(RuntimeError):
                clients[0].wait(lambda frames: any(f.get("text") == text for f in frames), 2)
                return True
            return False

        wait_until(new_run_arrived, 30, "a run after the promotion")
        clients[1].wait(lambda frames: any(f.get("text") == arrived[-1] for f in frames))
        for client in clients:
            for session_id in sessions:
                check_gap_free_or_reload(list(client.frames), session_id)
            client.close()

"""End to end: two uvicorn processes of the example app on one real Redis."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from tests.servers import (
    Client,
    SseClient,
    check_stream,
    free_port,
    http_ready,
    python,
    running,
    session_frames,
    ws_url,
)

pytestmark = [pytest.mark.slow, pytest.mark.redis]


@pytest.fixture
def two_servers(redis_server: Any, tmp_path: Any) -> Iterator[tuple[str, str]]:
    bases = []
    with ExitStack() as stack:
        for name in ("a", "b"):
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            args = [python(), "examples/asgi_app.py", "--port", str(port), "--log-level", "warning"]
            args += ["--redis", redis_server.url, "--secret", "e2e-secret"]
            stack.enter_context(running(args, http_ready(base + "/"), log=tmp_path / f"{name}.log"))
            bases.append(base)
        yield bases[0], bases[1]


def unique(name: str) -> str:
    return f"{name}-{base64.b32encode(os.urandom(5)).decode().lower()}"


def post(base: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, timeout=10)


def test_two_processes_share_streams_globals_permissions_and_resume(
    two_servers: tuple[str, str],
) -> None:
    a, b = two_servers
    session = unique("x")
    on_a, also_a, on_b = Client(ws_url(a)), Client(ws_url(a)), Client(ws_url(b))
    epoch = on_a.subscribe(session)["epoch"]
    assert epoch == on_b.subscribe(session)["epoch"], "one epoch for the session everywhere"
    also_a.subscribe(unique("other"))

    # A stream produced on b reaches a client on a, numbered and whole.
    message = "".join(f"<{n}>" for n in range(300))
    knobs = {"message": message, "deltas": 100, "deltaIntervalMs": 2}
    assert 202 == post(b, f"/api/sessions/{session}/messages", knobs).status_code
    for client in (on_a, on_b):
        client.recv_until(lambda f: f["type"] == "complete")
        check_stream(session_frames(client.frames, session), message)

    # A global broadcast on a reaches every client on both processes once.
    assert 202 == post(a, "/api/config/changed", {"changeType": "theme"}).status_code
    for client in (on_a, also_a, on_b):
        got = client.recv_until(lambda f: f["type"] == "config_changed") + client.quiet_for(0.3)
        assert 1 == len([f for f in got if f["type"] == "config_changed"])

    # A permission raised by the agent on b is answered by the client on a.
    post(b, f"/api/sessions/{session}/messages",
         {"message": "may I?", "deltas": 2, "deltaIntervalMs": 1, "permission": True})  # fmt: skip
    request = on_a.recv_until(lambda f: f["type"] == "permission_request")[-1]["request"]
    on_a.send({"type": "permission_response", "requestId": request["requestId"], "allowed": True})
    done = on_b.recv_until(lambda f: f["type"] == "complete")
    [result] = [f for f in done if f["type"] == "tool_result"]
    assert "allowed" == result["result"]
    refused = on_b.expect_error(
        {"type": "permission_response", "requestId": request["requestId"], "allowed": False}
    )
    assert "unknown_request" == refused["code"], "decided exactly once"

    # The client on a drops; it resumes on b without a gap or a duplicate.
    on_a.recv_until(lambda f: f["type"] == "complete")
    seen = session_frames(on_a.frames, session)
    on_a.close()
    third = "".join(f"[{n}]" for n in range(100))
    post(
        a,
        f"/api/sessions/{session}/messages",
        {"message": third, "deltas": 40, "deltaIntervalMs": 3},
    )
    resumed = Client(ws_url(b))
    reply = resumed.subscribe(session, lastSeq=seen[-1]["seq"], epoch=epoch)
    assert reply["resumed"] is True
    resumed.recv_until(lambda f: f["type"] == "complete" and f.get("seq", 0) > seen[-1]["seq"])
    frames = seen + session_frames(resumed.frames, session)
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    last_run = [f for f in frames if f["seq"] > seen[-1]["seq"]]
    assert third == "".join(f["delta"] for f in last_run if f["type"] == "text_delta")
    for client in (also_a, on_b, resumed):
        client.close()


def test_an_sse_stream_dropped_on_one_process_resumes_on_the_other(
    two_servers: tuple[str, str],
) -> None:
    a, b = two_servers
    session = unique("sse")
    message = "".join(f"<{n}>" for n in range(400))
    first = SseClient(a, session)
    first.until(lambda f: f["type"] == "subscribed")
    post(b, f"/api/sessions/{session}/messages",
         {"message": message, "deltas": 200, "deltaIntervalMs": 3, "tool": False})  # fmt: skip
    first.until(lambda f: f.get("seq", 0) >= 5 and f["type"] != "subscribed")
    seen = session_frames(first.frames, session)
    last_id = first.last_id()
    first.close()
    again = SseClient(b, session, last_event_id=last_id)
    assert again.until(lambda f: f["type"] == "subscribed")[-1]["resumed"] is True
    again.until(lambda f: f["type"] == "complete")
    check_stream(seen + session_frames(again.frames, session), message)
    again.close()


def test_an_agent_running_on_one_process_is_stopped_and_refused_from_the_other(
    two_servers: tuple[str, str],
) -> None:
    a, b = two_servers
    session = unique("abort")
    watcher, other = Client(ws_url(b)), Client(ws_url(b))
    watcher.subscribe(session)
    message = "".join(f"<{n}>" for n in range(2000))
    post(a, f"/api/sessions/{session}/messages",
         {"message": message, "deltas": 2000, "deltaIntervalMs": 5})  # fmt: skip
    watcher.recv_until(lambda f: f.get("type") == "text_delta")
    busy = post(b, f"/api/sessions/{session}/messages", {"message": "me too"})
    assert 409 == busy.status_code, "an agent runs on the other process"
    refused = other.expect_error({"type": "abort", "sessionId": session})
    assert "forbidden" == refused["code"], "only subscribers may stop it"
    watcher.send({"type": "abort", "sessionId": session})  # on b; the agent runs on a
    watcher.recv_until(lambda f: f.get("type") == "complete")
    events = session_frames(watcher.frames, session)
    assert ["error", "complete"] == [f["type"] for f in events[-2:]]
    assert "aborted" == events[-2]["error"]
    streamed = "".join(f["delta"] for f in events if f["type"] == "text_delta")
    assert message.startswith(streamed), "the text so far, intact"
    assert streamed != message, "stopped before the end"
    assert [f["seq"] for f in events] == list(range(1, len(events) + 1))
    assert 404 == post(a, f"/api/sessions/{session}/abort", {}).status_code, "nothing runs now"
    for client in (watcher, other):
        client.close()

"""End to end: the ASGI example under a real uvicorn, real WebSocket and HTTP clients."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.servers import (
    ROOT,
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

pytestmark = pytest.mark.slow


def start_agent(base: str, session_id: str, message: str, **knobs: object) -> httpx.Response:
    return httpx.post(
        f"{base}/api/sessions/{session_id}/messages", json={"message": message, **knobs}, timeout=10
    )


def until_complete(client: Client, session_id: str, timeout: float = 60) -> list[Frame]:
    client.recv_until(lambda f: f["type"] == "complete" and f["sessionId"] == session_id, timeout)
    return session_frames(client.frames, session_id)


def unique(name: str) -> str:
    return f"{name}-{base64.b32encode(os.urandom(5)).decode().lower()}"


def test_connected_frame_comes_first(server: str) -> None:
    client = Client(ws_url(server))
    assert isinstance(client.connected["timestamp"], int)
    assert abs(time.time() * 1000 - client.connected["timestamp"]) < 60_000
    assert client.connected["connectionId"]
    client.close()


def test_the_demo_page_is_served(server: str) -> None:
    page = httpx.get(server + "/")
    assert 200 == page.status_code
    assert "/static/app.js" in page.text
    assert 200 == httpx.get(server + "/static/app.js").status_code


def test_a_200_delta_stream_arrives_batched_in_order_and_whole(server: str) -> None:
    session = unique("stream")
    message = "".join(f"word{n} " for n in range(400))
    client = Client(ws_url(server))
    assert client.subscribe(session)["resumed"] is False
    assert 202 == start_agent(server, session, message, deltas=200, deltaIntervalMs=1).status_code
    frames = until_complete(client, session)
    deltas = check_stream(frames, message)
    assert len(deltas) < 200 / 4, f"{len(deltas)} frames for 200 deltas"
    assert ["text_complete", "tool_start", "tool_result", "complete"] == [
        f["type"] for f in frames[len(deltas) :]
    ]
    client.close()


def test_sessions_are_isolated(server: str) -> None:
    a, b = unique("iso-a"), unique("iso-b")
    client_a, client_b = Client(ws_url(server)), Client(ws_url(server))
    client_a.subscribe(a)
    client_b.subscribe(b)
    start_agent(server, a, "only for a", deltas=5, deltaIntervalMs=1)
    until_complete(client_a, a)
    assert [] == [f for f in client_b.quiet_for(0.3) if f.get("sessionId") == a]
    client_a.close()
    client_b.close()


def test_config_changed_reaches_every_client_exactly_once(server: str) -> None:
    two, none = Client(ws_url(server)), Client(ws_url(server))
    two.subscribe(unique("cfg1"))
    two.subscribe(unique("cfg2"))
    for change in ("theme", "config"):
        response = httpx.post(f"{server}/api/config/changed", json={"changeType": change})
        assert 202 == response.status_code
    for client in (two, none):
        got = client.recv_until(lambda f: f == {"type": "config_changed", "changeType": "config"})
        got += client.quiet_for(0.2)
        assert ["theme", "config"] == [
            f["changeType"] for f in got if f["type"] == "config_changed"
        ]
        client.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        (b"\xff\xfe\x00", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"type": "subscribe"}', "invalid_message"),
        ('{"type": "subscribe", "sessionId": 42}', "invalid_message"),
        ('{"type": "subscribe", "sessionId": "s", "lastSeq": "3"}', "invalid_message"),
        ('{"type": "permission_response", "requestId": "r"}', "invalid_message"),
        ('{"type": "teleport"}', "unknown_type"),
        ('{"type": "subscribe", "sessionId": "private:payroll"}', "forbidden"),
        (
            '{"type": "permission_response", "requestId": "nope", "allowed": true}',
            "unknown_request",
        ),
    ],
)
def test_every_malformed_frame_gets_its_code_and_the_connection_stays_usable(
    server: str, frame: str | bytes, code: str
) -> None:
    client = Client(ws_url(server))
    assert code == client.expect_error(frame)["code"]
    assert "subscribed" == client.subscribe(unique("after-error"))["type"]
    client.close()


def test_a_2_mib_frame_is_refused_and_the_connection_stays_usable(server: str) -> None:
    client = Client(ws_url(server))
    big = '{"type":"subscribe","sessionId":"s","pad":"' + "x" * (2 * 1024 * 1024) + '"}'
    error = client.expect_error(big)
    assert "too_large" == error["code"]
    assert "subscribed" == client.subscribe(unique("after-big"))["type"]
    client.close()


def test_a_flood_of_frames_is_rate_limited_and_the_connection_stays_usable(
    server: str,
) -> None:
    client = Client(ws_url(server))
    for _ in range(60):
        client.send({"type": "unsubscribe", "sessionId": "x"})
    replies = [client.recv() for _ in range(60)]
    kinds = {f.get("code", f["type"]) for f in replies}
    assert {"unsubscribed", "rate_limited"} == kinds
    time.sleep(3)
    assert "subscribed" == client.subscribe(unique("after-flood"))["type"]
    client.close()


def test_resume_after_reconnect_has_no_gap_or_duplicate(server: str) -> None:
    session = unique("resume")
    message = "".join(f"{n:04d}|" for n in range(300))
    first = Client(ws_url(server))
    epoch = first.subscribe(session)["epoch"]
    start_agent(server, session, message, deltas=150, deltaIntervalMs=4)
    first.recv_until(lambda f: f.get("seq", 0) >= 3)
    first.ws.socket.shutdown(socket.SHUT_RDWR)  # the network drops, no close handshake
    seen = session_frames(first.frames, session)
    last_seq = seen[-1]["seq"]
    again = Client(ws_url(server))
    reply = again.subscribe(session, lastSeq=last_seq, epoch=epoch)
    assert reply["resumed"] is True
    frames = seen + until_complete(again, session)
    check_stream(frames, message)
    wrong = Client(ws_url(server))
    assert wrong.subscribe(session, lastSeq=1, epoch="not-" + epoch)["resumed"] is False
    assert [] == [f for f in wrong.quiet_for(0.2) if "seq" in f], "no partial replay"
    again.close()
    wrong.close()


def test_permission_is_decided_by_the_first_subscriber_only(server: str) -> None:
    session = unique("perm")
    outsider, first, second = (Client(ws_url(server)) for _ in range(3))
    first.subscribe(session)
    second.subscribe(session)
    outsider.subscribe(unique("elsewhere"))
    start_agent(server, session, "may I?", deltas=2, deltaIntervalMs=1, permission=True)
    request = first.recv_until(lambda f: f["type"] == "permission_request")[-1]["request"]
    answer = {"type": "permission_response", "requestId": request["requestId"]}
    assert "unknown_request" == outsider.expect_error({**answer, "allowed": True})["code"]
    second.send({**answer, "allowed": False})
    frames = until_complete(first, session)
    [result] = [f for f in frames if f["type"] == "tool_result"]
    assert ("denied", True) == (result["result"], result["isError"])
    assert "unknown_request" == first.expect_error({**answer, "allowed": True})["code"]
    for client in (outsider, first, second):
        client.close()


def test_abort_flushes_then_sends_error_then_complete(server: str) -> None:
    session = unique("abort")
    message = "x" * 1000
    client = Client(ws_url(server))
    client.subscribe(session)
    start_agent(server, session, message, deltas=100, deltaIntervalMs=30)
    client.recv_until(lambda f: f["type"] == "text_delta")
    assert 202 == httpx.post(f"{server}/api/sessions/{session}/abort").status_code
    frames = until_complete(client, session)
    types = [f["type"] for f in frames]
    assert ["error", "complete"] == types[-2:]
    assert {"text_delta"} == set(types[:-2])
    assert "aborted" == frames[-2]["error"]
    streamed = "".join(f["delta"] for f in frames if f["type"] == "text_delta")
    assert message.startswith(streamed)
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert 404 == httpx.post(f"{server}/api/sessions/{session}/abort").status_code
    client.close()


def test_bad_http_bodies_get_400_naming_the_problem(server: str) -> None:
    url = f"{server}/api/sessions/s/messages"
    cases = [
        (b"not json", "JSON"),
        (b"[]", "object"),
        (b"{}", "'message'"),
        (b'{"message": "hi", "deltas": 0}', "'deltas'"),
        (b'{"message": "hi", "deltas": "5"}', "'deltas'"),
        (b'{"message": "hi", "deltaIntervalMs": -1}', "'deltaIntervalMs'"),
        (b'{"message": "hi", "tool": "yes"}', "'tool'"),
        (b'{"message": "hi", "permission": 1}', "'permission'"),
    ]
    for body, names in cases:
        response = httpx.post(url, content=body)
        assert 400 == response.status_code, body
        assert names in response.json()["error"], body
    response = httpx.post(f"{server}/api/config/changed", json={"changeType": "colour"})
    assert 400 == response.status_code
    assert "changeType" in response.json()["error"]


def test_a_client_that_stops_reading_does_not_slow_a_reading_client(server: str) -> None:
    session = unique("slow")
    stalled = socket.create_connection(("127.0.0.1", int(server.rsplit(":", 1)[1])))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    stalled.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert stalled.recv(12) == b"HTTP/1.1 101"
    payload = f'{{"type":"subscribe","sessionId":"{session}"}}'.encode()
    mask = os.urandom(4)
    stalled.sendall(
        bytes([0x81, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )  # one masked text frame; from here on this client never reads again
    reader = Client(ws_url(server))
    reader.subscribe(session)
    time.sleep(0.2)
    message = "y" * 1_000_000
    received = 0
    for _ in range(4):  # about 8 MiB to the reader: deltas plus the text_complete of each run
        assert (
            202 == start_agent(server, session, message, deltas=50, deltaIntervalMs=0).status_code
        )
        frames = reader.recv_until(lambda f: f["type"] == "complete", timeout=60)
        received += sum(len(f.get("delta", "")) + len(f.get("text", "")) for f in frames)
    assert 8_000_000 == received
    stalled.close()
    reader.close()


def test_40_sessions_with_2_clients_each_streaming_at_once_lose_nothing(server: str) -> None:
    sessions = [unique(f"load{n}") for n in range(40)]
    messages = {s: f"{s}: " + "".join(f"<{n}>" for n in range(200)) for s in sessions}
    clients = {s: [Client(ws_url(server)), Client(ws_url(server))] for s in sessions}
    for session, pair in clients.items():
        for client in pair:
            client.subscribe(session)
    for session in sessions:
        assert (
            202
            == start_agent(
                server, session, messages[session], deltas=60, deltaIntervalMs=5
            ).status_code
        )

    def drain(session: str, client: Client) -> None:
        check_stream(until_complete(client, session, timeout=120), messages[session])
        client.close()

    with ThreadPoolExecutor(max_workers=80) as pool:
        futures = [pool.submit(drain, s, c) for s, pair in clients.items() for c in pair]
        for future in futures:
            future.result()


def test_sigterm_flushes_and_closes_cleanly(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [python(), "examples/asgi_app.py", "--port", str(port), "--log-level", "warning"]
    with running(args, http_ready(base + "/"), log=tmp_path / "server.log") as process:
        client = Client(ws_url(base))
        session = unique("term")
        client.subscribe(session)
        start_agent(base, session, "z" * 500, deltas=50, deltaIntervalMs=20)
        client.recv_until(lambda f: f["type"] == "text_delta")
        process.terminate()
        client.quiet_for(15)  # until the server closes the connection
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert process.wait(timeout=15) in (0, -signal.SIGTERM)
    assert "Traceback" not in (tmp_path / "server.log").read_text()
    types = [f["type"] for f in session_frames(client.frames, session)]
    assert ["error", "complete"] == types[-2:], "the running agent was aborted and reported"
    assert 1001 == client.ws.close_code


def test_watch_prints_a_session_live(server: str, tmp_path: Path) -> None:
    session = unique("watched")
    args = [
        python(),
        "-u",
        "examples/watch.py",
        session,
        "--url",
        ws_url(server),
        "--no-color",
    ]
    log = tmp_path / "watch.log"
    with log.open("w") as out:
        watcher = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while "[watching" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        start_agent(server, session, "watch me stream", deltas=5, deltaIntervalMs=10, tool=True)
        while "complete" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)
    output = log.read_text()
    assert "watch me stream\n" in output
    assert "⚙ echo" in output
    assert "↳ echo: allowed" in output
    assert "— complete —" in output

"""End to end: the websockets-library example, real server process and real clients."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import (
    Client,
    check_stream,
    free_port,
    python,
    running,
    session_frames,
    tcp_ready,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("websockets") / "server.log"
    args = [
        python(),
        "examples/websockets_server.py",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    with running(args, tcp_ready("127.0.0.1", port), log=log):
        yield f"ws://127.0.0.1:{port}/"


def test_connect_subscribe_and_stream(url: str) -> None:
    watcher, starter = Client(url), Client(url)
    assert watcher.connected["connectionId"] != starter.connected["connectionId"]
    assert "subscribed" == watcher.subscribe("ws-stream")["type"]
    message = "".join(f"[{n}]" for n in range(300))
    starter.send(
        {"type": "start_agent", "sessionId": "ws-stream", "message": message, "deltas": 100,
         "deltaIntervalMs": 1}
    )  # fmt: skip
    watcher.recv_until(lambda f: f["type"] == "complete")
    deltas = check_stream(session_frames(watcher.frames, "ws-stream"), message)
    assert len(deltas) < 50
    assert [] == [f for f in starter.quiet_for(0.2) if f["type"] != "config_changed"]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("nope", "invalid_json"),
        ('{"type":"subscribe","sessionId":""}', "invalid_message"),
        ('{"type":"warp"}', "unknown_type"),
        ('{"type":"start_agent","sessionId":"s"}', "invalid_message"),
        ('{"type":"start_agent","sessionId":"s","message":"x","deltas":-1}', "invalid_message"),
        ('{"type":"abort_agent","sessionId":"idle"}', "invalid_message"),
        ('{"type":"permission_response","requestId":"r","allowed":false}', "unknown_request"),
        ('{"type":"x","pad":"' + "p" * (2 * 1024 * 1024) + '"}', "too_large"),
    ],
)
def test_bad_input_gets_its_code_and_the_connection_stays_usable(
    url: str, frame: str, code: str
) -> None:
    client = Client(url)
    assert code == client.expect_error(frame)["code"]
    assert "subscribed" == client.subscribe("after-bad-input")["type"]


def test_abort_agent_frame_aborts_the_run(url: str) -> None:
    client = Client(url)
    client.subscribe("ws-abort")
    client.send(
        {"type": "start_agent", "sessionId": "ws-abort", "message": "a" * 400, "deltas": 100,
         "deltaIntervalMs": 30}
    )  # fmt: skip
    client.recv_until(lambda f: f["type"] == "text_delta")
    client.send({"type": "abort_agent", "sessionId": "ws-abort"})
    client.recv_until(lambda f: f["type"] == "complete")
    types = [f["type"] for f in session_frames(client.frames, "ws-abort")]
    assert ["error", "complete"] == types[-2:]


def test_sigterm_closes_clients_with_1001(tmp_path: Path) -> None:
    port = free_port()
    args = [python(), "examples/websockets_server.py", "--port", str(port)]
    with running(args, tcp_ready("127.0.0.1", port), log=tmp_path / "server.log") as process:
        client = Client(f"ws://127.0.0.1:{port}/")
        client.subscribe("bye")
        process.send_signal(signal.SIGTERM)
        client.quiet_for(5)
        assert 0 == process.wait(timeout=15)
    assert 1001 == client.ws.close_code

"""Real servers for end-to-end tests: the example apps run as subprocesses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

Frame = dict[str, Any]


def require(available: bool, why: str) -> None:
    """A real component the test needs: missing, it fails under CI=true and skips elsewhere."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}; with CI=true a missing component is a failure")
    pytest.skip(f"{why} (not CI: skipped; make test installs it)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running(
    args: list[str], ready: Callable[[], bool], *, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``args``, wait until ``ready()``, and stop it with SIGTERM afterwards."""
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not ready():
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after 30 s:\n{log.read_text()}")
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def http_ready(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    return ready


def tcp_ready(host: str, port: int) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            socket.create_connection((host, port), timeout=1).close()
        except OSError:
            return False
        return True

    return ready


class Client:
    """A real WebSocket client speaking the protocol, with a few conveniences."""

    def __init__(self, url: str) -> None:
        # Entered by hand: the connection outlives any one with-block in the tests.
        self.ws: ClientConnection = ws_connect(url, max_size=None, open_timeout=10).__enter__()
        self.frames: list[Frame] = []
        self.connected = self.recv()
        assert "connected" == self.connected["type"]

    def send(self, frame: Frame | str | bytes) -> None:
        self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    def recv(self, timeout: float = 15) -> Frame:
        frame: Frame = json.loads(self.ws.recv(timeout=timeout))
        self.frames.append(frame)
        return frame

    def recv_until(self, predicate: Callable[[Frame], bool], timeout: float = 30) -> list[Frame]:
        """Frames up to and including the first one that matches."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            frame = self.recv(timeout=max(0.01, deadline - time.monotonic()))
            got.append(frame)
            if predicate(frame):
                return got

    def subscribe(self, session_id: str, **extra: Any) -> Frame:
        self.send({"type": "subscribe", "sessionId": session_id, **extra})
        return self.recv_until(lambda f: f["type"] in ("subscribed", "client_error"))[-1]

    def expect_error(self, frame: Frame | str | bytes) -> Frame:
        self.send(frame)
        return self.recv_until(lambda f: f["type"] == "client_error")[-1]

    def quiet_for(self, seconds: float) -> list[Frame]:
        """Whatever arrives within ``seconds`` (used to show that nothing more comes)."""
        extra = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                extra.append(self.recv(timeout=left))
            except (TimeoutError, ConnectionClosed):
                break
        return extra

    def close(self) -> None:
        self.ws.close()


def session_frames(frames: list[Frame], session_id: str) -> list[Frame]:
    """The session's events (not the ``subscribed`` reply)."""
    return [
        f
        for f in frames
        if f.get("sessionId") == session_id and "seq" in f and f["type"] != "subscribed"
    ]


def check_stream(frames: list[Frame], message: str) -> list[Frame]:
    """The session's frames are seq 1..n, deltas add up to the message, complete last."""
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    deltas = [f for f in frames if f["type"] == "text_delta"]
    assert message == "".join(f["delta"] for f in deltas)
    [complete_text] = [f["text"] for f in frames if f["type"] == "text_complete"]
    assert message == complete_text
    assert "complete" == frames[-1]["type"]
    return deltas


def ws_url(base: str) -> str:
    """The WebSocket endpoint of an ASGI example server at ``base``."""
    return base.replace("http://", "ws://") + "/ws"


def python() -> str:
    return os.environ.get("PYTHON", sys.executable)

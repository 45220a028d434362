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
    """The session's frames hold seq 1..n, each once (a merged delta frame holds
    ``firstSeq``..``seq``), deltas add up to the message, complete last."""
    assert list(range(1, frames[-1]["seq"] + 1)) == held_seqs(frames)
    deltas = [f for f in frames if f["type"] == "text_delta"]
    assert message == "".join(f["delta"] for f in deltas)
    [complete_text] = [f["text"] for f in frames if f["type"] == "text_complete"]
    assert message == complete_text
    assert "complete" == frames[-1]["type"]
    return deltas


def held_seqs(frames: list[Frame]) -> list[int]:
    """Every seq the frames account for, in order (PROTOCOL.md: ``firstSeq``)."""
    return [n for f in frames for n in range(f.get("firstSeq", f["seq"]), f["seq"] + 1)]


def ws_url(base: str) -> str:
    """The WebSocket endpoint of an ASGI example server at ``base``."""
    return base.replace("http://", "ws://") + "/ws"


def python() -> str:
    return os.environ.get("PYTHON", sys.executable)


class SseClient:
    """A real HTTP client reading a session's event stream (httpx, streaming)."""

    def __init__(self, base: str, session_id: str, **params: str) -> None:
        headers = {}
        if "last_event_id" in params:
            headers["Last-Event-ID"] = params.pop("last_event_id")
        self._http = httpx.Client(timeout=httpx.Timeout(10, read=30))
        url = f"{base}/api/sessions/{session_id}/events"
        self._stream = self._http.stream("GET", url, params=params, headers=headers)
        self.response = self._stream.__enter__()
        self._lines = self.response.iter_lines()
        self.events: list[tuple[str | None, Frame]] = []
        self.comments = 0

    def next(self) -> tuple[str | None, Frame]:
        """The next event: its id (None without one) and its frame."""
        fields: dict[str, str] = {}
        for line in self._lines:
            if not line:
                if "data" in fields:
                    event = (fields.get("id"), json.loads(fields["data"]))
                    assert event[1]["type"] == fields.get("event"), fields
                    self.events.append(event)
                    return event
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        raise EOFError("the stream ended")

    def until(self, predicate: Callable[[Frame], bool]) -> list[Frame]:
        got = []
        while True:
            _, frame = self.next()
            got.append(frame)
            if predicate(frame):
                return got

    @property
    def frames(self) -> list[Frame]:
        return [frame for _, frame in self.events]

    def last_id(self) -> str:
        return next(i for i, _ in reversed(self.events) if i is not None)

    def close(self) -> None:
        self._stream.__exit__(None, None, None)
        self._http.close()

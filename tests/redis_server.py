"""A real redis-server on a free loopback port, persistence off, for the tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.servers import free_port, require

REDIS_SERVER = shutil.which("redis-server")


def require_redis() -> str:
    """The server's path (a missing server fails under CI=true, see ``require``)."""
    require(REDIS_SERVER is not None, "redis-server is not installed")
    assert REDIS_SERVER is not None
    return REDIS_SERVER


class RedisServer:
    def __init__(self, folder: Path) -> None:
        self.binary = require_redis()
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.extra: list[str] = []
        """More arguments (cluster or replica settings)."""
        self.config_file: Path | None = None
        """Started as ``redis-server FILE --sentinel`` when set."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.folder), "--protected-mode", "no",
            *self.extra,
        ]  # fmt: skip
        if self.config_file is not None:  # a sentinel: its file says it all
            args = [self.binary, str(self.config_file), "--sentinel"]
        with (self.folder / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def kill(self) -> None:
        """Gone at once, like a crash: nothing is saved (persistence is off)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

"""Watch a session live in the terminal; resumes after reconnects.

    python examples/watch.py SESSION_ID [--url ws://127.0.0.1:8000/ws]

Text streams inline; tool calls, permission requests and the end of each run
are printed on lines of their own. When the connection drops it reconnects
with backoff and resumes from the last seq it printed (or says that the
history is gone and carries on from the present).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

DIM, BOLD, RED, GREEN, YELLOW, RESET = (
    "\033[2m",
    "\033[1m",
    "\033[31m",
    "\033[32m",
    "\033[33m",
    "\033[0m",
)


class Watcher:
    def __init__(self, session_id: str, out: Any = sys.stdout, color: bool = True) -> None:
        self.session_id = session_id
        self.out = out
        self.color = color
        self.last_seq: int | None = None
        self.epoch: str | None = None
        self.in_text = False

    def paint(self, style: str, text: str) -> str:
        return f"{style}{text}{RESET}" if self.color else text

    def line(self, text: str) -> None:
        if self.in_text:
            self.out.write("\n")
            self.in_text = False
        self.out.write(text + "\n")
        self.out.flush()

    def subscribe_frame(self) -> str:
        frame: dict[str, Any] = {"type": "subscribe", "sessionId": self.session_id}
        if self.last_seq is not None and self.epoch is not None:
            frame.update(lastSeq=self.last_seq, epoch=self.epoch)
        return json.dumps(frame)

    def show(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "subscribed":
            if frame["resumed"]:
                self.line(self.paint(DIM, f"[resumed after seq {self.last_seq}]"))
            elif self.last_seq is None:
                self.line(self.paint(DIM, f"[watching {self.session_id}]"))
            elif self.last_seq is not None and frame["seq"] > self.last_seq:
                self.line(
                    self.paint(
                        YELLOW, f"[history gone: seq {self.last_seq + 1}..{frame['seq']} missed]"
                    )
                )
            if not frame["resumed"]:
                self.last_seq = frame["seq"]
            self.epoch = frame["epoch"]
            return
        if kind == "client_error":
            self.line(self.paint(RED, f"[server refused: {frame['code']}: {frame['message']}]"))
            return
        if frame.get("sessionId") != self.session_id or "seq" not in frame:
            return
        if self.last_seq is not None and frame["seq"] <= self.last_seq:
            return  # already printed
        self.last_seq = frame["seq"]
        if kind == "text_delta":
            self.out.write(frame["delta"])
            self.out.flush()
            self.in_text = True
        elif kind == "text_complete":
            self.line("")
        elif kind == "tool_start":
            self.line(
                self.paint(BOLD, f"⚙ {frame['toolName']}") + f" {json.dumps(frame['toolInput'])}"
            )
        elif kind == "tool_result":
            style = RED if frame.get("isError") else GREEN
            self.line(self.paint(style, f"  ↳ {frame['toolName']}: {frame['result']}"))
        elif kind == "permission_request":
            request = frame["request"]
            self.line(
                self.paint(YELLOW, f"? permission: {request['toolName']} {request['command']}")
            )
        elif kind == "permission_timeout":
            self.line(self.paint(YELLOW, "? permission timed out: denied"))
        elif kind == "error":
            self.line(self.paint(RED, f"! {frame['error']}"))
        elif kind == "complete":
            self.line(self.paint(DIM, "— complete —"))


async def watch(url: str, watcher: Watcher, max_attempts: int | None = None) -> None:
    delay, attempts = 0.25, 0
    while max_attempts is None or attempts < max_attempts:
        attempts += 1
        try:
            async with connect(url, max_size=None) as websocket:
                delay = 0.25
                await websocket.send(watcher.subscribe_frame())
                async for raw in websocket:
                    watcher.show(json.loads(raw))
        except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
            watcher.line(
                watcher.paint(DIM, f"[disconnected: {exc or type(exc).__name__}; retrying]")
            )
        await asyncio.sleep(delay * (0.75 + random.random() / 2))
        delay = min(delay * 2, 5.0)


def main() -> None:
    parser = argparse.ArgumentParser(description="watch a sessionfanout session live")
    parser.add_argument("session_id")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/ws")
    parser.add_argument("--no-color", action="store_true")
    args = parser.parse_args()
    watcher = Watcher(args.session_id, color=not args.no_color and sys.stdout.isatty())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(watch(args.url, watcher))


if __name__ == "__main__":
    main()

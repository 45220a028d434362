"""One client connection: its sink, its bounded outbox, and the overflow policy.

Fan-out only appends to outboxes; each connection's writer (a task the hub
owns) sends from its outbox to its sink, so a slow or stuck client never
delays another. What happens when an outbox goes over its limits is decided
in one place, ``Connection.over_limits`` plus ``coalesce``, applied by the hub.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

import anyio

from .codec import encode
from .events import TextDelta

__all__ = ("Connection", "Sink")


class Sink(Protocol):
    """Where a connection's frames go: a WebSocket, an SSE response, a test fake."""

    async def send(self, text: str) -> None:
        """Send one text frame; raising marks the sink broken and drops it."""

    async def close(self, code: int, reason: str) -> None:
        """Close the transport (WebSocket close codes)."""


class Frame:
    """A session event, encoded once and shared by every outbox it is queued in.

    ``delta`` is the text of a ``text_delta`` frame (None for other events); the
    slow-consumer policy uses it to merge queued deltas.
    """

    __slots__ = ("delta", "seq", "session_id", "text", "turn_id")

    def __init__(
        self, text: str, session_id: str, seq: int, delta: str | None, turn_id: str | None
    ) -> None:
        self.text = text
        self.session_id = session_id
        self.seq = seq
        self.delta = delta
        self.turn_id = turn_id


# A queued item is a session Frame or, for frames bound to no session
# (connected, subscribed, client_error, global events), just the text.
Queued = Frame | str


def text_of(item: Queued) -> str:
    return item if type(item) is str else item.text  # type: ignore[union-attr]


class Connection:
    """A client as the hub sees it. ``context`` is the application's (a user, a scope)."""

    __slots__ = (
        "bytes_sent",
        "closing",
        "context",
        "frames_sent",
        "id",
        "outbox",
        "queued_bytes",
        "rate",
        "sink",
        "wakeup",
        "writer_scope",
    )

    def __init__(self, connection_id: str, sink: Sink, context: Any = None) -> None:
        self.id = connection_id
        self.sink = sink
        self.context = context
        self.outbox: deque[Queued] = deque()
        self.queued_bytes = 0
        self.frames_sent = 0
        self.bytes_sent = 0
        self.closing = False
        self.wakeup: anyio.Event | None = None
        self.writer_scope: anyio.CancelScope | None = None
        self.rate: Any = None

    def __repr__(self) -> str:
        return f"<Connection {self.id} queued={len(self.outbox)}>"

    def enqueue(self, item: Queued, size: int) -> None:
        self.outbox.append(item)
        self.queued_bytes += size
        wakeup = self.wakeup
        if wakeup is not None:
            self.wakeup = None
            wakeup.set()

    def over_limits(self, max_messages: int, max_bytes: int) -> bool:
        """Is more waiting than allowed? The head of the outbox (the next frame
        out) does not count against bytes: a reading client is never closed
        because one frame is large."""
        if len(self.outbox) > max_messages:
            return True
        if self.queued_bytes <= max_bytes:
            return False
        return self.queued_bytes - len(text_of(self.outbox[0])) > max_bytes

    def discard_outbox(self) -> int:
        dropped = len(self.outbox)
        self.outbox.clear()
        self.queued_bytes = 0
        return dropped


def coalesce(outbox: deque[Queued]) -> int:
    """Merge runs of queued ``text_delta`` frames of one session and turn.

    A run ends at any other frame of that session, so per-session order is
    kept. The merged frame carries the seq of the last delta it absorbs (a
    client resuming from it misses nothing). Returns how many frames went.
    """
    result: list[Queued] = []
    runs: dict[str, list[Frame]] = {}
    heads: dict[int, list[Frame]] = {}
    for item in outbox:
        if type(item) is str:
            result.append(item)
            continue
        frame: Frame = item  # type: ignore[assignment]
        run = runs.get(frame.session_id)
        if frame.delta is None:
            runs.pop(frame.session_id, None)
        elif run is not None and run[0].turn_id == frame.turn_id:
            run.append(frame)
            continue
        else:
            run = runs[frame.session_id] = [frame]
            heads[len(result)] = run
        result.append(frame)
    merged = 0
    for index, run in heads.items():
        if len(run) > 1:
            result[index] = _merge(run)
            merged += len(run) - 1
    if merged:
        outbox.clear()
        outbox.extend(result)
    return merged


def _merge(run: list[Frame]) -> Frame:
    first, last = run[0], run[-1]
    delta = "".join(frame.delta or "" for frame in run)
    event = TextDelta(first.session_id, delta, first.turn_id, last.seq)
    return Frame(encode(event), first.session_id, last.seq, delta, first.turn_id)

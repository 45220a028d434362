"""One client connection: its sink, its bounded outbox, and the overflow policy.

Fan-out only appends to outboxes; each connection's writer (a task the hub
owns) sends from its outbox to its sink, so a slow or stuck client never
delays another. What happens when an outbox goes over its limits is decided
in one place, ``Connection.over_limits`` plus ``coalesce``, applied by the hub.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .codec import decode_server, encode
from .events import TextDelta

__all__ = ("Connection", "Sink")


class Wakeup(Protocol):
    """A one-shot wake-up for a parked task (``anyio.Event`` is one)."""

    def set(self) -> None: ...

    def wait(self) -> Awaitable[Any]: ...


class Cancellable(Protocol):
    """A running writer, as the hub ends it (an asyncio task, a cancel scope)."""

    def cancel(self) -> object: ...


class Sink(Protocol):
    """Where a connection's frames go: a WebSocket, an SSE response, a test fake.

    A sink may also have ``try_send(text) -> bool``: write the frame now if
    the transport has room, without waiting (a transport's buffered
    ``write``), and return False to have it queued instead. Then an idle
    connection is written to directly, and its writer task exists only once
    backpressure has needed it.
    """

    async def send(self, text: str) -> None:
        """Send one text frame; raising marks the sink broken and drops it."""

    async def close(self, code: int, reason: str) -> None:
        """Close the transport (WebSocket close codes)."""


class Frame:
    """A session event, encoded once and shared by every outbox it is queued in.

    ``is_delta`` marks ``text_delta`` frames, which the slow-consumer policy
    may merge.
    """

    __slots__ = ("is_delta", "session_id", "text")

    def __init__(self, text: str, session_id: str, is_delta: bool) -> None:
        self.text = text
        self.session_id = session_id
        self.is_delta = is_delta


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
        "parked_at",
        "queued_bytes",
        "rate",
        "sending",
        "sink",
        "try_send",
        "wakeup",
        "writer",
    )

    def __init__(self, connection_id: str, sink: Sink, context: Any = None) -> None:
        self.id = connection_id
        self.sink = sink
        self.context = context
        self.try_send: Callable[[str], bool] | None = getattr(sink, "try_send", None)
        # Made on first need: with direct writes most connections never queue.
        self.outbox: deque[Queued] | None = None
        self.queued_bytes = 0
        self.frames_sent = 0
        self.bytes_sent = 0
        self.closing = False
        self.sending = False
        """The writer holds a frame (or is about to): nothing may overtake it."""
        self.wakeup: Wakeup | None = None
        """Set while the writer waits for the outbox to fill."""
        self.writer: Cancellable | None = None
        """The running writer (a task or its cancel scope); None when there is none."""
        self.parked_at = 0.0
        """When the writer last parked; negative once the hub retired it."""
        self.rate: Any = None

    def __repr__(self) -> str:
        return f"<Connection {self.id} queued={self.queued}>"

    @property
    def queued(self) -> int:
        return len(self.outbox) if self.outbox else 0

    def enqueue(self, item: Queued, size: int) -> None:
        outbox = self.outbox
        if outbox is None:
            outbox = self.outbox = deque()
        outbox.append(item)
        self.queued_bytes += size
        wakeup = self.wakeup
        if wakeup is not None:
            self.wakeup = None
            self.sending = True
            self.parked_at = 0.0
            wakeup.set()

    def over_limits(self, max_messages: int, max_bytes: int) -> bool:
        """Is more waiting than allowed? The head of the outbox (the next frame
        out) does not count against bytes: a reading client is never closed
        because one frame is large."""
        outbox = self.outbox
        if not outbox:
            return False
        if len(outbox) > max_messages:
            return True
        if self.queued_bytes <= max_bytes:
            return False
        return self.queued_bytes - len(text_of(outbox[0])) > max_bytes

    def discard_outbox(self) -> int:
        dropped = self.queued
        if self.outbox:
            self.outbox.clear()
        self.queued_bytes = 0
        return dropped


def coalesce(outbox: deque[Queued]) -> int:
    """Merge runs of queued ``text_delta`` frames of one session and turn.

    A run ends at any other frame of that session, so per-session order is
    kept. The merged frame carries the seq of the last delta it absorbs (a
    client resuming from it misses nothing) and, as ``firstSeq``, the seq of
    its first, so a client checking for gaps sees every number accounted for.
    Returns how many frames went.
    Runs only when an outbox overflows, so it decodes the frames it merges
    rather than keeping their parts for every frame.
    """
    result: list[Queued] = []
    runs: dict[str, list[TextDelta]] = {}
    heads: dict[int, list[TextDelta]] = {}
    for item in outbox:
        if type(item) is str:
            result.append(item)
            continue
        frame: Frame = item  # type: ignore[assignment]
        if not frame.is_delta:
            runs.pop(frame.session_id, None)
            result.append(frame)
            continue
        delta = decode_server(frame.text)
        assert isinstance(delta, TextDelta)
        run = runs.get(frame.session_id)
        if run is not None and run[0].turn_id == delta.turn_id:
            run.append(delta)
            continue
        run = runs[frame.session_id] = [delta]
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


def _merge(run: list[TextDelta]) -> Frame:
    first, last = run[0], run[-1]
    text = "".join(d.delta for d in run)
    first_seq = first.first_seq or first.seq  # the first may be a merged frame itself
    event = TextDelta(first.session_id, text, first.turn_id, first_seq, last.seq)
    return Frame(encode(event), first.session_id, True)

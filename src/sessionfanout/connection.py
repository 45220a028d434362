"""One client connection: its sink, its bounded outbox, and its writer's state.

Fan-out writes straight to an idle sink that takes frames directly, or
appends to the connection's outbox; the connection's writer (a task the hub
starts when a frame has to wait) sends from the outbox to the sink, so a
slow or stuck client never delays another.

The writer is one state machine, and everything that changes its state
lives in ``Writers.transition``, read from one table (h11's rule: what
affects a state machine lives in one place)::

    event    from                               to
    start    IDLE                               RUNNING   a frame has to wait: a task starts
    park     RUNNING                            PARKED    the outbox is empty: the task waits
    wake     PARKED, RETIRED                    RUNNING   a frame arrived for a waiting task
    retire   PARKED                             RETIRED   parked for writer_idle_seconds
    exit     RETIRED                            IDLE      the retired task ended
    drain    IDLE, RUNNING, PARKED, RETIRED     CLOSING   hub shutdown: send what is queued, close
    forget   any                                CLOSED    the connection is gone; its task cancelled

A task exists in RUNNING, PARKED, RETIRED and CLOSING (``Writers.count``).
Nothing may overtake a RUNNING or CLOSING writer, so only a connection in a
``quiet`` state (IDLE, PARKED, RETIRED) with an empty outbox is written to
directly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from .codec import decode_server, encode
from .events import TextDelta

__all__ = ("Connection", "Sink")


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


class Wakeup(Protocol):
    """A one-shot wake-up for a parked task (``anyio.Event`` is one)."""

    def set(self) -> None: ...

    def wait(self) -> Awaitable[Any]: ...


class Cancellable(Protocol):
    """A running writer, as the hub ends it (an asyncio task, a cancel scope)."""

    def cancel(self) -> object: ...


class WriterState:
    """A writer's state: compared by identity (as h11's states are), with what
    the hub asks of it as plain attributes."""

    __slots__ = ("has_task", "name", "quiet")

    def __init__(self, name: str, *, has_task: bool, quiet: bool) -> None:
        self.name = name
        self.has_task = has_task
        """A task exists (``Writers.count`` counts these)."""
        self.quiet = quiet
        """No frame is on its way: a direct write cannot overtake one."""

    def __repr__(self) -> str:
        return self.name


IDLE = WriterState("IDLE", has_task=False, quiet=True)
RUNNING = WriterState("RUNNING", has_task=True, quiet=False)
PARKED = WriterState("PARKED", has_task=True, quiet=True)
RETIRED = WriterState("RETIRED", has_task=True, quiet=True)
CLOSING = WriterState("CLOSING", has_task=True, quiet=False)
CLOSED = WriterState("CLOSED", has_task=False, quiet=False)
STATES: Final = (IDLE, RUNNING, PARKED, RETIRED, CLOSING, CLOSED)

TRANSITIONS: Final[dict[str, dict[WriterState, WriterState]]] = {
    "start": {IDLE: RUNNING},
    "park": {RUNNING: PARKED},
    "wake": {PARKED: RUNNING, RETIRED: RUNNING},
    "retire": {PARKED: RETIRED},
    "exit": {RETIRED: IDLE},
    "drain": {IDLE: CLOSING, RUNNING: CLOSING, PARKED: CLOSING, RETIRED: CLOSING},
    "forget": dict.fromkeys(STATES, CLOSED),
}


class IllegalTransition(AssertionError):
    """A writer event that its table does not allow from the current state: a bug."""


class Writers:
    """The writer state machine of every connection of one hub; sans-IO.

    Its methods, one per event of the table, are the only code that changes
    ``Connection.state``, ``wakeup`` and ``parked_at``; they also keep
    ``count``, the connections whose writer has a task. Leaving PARKED sets
    the writer's wake-up: every way out of a wait resumes the task.
    """

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def _move(self, connection: Connection, event: str) -> WriterState:
        old = connection.state
        new = TRANSITIONS[event].get(old)
        if new is None:
            raise IllegalTransition(f"writer of {connection.id}: {event!r} from {old!r}")
        connection.state = new
        self.count += new.has_task - old.has_task
        wakeup = connection.wakeup
        if wakeup is not None:
            connection.wakeup = None
            wakeup.set()
        return new

    def start(self, connection: Connection) -> None:
        self._move(connection, "start")

    def park(self, connection: Connection, wakeup: Wakeup, now: float) -> None:
        self._move(connection, "park")
        connection.wakeup = wakeup
        connection.parked_at = now

    def wake(self, connection: Connection) -> None:
        self._move(connection, "wake")

    def retire(self, connection: Connection) -> None:
        self._move(connection, "retire")

    def exit(self, connection: Connection) -> None:
        self._move(connection, "exit")

    def drain(self, connection: Connection) -> WriterState:
        """Returns the state it left, so the hub knows whether a task must start."""
        old = connection.state
        self._move(connection, "drain")
        return old

    def forget(self, connection: Connection) -> None:
        self._move(connection, "forget")


class Frame:
    """A frame, encoded once and shared by every outbox it is queued in.

    ``session_id`` is None for frames bound to no session (``connected``,
    ``subscribed``, ``client_error``, global events); ``is_delta`` marks
    ``text_delta`` frames, which the slow-consumer policy may merge.
    """

    __slots__ = ("is_delta", "session_id", "text")

    def __init__(self, text: str, session_id: str | None = None, is_delta: bool = False) -> None:
        self.text = text
        self.session_id = session_id
        self.is_delta = is_delta


class Connection:
    """A client as the hub sees it. ``context`` is the application's (a user, a scope)."""

    __slots__ = (
        "bytes_sent",
        "context",
        "frames_sent",
        "id",
        "log_budget",
        "outbox",
        "parked_at",
        "presence_info",
        "queued_bytes",
        "rate",
        "sink",
        "state",
        "task",
        "try_send",
        "wakeup",
    )

    def __init__(self, connection_id: str, sink: Sink, context: Any = None) -> None:
        self.id = connection_id
        self.sink = sink
        self.context = context
        self.presence_info: dict[str, Any] | None = None
        """What presence says of this connection (the ``presence_info`` hook's answer)."""
        self.try_send: Callable[[str], bool] | None = getattr(sink, "try_send", None)
        # Made on first need: with direct writes most connections never queue.
        self.outbox: deque[Frame] | None = None
        self.queued_bytes = 0
        self.frames_sent = 0
        self.bytes_sent = 0
        self.state = IDLE
        """The writer's state; see the module docstring. Only ``Writers`` sets it."""
        self.wakeup: Wakeup | None = None
        """What the writer waits on while PARKED."""
        self.task: Cancellable | None = None
        """The writer's task (or its cancel scope) while it has one."""
        self.parked_at = 0.0
        self.rate: Any = None
        self.log_budget: Any = None
        """Warnings about this connection it may still cause (made on the first)."""

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.state!r} queued={self.queued}>"

    @property
    def queued(self) -> int:
        return len(self.outbox) if self.outbox else 0

    def enqueue(self, frame: Frame) -> None:
        outbox = self.outbox
        if outbox is None:
            outbox = self.outbox = deque()
        outbox.append(frame)
        self.queued_bytes += len(frame.text)

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
        return self.queued_bytes - len(outbox[0].text) > max_bytes

    def discard_outbox(self) -> int:
        dropped = self.queued
        if self.outbox:
            self.outbox.clear()
        self.queued_bytes = 0
        return dropped

    def coalesce(self) -> int:
        """Merge runs of queued ``text_delta`` frames of one session and turn
        (the slow-consumer policy); returns how many frames went."""
        if not self.outbox:
            return 0
        merged = coalesce(self.outbox)
        if merged:
            self.queued_bytes = sum(len(frame.text) for frame in self.outbox)
        return merged


def coalesce(outbox: deque[Frame]) -> int:
    """Merge runs of queued ``text_delta`` frames of one session and turn.

    A run ends at any other frame of that session, so per-session order is
    kept. The merged frame carries the seq of the last delta it absorbs (a
    client resuming from it misses nothing) and, as ``firstSeq``, the seq of
    its first, so a client checking for gaps sees every number accounted for.
    Returns how many frames went. Runs only when an outbox overflows, so it
    decodes the frames it merges rather than keeping their parts for every
    frame.
    """
    result: list[Frame] = []
    runs: dict[str, list[TextDelta]] = {}
    heads: dict[int, list[TextDelta]] = {}
    for frame in outbox:
        session_id = frame.session_id
        if session_id is None:
            result.append(frame)
            continue
        if not frame.is_delta:
            runs.pop(session_id, None)
            result.append(frame)
            continue
        delta = decode_server(frame.text)
        assert isinstance(delta, TextDelta)
        run = runs.get(session_id)
        if run is not None and run[0].turn_id == delta.turn_id:
            run.append(delta)
            continue
        run = runs[session_id] = [delta]
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

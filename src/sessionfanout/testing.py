"""Testing your server: a recording sink and an in-process client.

    from sessionfanout.testing import TestClient

    async with Hub() as hub:
        client = await TestClient.connect(hub)
        await client.subscribe("s1")
        await hub.run_agent("s1", my_agent())
        await client.receive(type="complete", session="s1")
        assert "Hello, world" == client.text_of("s1")[None]

The client is a real connection of the hub (its frames go through the same
outbox, writer and codec as a WebSocket's); only the transport is a list.
It works on asyncio and trio, and on trio's ``MockClock`` the waits are
virtual: ``receive(timeout=...)`` measures the hub's own clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio

from .checks import check_timeout, describe
from .connection import Connection
from .errors import InvalidArgument
from .hub import Hub

__all__ = ("RecordingSink", "TestClient")

Frame = dict[str, Any]


class RecordingSink:
    """A sink that keeps every frame it is sent, in order, and wakes waiters.

    ``direct=True`` also offers ``try_send``, so an idle connection is written
    to directly, as a transport with a buffered write is.
    """

    def __init__(self, *, direct: bool = False) -> None:
        self.texts: list[str] = []
        self.closed: tuple[int, str] | None = None
        self._arrived = anyio.Event()
        if direct:
            self.try_send = self._take

    def _take(self, text: str) -> bool:
        self.texts.append(text)
        self._arrived.set()  # wakes every waiter; the next ones wait on a new event
        self._arrived = anyio.Event()
        return True

    async def send(self, text: str) -> None:
        self._take(text)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self._arrived.set()
        self._arrived = anyio.Event()

    async def wait(self) -> None:
        """Until another frame arrives (or the sink is closed)."""
        await self._arrived.wait()

    @property
    def frames(self) -> list[Frame]:
        return [json.loads(text) for text in self.texts]

    def of_type(self, *types: str) -> list[Frame]:
        return [frame for frame in self.frames if frame["type"] in types]

    def session_frames(self, session_id: str) -> list[Frame]:
        return [frame for frame in self.frames if frame.get("sessionId") == session_id]


class TestClient:
    """A client of ``hub`` as a server sees one, with conveniences for tests."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, hub: Hub, connection: Connection, sink: RecordingSink) -> None:
        self.hub = hub
        self.connection = connection
        self.sink = sink
        self._cursor = 0

    @classmethod
    async def connect(cls, hub: Hub, context: Any = None, *, direct: bool = False) -> TestClient:
        if not isinstance(hub, Hub):
            raise InvalidArgument(f"hub must be a Hub, got {describe(hub)}")
        sink = RecordingSink(direct=direct is True)
        return cls(hub, await hub.connect(sink, context), sink)

    @property
    def frames(self) -> list[Frame]:
        """Every frame this client was sent, decoded."""
        return self.sink.frames

    @property
    def closed(self) -> tuple[int, str] | None:
        """The close code and reason, once the hub closed this connection."""
        return self.sink.closed

    async def send_raw(self, text: str | bytes) -> None:
        """A client frame exactly as given (to test what a bad one gets)."""
        await self.hub.handle_message(self.connection, text)

    async def send(self, frame: Frame) -> None:
        await self.send_raw(json.dumps(frame))

    async def subscribe(
        self,
        session_id: str,
        *,
        last_seq: int | None = None,
        epoch: str | None = None,
        from_start: bool = False,
        presence: bool = False,
        timeout: float = 5.0,  # noqa: ASYNC109 - a test's wait is bounded where it is written
    ) -> Frame:
        """Send ``subscribe``; returns the ``subscribed`` or ``client_error`` reply
        (with ``presence``, the ``presence`` snapshot follows it)."""
        frame: Frame = {"type": "subscribe", "sessionId": session_id}
        if last_seq is not None:
            frame["lastSeq"] = last_seq
        if epoch is not None:
            frame["epoch"] = epoch
        if from_start:
            frame["from"] = "start"
        if presence:
            frame["presence"] = True
        await self.send(frame)
        return await self.receive(
            type=("subscribed", "client_error"),
            where=lambda f: f.get("sessionId", session_id) == session_id,
            timeout=timeout,
        )

    async def unsubscribe(
        self,
        session_id: str,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - a test's wait is bounded where it is written
    ) -> Frame:
        await self.send({"type": "unsubscribe", "sessionId": session_id})
        return await self.receive(type=("unsubscribed", "client_error"), timeout=timeout)

    async def answer(self, request_id: str, allowed: bool, *, always_allow: bool = False) -> None:
        """Answer a permission request; a refusal arrives as a ``client_error`` frame."""
        frame: Frame = {"type": "permission_response", "requestId": request_id}
        frame["allowed"] = allowed
        if always_allow:
            frame["alwaysAllow"] = True
        await self.send(frame)

    async def receive(
        self,
        *,
        type: str | tuple[str, ...] | None = None,
        session: str | None = None,
        where: Callable[[Frame], bool] | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109 - a test's wait is bounded where it is written
    ) -> Frame:
        """The next frame not yet received that matches every filter given.

        Frames before it that do not match are passed over (they stay in
        ``frames``). Raises ``TimeoutError`` listing what did arrive when none
        matches within ``timeout`` seconds of the hub's clock, and
        ``ConnectionError`` when the hub closed the connection first.
        """
        types = (type,) if isinstance(type, str) else type

        def matches(frame: Frame) -> bool:
            return (
                (types is None or frame["type"] in types)
                and (session is None or frame.get("sessionId") == session)
                and (where is None or where(frame))
            )

        check_timeout("timeout", timeout)
        with anyio.move_on_after(timeout):
            while True:
                texts = self.sink.texts
                for index in range(self._cursor, len(texts)):
                    frame: Frame = json.loads(texts[index])
                    if matches(frame):
                        self._cursor = index + 1
                        return frame
                if self.sink.closed is not None:
                    raise ConnectionError(f"closed {self.sink.closed} with no such frame")
                await self.sink.wait()
        seen = [frame["type"] for frame in self.frames[self._cursor :]]
        raise TimeoutError(f"no frame with type={type!r} session={session!r}; after it: {seen}")

    def text_of(self, session_id: str) -> dict[str | None, str]:
        """The session's streamed text so far, per turn: every ``text_delta``
        received, concatenated in seq order (a merged frame counts once)."""
        texts: dict[str | None, str] = {}
        for frame in self.sink.session_frames(session_id):
            if frame["type"] == "text_delta":
                turn = frame.get("turnId")
                texts[turn] = texts.get(turn, "") + frame["delta"]
        return texts

    async def close(self) -> None:
        """The client goes away."""
        await self.hub.disconnect(self.connection)

"""The protocol over HTTP: a session's events as Server-Sent Events, and
permission answers as POST requests.

    GET  /api/sessions/{id}/events                    text/event-stream
         Last-Event-ID: <epoch>:<seq>  (or ?lastEventId=)  resume
         ?from=start                                        late joiner
         ?presence=true                                     presence frames too
    POST /api/sessions/{id}/permissions/{requestId}  {"connectionId", "allowed", "alwaysAllow"?}

A stream is a hub connection like a WebSocket's: the same ``connected`` and
``subscribed`` frames, the same events, global ones included, and the same
slow-consumer policy (its sink waits while the response is not read).
"""

from __future__ import annotations

import math

import anyio
import anyio.abc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from sessionfanout import (
    Connection,
    Hub,
    HubClosed,
    InvalidArgument,
    ProtocolError,
    UnknownConnection,
)
from sessionfanout.sse import HEARTBEAT, SseFramer, parse_last_event_id

HEARTBEAT_SECONDS = 15.0
STATUS = {"invalid_message": 400, "forbidden": 403, "unknown_request": 404}


class SseSink:
    """A stream's sink: frames wait in a one-slot channel for the response to
    send them, so a client that does not read backs up its own outbox only."""

    def __init__(self) -> None:
        self.incoming, self.outgoing = anyio.create_memory_object_stream[str](1)
        self._framer = SseFramer()

    async def send(self, text: str) -> None:
        await self.incoming.send(self._framer.frame(text))

    async def close(self, code: int, reason: str) -> None:
        await self.incoming.aclose()


class EventStream(Response):
    """A ``text/event-stream`` response that ends, and forgets its connection,
    as soon as the client goes away (not at the next write)."""

    media_type = "text/event-stream"

    def __init__(self, streams: Streams, connection: Connection, sink: SseSink) -> None:
        # No Content-Length: the body goes on until one side ends it.
        self.status_code, self.background = 200, None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # nginx: pass each event on at once
        ]
        self.streams, self.connection, self.sink = streams, connection, sink

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        try:
            await send(start)
            # A reconnecting EventSource waits this long (ms) before it tries again.
            await send(
                {"type": "http.response.body", "body": b"retry: 1000\n\n", "more_body": True}
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._until_disconnect, receive, tg.cancel_scope)
                await self._stream(send)
                tg.cancel_scope.cancel()
        finally:
            self.streams.open.pop(self.connection.id, None)
            await self.streams.hub.disconnect(self.connection)

    async def _stream(self, send: Send) -> None:
        frames = self.sink.outgoing
        while True:
            chunk = HEARTBEAT
            with anyio.move_on_after(self.streams.heartbeat):
                try:
                    chunk = await frames.receive()
                except anyio.EndOfStream:  # the hub closed the connection
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
            await self._send_body(send, chunk)

    @staticmethod
    async def _send_body(send: Send, chunk: str) -> None:
        await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})

    @staticmethod
    async def _until_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()


class Streams:
    """The open event streams, by connection id, for the POST answers."""

    def __init__(self, hub: Hub, heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self.hub = hub
        self.heartbeat = heartbeat
        self.open: dict[str, tuple[Connection, SseSink]] = {}

    async def get_events(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        last_id = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
        from_start = request.query_params.get("from") == "start"
        try:
            epoch, last_seq = parse_last_event_id(last_id) if last_id else (None, None)
        except InvalidArgument as exc:
            return failure(400, str(exc), "invalid_message")
        sink = SseSink()
        try:
            connection = await self.hub.connect(sink)
        except HubClosed:
            return JSONResponse({"error": "server shutting down"}, status_code=503)
        streaming = False
        try:
            await self.hub.subscribe(
                connection,
                session_id,
                last_seq,
                epoch,
                from_start=from_start and last_seq is None,
                presence=request.query_params.get("presence") == "true",
                authorize=True,  # the hub's own hook, as a WebSocket client's subscribe asks it
            )
            self.open[connection.id] = (connection, sink)
            streaming = True
            return EventStream(self, connection, sink)
        except ProtocolError as exc:  # the hook said no
            return failure(STATUS.get(exc.code, 400), exc.message, exc.code)
        except InvalidArgument as exc:
            return failure(400, str(exc), "invalid_message")
        finally:
            if not streaming:  # refused or failed: no connection is left behind
                await self.hub.disconnect(connection)

    async def post_permission(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        request_id = request.path_params["request_id"]
        try:
            body = await request.json()
            connection_id, allowed = body["connectionId"], body["allowed"]
            always_allow = body.get("alwaysAllow", False)
        except (ValueError, KeyError, TypeError, AttributeError):
            message = "body must be {connectionId, allowed, alwaysAllow?}"
            return failure(400, message, "invalid_message")
        stream = self.open.get(connection_id) if isinstance(connection_id, str) else None
        if stream is None or session_id not in self.hub.sessions_of(stream[0]):
            return failure(403, "no open stream of this session has that id", "forbidden")
        try:
            await self.hub.answer_permission(
                stream[0], request_id, allowed, always_allow=always_allow
            )
        except ProtocolError as exc:
            return failure(STATUS.get(exc.code, 400), exc.message, exc.code)
        except (InvalidArgument, UnknownConnection) as exc:
            return failure(400, str(exc), "invalid_message")
        return JSONResponse({"decided": True})

    async def close_all(self, request: Request) -> Response:
        """Test only: end every stream, as a proxy or a restart would."""
        for connection, sink in list(self.open.values()):
            await sink.incoming.aclose()
            await self.hub.disconnect(connection)
        return JSONResponse({"closed": True})


def failure(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


def heartbeat_seconds(value: str) -> float:
    seconds = float(value)
    if not 0 < seconds < math.inf:
        raise ValueError("the heartbeat must be a positive number of seconds")
    return seconds

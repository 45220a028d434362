"""The sessionfanout demo: a Starlette app served by uvicorn.

    python examples/asgi_app.py --host 127.0.0.1 --port 8000

Routes: ``GET /`` (the demo page), ``WS /ws`` (the protocol),
``GET /api/sessions/{id}/events`` (the same as Server-Sent Events, see
``sse_routes``), ``POST /api/sessions/{id}/permissions/{requestId}``,
``POST /api/sessions/{id}/messages`` (start the mock agent),
``POST /api/sessions/{id}/abort``, ``GET /api/sessions/{id}/presence`` (who
is subscribed, on every process), ``POST /api/config/changed``,
``GET /api/statistics`` (the hub's counters), ``GET /metrics`` (the same for
Prometheus).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import anyio
import attrs
import uvicorn
from agents import AgentRunner  # the script's folder is on sys.path
from mock_agent import MockOptions
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sse_routes import HEARTBEAT_SECONDS, Streams, heartbeat_seconds
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from sessionfanout import (
    MAX_ID_LENGTH,
    BrokerUnavailable,
    ConfigChanged,
    Connection,
    Hub,
    HubClosed,
    HubConfig,
    Presence,
    encode,
)
from sessionfanout.metrics import HubCollector

DEMO = Path(__file__).parent / "demo"
MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_NAME_LENGTH = 64
logger = logging.getLogger("sessionfanout.examples")


class WebSocketSink:
    """The whole transport adapter: a Starlette WebSocket as a Sink.

    ``try_send`` lets the hub write a frame without a task switch: it runs the
    socket's ``send`` up to its first pause. Under uvicorn a send finishes
    right there unless the socket's buffer is full; one that must wait is
    finished by a task of its own, and until it is done ``try_send`` says no,
    so the hub queues what follows for ``send``, which waits its turn.
    ``benchmarks/e2e.py`` shows what it saves (``sf`` against ``sf-plain``).
    """

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self._unfinished: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        """How a send finished by its own task failed: the next send raises it."""

    def try_send(self, text: str) -> bool:
        if self._unfinished is not None or self._failed is not None:
            return False
        step = self.websocket.send({"type": "websocket.send", "text": text})
        try:
            waiting = step.send(None)
        except StopIteration:
            return True
        self._unfinished = asyncio.ensure_future(self._finish(step, waiting))
        return True

    async def _finish(self, step: Coroutine[Any, Any, None], waiting: Any) -> None:
        try:
            await finish_send(step, waiting)
        except Exception as exc:
            self._failed = exc
        finally:
            self._unfinished = None

    async def send(self, text: str) -> None:
        if self._unfinished is not None:
            await asyncio.wait((self._unfinished,))
        if self._failed is not None:
            raise self._failed
        await self.websocket.send_text(text)

    async def close(self, code: int, reason: str) -> None:
        await self.websocket.close(code, reason)


class PlainWebSocketSink:
    """The same adapter without ``try_send``: every frame through the
    connection's writer task (the baseline ``benchmarks/e2e.py`` measures)."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket

    async def send(self, text: str) -> None:
        await self.websocket.send_text(text)

    async def close(self, code: int, reason: str) -> None:
        await self.websocket.close(code, reason)


async def finish_send(step: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Run a coroutine on from its first pause, as the task running it would:
    wait for the future it yielded (None: yield to the loop), resume it, again
    until it returns; a cancellation is passed in."""
    while True:
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                await asyncio.wait((waiting,))
        except asyncio.CancelledError as exc:
            resume = functools.partial(step.throw, exc)
        else:
            resume = functools.partial(step.send, None)
        try:
            waiting = resume()
        except StopIteration:
            return


async def incoming(websocket: WebSocket) -> AsyncIterator[str | bytes]:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        yield text if text is not None else message.get("bytes") or b""


async def websocket_endpoint(websocket: WebSocket) -> None:
    """``/ws?name=...``: the name others see in presence (a real server takes
    the user from its authentication instead)."""
    hub: Hub = websocket.app.state.hub
    await websocket.accept()
    name = websocket.query_params.get("name", "")[:MAX_NAME_LENGTH]
    try:
        await hub.serve(
            WebSocketSink(websocket), incoming(websocket), {"name": name} if name else None
        )
    except HubClosed:
        await websocket.close(1001, "server shutting down")
    except WebSocketDisconnect:
        pass


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_json(request: Request) -> Any:
    """The body as JSON, refusing more than MAX_BODY_BYTES; ValueError when bad."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ValueError(f"body is larger than {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise ValueError("body is not valid JSON") from None


def session_id_of(request: Request) -> str:
    session_id: str = request.path_params["session_id"]
    if not session_id:
        raise ValueError("session id must not be empty")
    if len(session_id) > MAX_ID_LENGTH:
        raise ValueError(f"session id must be at most {MAX_ID_LENGTH} characters")
    return session_id


async def post_message(request: Request) -> Response:
    try:
        session_id = session_id_of(request)
        options = MockOptions.from_json(await read_json(request))
    except ValueError as exc:
        return error(400, str(exc))
    runner: AgentRunner = request.app.state.runner
    if not request.app.state.hub.running:
        return error(503, "server shutting down")
    try:
        started = await runner.start(session_id, options)
    except BrokerUnavailable as exc:  # it cannot tell whether one runs elsewhere
        return error(503, str(exc))
    if not started:
        return error(409, "an agent is already running for this session")
    return JSONResponse({"accepted": True}, status_code=202)


async def post_abort(request: Request) -> Response:
    try:
        session_id = session_id_of(request)
    except ValueError as exc:
        return error(400, str(exc))
    try:
        aborted = await request.app.state.runner.abort(session_id)
    except HubClosed:
        return error(503, "server shutting down")
    except BrokerUnavailable as exc:
        return error(503, str(exc))
    if not aborted:
        return error(404, "no agent is running for this session")
    return JSONResponse({"aborted": True}, status_code=202)


async def post_config_changed(request: Request) -> Response:
    try:
        body = await read_json(request)
    except ValueError as exc:
        return error(400, str(exc))
    change = body.get("changeType") if isinstance(body, dict) else None
    if change not in ("config", "theme"):
        return error(400, 'field \'changeType\' must be "config" or "theme"')
    try:
        await request.app.state.hub.broadcast_global(ConfigChanged(change))
    except HubClosed:
        return error(503, "server shutting down")
    return JSONResponse({"accepted": True}, status_code=202)


async def get_statistics(request: Request) -> Response:
    """The hub's counters (``Hub.statistics()``), without the per-connection list."""
    stats = attrs.asdict(request.app.state.hub.statistics())
    del stats["outboxes"]
    return JSONResponse(stats)


async def get_metrics(request: Request) -> Response:
    """The hub's counters in Prometheus's text format (``sessionfanout.metrics``)."""
    body = generate_latest(request.app.state.metrics)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def index(request: Request) -> Response:
    return FileResponse(DEMO / "index.html")


def may_see(session_id: str) -> bool:
    """The demo's rule: sessions named ``private:...`` are refused, so that the
    refusal can be seen. A real server asks whether the user may see it."""
    return not session_id.startswith("private:")


def authorize(connection: Connection, session_id: str) -> bool:
    """The demo's authorization hook (a real one looks at the connection's
    ``context``, its user)."""
    return may_see(session_id)


def presence_info(connection: Connection) -> dict[str, Any] | None:
    """What others see of a subscriber: the name its connection gave, if any."""
    context = connection.context
    return {"name": context["name"]} if isinstance(context, dict) and "name" in context else None


async def get_presence(request: Request) -> Response:
    """The ``presence`` snapshot frame of the session, as JSON."""
    hub: Hub = request.app.state.hub
    try:
        session_id = session_id_of(request)
    except ValueError as exc:
        return error(400, str(exc))
    if not may_see(session_id):
        return error(403, f"not allowed to see {session_id!r:.80}")
    try:
        members = await hub.presence(session_id)
    except HubClosed:
        return error(503, "server shutting down")
    except BrokerUnavailable as exc:
        return error(503, str(exc))
    body = encode(Presence(session_id, members=members))
    return Response(body, media_type="application/json")


async def get_events(request: Request) -> Response:
    streams: Streams = request.app.state.streams
    return await streams.get_events(request)


async def post_permission(request: Request) -> Response:
    streams: Streams = request.app.state.streams
    return await streams.post_permission(request)


async def close_streams(request: Request) -> Response:
    streams: Streams = request.app.state.streams
    return await streams.close_all(request)


def create_app(
    config: HubConfig | None = None,
    redis_url: str | None = None,
    secret: str | None = None,
    *,
    presence_ttl: float = 30.0,
    sse_heartbeat: float = HEARTBEAT_SECONDS,
    test_endpoints: bool = False,
) -> Starlette:
    """The demo app; with ``redis_url``, on the Redis backplane (several
    processes). ``test_endpoints`` adds ``POST /api/test/close-streams``, which
    ends every event stream as a proxy or a restart would."""
    config = config or HubConfig(authorize=authorize, presence_info=presence_info)
    test_routes = [Route("/api/test/close-streams", close_streams, methods=["POST"])]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        broker = None
        if redis_url is not None:
            from sessionfanout.redis_broker import RedisBroker

            broker = RedisBroker(redis_url, secret=secret, presence_ttl=presence_ttl)
        async with Hub(config, broker=broker) as hub, anyio.create_task_group() as agents:
            app.state.hub = hub
            # The app's own registry: /metrics shows this hub alone, and a second app in
            # this process does not clash with it in prometheus_client's global one.
            app.state.metrics = CollectorRegistry()
            HubCollector(hub, app.state.metrics)
            app.state.runner = AgentRunner(hub, agents)
            app.state.streams = Streams(hub, sse_heartbeat)
            yield
            await shutdown(app)

    return Starlette(
        routes=[
            Route("/", index),
            WebSocketRoute("/ws", websocket_endpoint),
            Route("/api/sessions/{session_id:path}/events", get_events),
            Route(
                "/api/sessions/{session_id:path}/permissions/{request_id}",
                post_permission,
                methods=["POST"],
            ),
            Route("/api/sessions/{session_id:path}/messages", post_message, methods=["POST"]),
            Route("/api/sessions/{session_id:path}/abort", post_abort, methods=["POST"]),
            Route("/api/sessions/{session_id:path}/presence", get_presence),
            Route("/api/config/changed", post_config_changed, methods=["POST"]),
            Route("/api/statistics", get_statistics),
            Route("/metrics", get_metrics),
            Mount("/static", StaticFiles(directory=DEMO)),
            *(test_routes if test_endpoints else []),
        ],
        lifespan=lifespan,
    )


async def shutdown(app: Starlette) -> None:
    """Abort running agents (their clients see error and complete), then let the
    hub flush and close every connection. Idempotent."""
    await app.state.runner.abort_all()
    await app.state.hub.aclose()


class Server(uvicorn.Server):
    """uvicorn closes open WebSockets before the app's lifespan ends; shut the
    hub down first so that clients get every frame it accepted."""

    async def shutdown(self, sockets: Any = None) -> None:
        app = self.config.loaded_app
        while hasattr(app, "app") and not isinstance(app, Starlette):
            app = app.app
        if isinstance(app, Starlette) and hasattr(app.state, "hub"):
            await shutdown(app)
        await super().shutdown(sockets)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="sessionfanout demo server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--redis", metavar="URL", help="run on the Redis backplane, e.g. redis://127.0.0.1:6379/0"
    )
    where.add_argument(
        "--redis-cluster",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="run on a Redis Cluster, found from these seed nodes",
    )
    where.add_argument(
        "--redis-sentinel",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="run on the master these Redis sentinels know as --redis-master",
    )
    parser.add_argument("--redis-master", metavar="NAME", help="the master's name in Sentinel")
    parser.add_argument(
        "--secret",
        default=os.environ.get("SESSIONFANOUT_SECRET"),
        help="sign backplane messages (default: $SESSIONFANOUT_SECRET)",
    )
    parser.add_argument(
        "--presence-ttl",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="with --redis: a dead process's subscribers leave presence within this (default 30)",
    )
    parser.add_argument(
        "--sse-heartbeat",
        type=heartbeat_seconds,
        default=HEARTBEAT_SECONDS,
        metavar="SECONDS",
        help="a comment on idle event streams this often (default 15)",
    )
    parser.add_argument(
        "--test-endpoints", action="store_true", help="add POST /api/test/close-streams"
    )
    args = parser.parse_args(argv)
    if bool(args.redis_sentinel) != bool(args.redis_master):
        parser.error("--redis-sentinel and --redis-master go together")
    redis_url = args.redis
    if args.redis_cluster:
        redis_url = f"redis+cluster://{args.redis_cluster}"
    elif args.redis_sentinel:
        redis_url = f"redis+sentinel://{args.redis_sentinel}/{args.redis_master}"
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(
        create_app(
            redis_url=redis_url,
            secret=args.secret,
            presence_ttl=args.presence_ttl,
            sse_heartbeat=args.sse_heartbeat,
            test_endpoints=args.test_endpoints,
        ),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        lifespan="on",
    )
    backplane = f" on Redis at {redis_url}" if redis_url else ""
    print(f"sessionfanout demo{backplane}: open http://{args.host}:{args.port}/", flush=True)
    Server(config).run()


if __name__ == "__main__":
    main()

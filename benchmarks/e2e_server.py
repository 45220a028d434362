"""The servers ``benchmarks/e2e.py`` measures: one ASGI app per implementation.

    python benchmarks/e2e_server.py --impl sf --port 8100

Every app serves the same three things:

- ``WS /ws`` (python-socketio: ``/socket.io/``): a client subscribes to one
  session and is told ``subscribed``; then it gets that session's tokens as
  ``{"type": "text_delta", "sessionId", "delta"}`` frames.
- ``POST /start`` ``{"sessions": [...], "rate": tokens/s, "duration": s}``:
  one producer per session emits tokens ``<index>@<emit time, us>;`` (rate
  0: as fast as it can, yielding after each), then ``E<count>;``.
- ``GET /cpu``: this process's CPU seconds (user + system), for the cost.

Implementations (``--impl``):

- ``sf``: sessionfanout as the example app runs it: ``HubConfig()``'s 50 ms
  batching, its Starlette ``WebSocketSink`` adapter and ``incoming``.
- ``sf0``: the same with ``batch_interval=0``: a frame per token.
- ``sf-plain``: ``sf0`` with the adapter's baseline, ``PlainWebSocketSink``
  (no ``try_send``: every frame through the connection's writer task).
- ``bare``: a Starlette loop, ``await ws.send_text`` to each subscriber in
  turn. No isolation: one slow client holds up the others. The floor.
- ``broadcaster``: encode/broadcaster's memory backend under Starlette: a
  queue and a forwarding task per subscription.
- ``socketio``: python-socketio's ASGI app, ``emit(room=session)``.
- ``producers``: the producers alone (a token goes nowhere), for what they
  cost by themselves: the same in every server above.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import inspect
import json
import resource
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

IMPLS = ("sf", "sf0", "sf-plain", "bare", "broadcaster", "socketio", "producers")

Emit = Callable[[str, str], Awaitable[None]]


def delta_frame(session_id: str, text: str) -> str:
    return json.dumps({"type": "text_delta", "sessionId": session_id, "delta": text})


async def produce(emit: Emit, session_id: str, rate: float, duration: float) -> None:
    """Paced on absolute times (no drift); rate 0: flat out, yielding each token."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    count = 0
    while True:
        if rate:
            if count >= rate * duration:
                break
        elif loop.time() - start >= duration:
            break
        await emit(session_id, f"{count}@{time.time_ns() // 1000};")
        count += 1
        delay = start + count / rate - loop.time() if rate else 0
        await asyncio.sleep(max(0.0, delay))
    await emit(session_id, f"E{count};")


def common_routes(emit: Callable[[], Emit]) -> list[Route]:
    producers: set[asyncio.Task[None]] = set()

    async def start(request: Request) -> Response:
        spec = await request.json()
        for session_id in spec["sessions"]:
            task = asyncio.create_task(produce(emit(), session_id, spec["rate"], spec["duration"]))
            producers.add(task)
            task.add_done_callback(producers.discard)
        return JSONResponse({"started": len(spec["sessions"])})

    async def cpu(request: Request) -> Response:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return JSONResponse({"cpu": usage.ru_utime + usage.ru_stime, "producing": len(producers)})

    return [Route("/start", start, methods=["POST"]), Route("/cpu", cpu)]


def producers_app() -> Starlette:
    async def emit(session_id: str, text: str) -> None:
        pass

    return Starlette(routes=common_routes(lambda: emit))


def sessionfanout_app(batch_interval: float, *, plain: bool = False) -> Starlette:
    from asgi_app import PlainWebSocketSink, WebSocketSink, incoming  # the example app's

    from sessionfanout import Hub, HubConfig

    hub = Hub(HubConfig(batch_interval=batch_interval))
    adapter = PlainWebSocketSink if plain else WebSocketSink

    async def websocket_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        with contextlib.suppress(WebSocketDisconnect):
            await hub.serve(adapter(websocket), incoming(websocket))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with hub:
            yield

    return Starlette(
        routes=[WebSocketRoute("/ws", websocket_endpoint), *common_routes(lambda: hub.queue_delta)],
        lifespan=lifespan,
    )


def bare_app() -> Starlette:
    subscribers: dict[str, set[WebSocket]] = {}

    async def websocket_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        joined: list[str] = []
        try:
            while True:
                message = json.loads(await websocket.receive_text())
                session_id = message["sessionId"]
                subscribers.setdefault(session_id, set()).add(websocket)
                joined.append(session_id)
                await websocket.send_text(json.dumps({"type": "subscribed"}))
        except WebSocketDisconnect:
            pass
        finally:
            for session_id in joined:
                subscribers.get(session_id, set()).discard(websocket)

    async def emit(session_id: str, text: str) -> None:
        frame = delta_frame(session_id, text)
        for websocket in tuple(subscribers.get(session_id, ())):
            with contextlib.suppress(Exception):
                await websocket.send_text(frame)

    return Starlette(
        routes=[WebSocketRoute("/ws", websocket_endpoint), *common_routes(lambda: emit)]
    )


def broadcaster_app() -> Starlette:
    from broadcaster import Broadcast

    broadcast = Broadcast("memory://")

    async def forward(websocket: WebSocket, session_id: str) -> None:
        async with broadcast.subscribe(channel=session_id) as subscriber:
            await websocket.send_text(json.dumps({"type": "subscribed"}))
            async for event in subscriber:  # type: ignore[union-attr]
                await websocket.send_text(event.message)

    async def websocket_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        async with asyncio.TaskGroup() as tasks:
            forwarders = []
            try:
                while True:
                    message = json.loads(await websocket.receive_text())
                    forwarders.append(tasks.create_task(forward(websocket, message["sessionId"])))
            except WebSocketDisconnect:
                pass
            finally:
                for forwarder in forwarders:
                    forwarder.cancel()

    async def emit(session_id: str, text: str) -> None:
        await broadcast.publish(channel=session_id, message=delta_frame(session_id, text))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await broadcast.connect()
        try:
            yield
        finally:
            await broadcast.disconnect()

    return Starlette(
        routes=[WebSocketRoute("/ws", websocket_endpoint), *common_routes(lambda: emit)],
        lifespan=lifespan,
    )


def socketio_app() -> Any:
    import socketio

    sio = socketio.AsyncServer(async_mode="asgi")

    @sio.on("subscribe")  # type: ignore[misc]
    async def subscribe(sid: str, session_id: str) -> None:
        entered = sio.enter_room(sid, session_id)
        if inspect.isawaitable(entered):
            await entered
        await sio.emit("subscribed", {}, to=sid)

    async def emit(session_id: str, text: str) -> None:
        data = {"type": "text_delta", "sessionId": session_id, "delta": text}
        await sio.emit("text_delta", data, room=session_id)

    return socketio.ASGIApp(sio, other_asgi_app=Starlette(routes=common_routes(lambda: emit)))


def make_app(impl: str) -> Any:
    if impl in ("sf", "sf0", "sf-plain"):
        return sessionfanout_app(0.05 if impl == "sf" else 0.0, plain=impl == "sf-plain")
    apps = {"bare": bare_app, "broadcaster": broadcaster_app, "socketio": socketio_app}
    return {**apps, "producers": producers_app}[impl]()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=IMPLS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--profile", metavar="FILE", help="write cProfile statistics here")
    args = parser.parse_args()
    app = make_app(args.impl)
    if args.profile:
        app = profiled(app, args.profile)
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="on", loop="asyncio"
    )


def profiled(app: Any, path: str) -> Any:
    """``app`` under cProfile, its statistics written when the server shuts down."""
    profiler = cProfile.Profile()
    profiler.enable()

    async def wrapper(scope: Any, receive: Any, send: Any) -> None:
        async def send_then_write(message: Any) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                profiler.disable()
                profiler.dump_stats(path)
            await send(message)

        await app(scope, receive, send_then_write if scope["type"] == "lifespan" else send)

    return wrapper


if __name__ == "__main__":
    main()

"""The same protocol on the ``websockets`` library (asyncio), no web framework.

    python examples/websockets_server.py --host 127.0.0.1 --port 8001

There is no HTTP API here: the mock agent is started by an example-only
client frame the app registers with the hub,

    {"type": "start_agent", "sessionId": "s1", "message": "hi", "deltas": 20, ...}

(the knobs of the ASGI example's POST body) and stopped by
``{"type": "abort_agent", "sessionId": "s1"}``.
"""

from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import AsyncIterator

import anyio
from agents import AgentRunner  # the script's folder is on sys.path
from mock_agent import MockOptions
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from sessionfanout import MAX_ID_LENGTH, Connection, CustomFrame, Hub, HubClosed, ProtocolError

MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # above the hub's limit, so the hub answers too_large
logger = logging.getLogger("sessionfanout.examples")


class WebsocketsSink:
    """The whole transport adapter: a websockets connection as a Sink."""

    def __init__(self, websocket: ServerConnection) -> None:
        self.websocket = websocket

    async def send(self, text: str) -> None:
        await self.websocket.send(text)

    async def close(self, code: int, reason: str) -> None:
        await self.websocket.close(code, reason)


async def incoming(websocket: ServerConnection) -> AsyncIterator[str | bytes]:
    try:
        async for message in websocket:
            yield message
    except ConnectionClosed:
        return


def session_of(frame: CustomFrame) -> str:
    session_id = frame.data.get("sessionId")
    if not isinstance(session_id, str) or not 0 < len(session_id) <= MAX_ID_LENGTH:
        raise ProtocolError(
            "invalid_message",
            f"field 'sessionId' must be a string of 1 to {MAX_ID_LENGTH} characters",
            frame.type,
        )
    return session_id


def register_agent_frames(hub: Hub, runner: AgentRunner) -> None:
    async def start_agent(connection: Connection, frame: CustomFrame) -> None:
        session_id = session_of(frame)
        try:
            options = MockOptions.from_json(frame.data)
        except ValueError as exc:
            raise ProtocolError("invalid_message", str(exc), frame.type) from None
        if not await runner.start(session_id, options):
            raise ProtocolError(
                "invalid_message", "an agent is already running for this session", frame.type
            )

    async def abort_agent(connection: Connection, frame: CustomFrame) -> None:
        if not await runner.abort(session_of(frame)):
            raise ProtocolError(
                "invalid_message", "no agent is running for this session", frame.type
            )

    hub.register_client_frame("start_agent", start_agent)
    hub.register_client_frame("abort_agent", abort_agent)


async def run(host: str, port: int) -> None:
    async with Hub() as hub, anyio.create_task_group() as tg:
        runner = AgentRunner(hub, tg)
        register_agent_frames(hub, runner)

        async def handler(websocket: ServerConnection) -> None:
            try:
                await hub.serve(WebsocketsSink(websocket), incoming(websocket))
            except HubClosed:
                await websocket.close(1001, "server shutting down")

        async with serve(handler, host, port, max_size=MAX_MESSAGE_BYTES) as server:
            print(f"sessionfanout websockets example on ws://{host}:{port}/", flush=True)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    logger.info("got %s: shutting down", signal.Signals(signum).name)
                    break
            await runner.abort_all()
            await hub.aclose()  # flush and close every client before the server goes
            server.close()
        tg.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description="sessionfanout on the websockets library")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    anyio.run(run, args.host, args.port)


if __name__ == "__main__":
    main()

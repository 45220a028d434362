"""The hub under FastAPI, with JWT bearer tokens (PyJWT, HS256).

    python examples/fastapi_app.py --host 127.0.0.1 --port 8001 --jwt-secret S

(or the secret in ``$SESSIONFANOUT_JWT_SECRET``). Routes: ``WS /ws`` (the
protocol), ``POST /api/sessions/{id}/messages`` (start the mock agent, the
body of the Starlette example), ``GET /healthz``; FastAPI adds ``/docs``.

Tokens. A token is an HS256 JWT with two required claims: ``exp`` (Unix
seconds) and ``sessions``, either a list of session ids or the string
``"*"`` for every session; other claims (``sub``, ...) ride along in
``Grant.claims``. A WebSocket presents it in one of two ways, never both:

- the query: ``/ws?token=<jwt>``;
- the subprotocols: ``new WebSocket(url, ["bearer", "<jwt>"])``, the token
  being the value offered right after ``bearer``. The server accepts with
  subprotocol ``bearer``, so the token itself is never echoed (browsers can
  set no headers on a WebSocket; the query may end up in access logs).

HTTP routes take ``Authorization: Bearer <jwt>``.

Refusals and closes:

- no token, a bad one (malformed, wrong signature, another algorithm,
  expired, a claim missing): the handshake is refused with HTTP 401, a JSON
  body ``{"detail": reason}`` and ``WWW-Authenticate: Bearer`` (RFC 6750).
  The WebSocket is never accepted. (A server without the ASGI denial-response
  extension answers 403 instead, without the reason.)
- a ``subscribe`` to a session the token does not list: ``client_error``
  ``forbidden``; the connection stays open.
- the token expires: the server closes the WebSocket with **4001 "token
  expired"**. The client reconnects with a fresh token and subscribes with
  ``lastSeq`` and ``epoch``; the hub replays what it missed, with no gap and
  no duplicate (the socket was still streaming, so a client that instead
  treats expiry as the end of the stream would lose events).
- HTTP: 401 as above; 403 when the token does not list the session.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any

import anyio
import attrs
import jwt
import uvicorn
from agents import AgentRunner  # the script's folder is on sys.path
from asgi_app import Server, WebSocketSink, incoming, read_json, shutdown
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from mock_agent import MockOptions
from starlette.websockets import WebSocketDisconnect, WebSocketState

from sessionfanout import MAX_ID_LENGTH, Connection, Hub, HubClosed, HubConfig

ALGORITHMS = ["HS256"]
BEARER = "bearer"
"""The subprotocol that announces a token, and the one the server accepts."""
EXPIRED_CODE = 4001
EXPIRED_REASON = "token expired"
logger = logging.getLogger("sessionfanout.examples")


class TokenError(Exception):
    """A token is not acceptable; ``reason`` says why, for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MissingToken(TokenError):
    """No token at all (RFC 6750 answers it without an error code)."""


@attrs.frozen
class Grant:
    """What a verified token allows: the ``context`` of its connection."""

    sessions: frozenset[str] | None
    """The session ids it lists; None for ``"*"``, every session."""
    expires_at: int
    """Its ``exp``, Unix seconds."""
    claims: Mapping[str, Any]
    """Every decoded claim, for an application that wants more (``sub``, ...)."""

    def allows(self, session_id: str) -> bool:
        return self.sessions is None or session_id in self.sessions


def verify(token: str, secret: str) -> Grant:
    """The token's grant; ``TokenError`` naming what is wrong with it."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=ALGORITHMS, options={"require": ["exp", "sessions"]}
        )
    except jwt.ExpiredSignatureError:
        raise TokenError(EXPIRED_REASON) from None
    except jwt.InvalidSignatureError:
        raise TokenError("token signature does not verify") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(f"token has no {exc.claim!r} claim") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"invalid token: {exc}") from None
    sessions = claims["sessions"]
    if sessions == "*":
        return Grant(None, int(claims["exp"]), claims)
    if not isinstance(sessions, list) or not all(isinstance(s, str) for s in sessions):
        raise TokenError("claim 'sessions' must be \"*\" or a list of session ids")
    return Grant(frozenset(sessions), int(claims["exp"]), claims)


def offered_token(websocket: WebSocket) -> tuple[str, str | None]:
    """The handshake's token and the subprotocol to accept (None for the query)."""
    offered: list[str] = websocket.scope.get("subprotocols", [])
    query = websocket.query_params.get("token")
    if BEARER not in offered:
        if not query:
            raise MissingToken("missing token: send ?token=<jwt> or subprotocols bearer, <jwt>")
        return query, None
    after = offered.index(BEARER) + 1
    if after == len(offered):
        raise TokenError("subprotocol 'bearer' must be followed by the token")
    if query is not None:
        # Two tokens could disagree; refusing beats guessing which one counts.
        raise TokenError("token given twice: in the query and as a subprotocol")
    return offered[after], BEARER


def authorize(connection: Connection, session_id: str) -> bool:
    """The hub's hook: exactly the sessions the connection's token lists."""
    grant = connection.context
    return isinstance(grant, Grant) and grant.allows(session_id)


def challenge(error: TokenError) -> dict[str, str]:
    """RFC 6750's header: a bare challenge without a token, the reason with a bad one."""
    if isinstance(error, MissingToken):
        return {"WWW-Authenticate": 'Bearer realm="sessionfanout"'}
    quoted = error.reason.replace("\\", "\\\\").replace('"', '\\"')
    return {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{quoted}"'}


async def frames_until(
    deadline: float, frames: AsyncIterator[str | bytes]
) -> AsyncIterator[str | bytes]:
    """``frames`` up to ``deadline`` (on anyio's clock). Only the wait for the
    next frame is cancelled, never the hub's handling of one, so that a
    subscribe is not cut in half; serve then ends as if the client had left."""
    while True:
        frame: str | bytes | None = None
        with anyio.move_on_at(deadline):
            frame = await anext(frames, None)
        if frame is None:
            return
        yield frame


router = APIRouter()
bearer = HTTPBearer(
    bearerFormat="JWT", description="HS256, claims 'exp' and 'sessions'", auto_error=False
)


@router.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    hub: Hub = websocket.app.state.hub
    try:
        token, subprotocol = offered_token(websocket)
        grant = verify(token, websocket.app.state.jwt_secret)
    except TokenError as exc:
        await refuse(websocket, exc)
        return
    await websocket.accept(subprotocol)
    # exp is wall-clock time; the timer runs on the event loop's clock.
    deadline = anyio.current_time() + (grant.expires_at - time.time())
    try:
        frames = frames_until(deadline, incoming(websocket))
        await hub.serve(WebSocketSink(websocket), frames, grant)
    except HubClosed:
        await close(websocket, 1001, "server shutting down")
    except WebSocketDisconnect:
        return
    if anyio.current_time() >= deadline:
        # serve has ended and forgotten the connection: nothing else writes to
        # the socket now, and what it had not sent is replayed on resume.
        await close(websocket, EXPIRED_CODE, EXPIRED_REASON)


async def refuse(websocket: WebSocket, error: TokenError) -> None:
    """Refuse the handshake with 401 and the reason; 403 where the server cannot."""
    logger.info("WebSocket refused: %s", error.reason)
    # uvicorn's websockets-sansio protocol (its default) then logs "ASGI callable
    # returned without completing handshake" though the 401 went out whole:
    # Kludex/uvicorn#3138 (open) fixes that log line.
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        body = {"detail": error.reason}
        await websocket.send_denial_response(JSONResponse(body, 401, challenge(error)))
    else:
        await websocket.close(1008, error.reason)


async def close(websocket: WebSocket, code: int, reason: str) -> None:
    """Close unless either side already has (the hub may have closed it, 1008 or 1001)."""
    connected = WebSocketState.CONNECTED
    if websocket.application_state == connected and websocket.client_state == connected:
        await websocket.close(code, reason)


async def bearer_grant(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Grant:
    """The grant of the request's ``Authorization: Bearer`` token, else 401."""
    try:
        if credentials is None:
            raise MissingToken("missing token: send Authorization: Bearer <jwt>")
        return verify(credentials.credentials, request.app.state.jwt_secret)
    except TokenError as exc:
        raise HTTPException(401, exc.reason, headers=challenge(exc)) from None


@router.post("/api/sessions/{session_id:path}/messages", status_code=202)
async def post_message(
    request: Request, session_id: str, grant: Annotated[Grant, Depends(bearer_grant)]
) -> dict[str, bool]:
    """Start the mock agent (``{"message": str}`` and the knobs of ``MockOptions``)."""
    if len(session_id) > MAX_ID_LENGTH:
        raise HTTPException(400, f"session id must be at most {MAX_ID_LENGTH} characters")
    if not grant.allows(session_id):
        raise HTTPException(403, f"the token does not list session {session_id!r:.80}")
    try:
        options = MockOptions.from_json(await read_json(request))
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    runner: AgentRunner = request.app.state.runner
    if not request.app.state.hub.running:
        raise HTTPException(503, "server shutting down")
    if not await runner.start(session_id, options):
        raise HTTPException(409, "an agent is already running for this session")
    return {"accepted": True}


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, bool]:
    return {"running": request.app.state.hub.running}


def create_app(jwt_secret: str) -> FastAPI:
    """The app; tokens are checked against ``jwt_secret`` (HS256)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        config = HubConfig(authorize=authorize)
        async with Hub(config) as hub, anyio.create_task_group() as agents:
            app.state.hub = hub
            app.state.runner = AgentRunner(hub, agents)
            yield
            await shutdown(app)

    app = FastAPI(title="sessionfanout", lifespan=lifespan)
    app.state.jwt_secret = jwt_secret
    app.include_router(router)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="sessionfanout under FastAPI with JWT auth")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--jwt-secret",
        default=os.environ.get("SESSIONFANOUT_JWT_SECRET"),
        help="the HS256 key tokens are signed with (default: $SESSIONFANOUT_JWT_SECRET)",
    )
    args = parser.parse_args(argv)
    if not args.jwt_secret:
        parser.error("a JWT secret is required: --jwt-secret or $SESSIONFANOUT_JWT_SECRET")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(
        create_app(args.jwt_secret),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        lifespan="on",
    )
    base = f"{args.host}:{args.port}"
    print(f"sessionfanout (FastAPI): ws://{base}/ws?token=<jwt>, http://{base}/docs", flush=True)
    # asgi_app's Server: the hub shuts down (flushing to every client) before uvicorn's sockets.
    Server(config).run()


if __name__ == "__main__":
    main()

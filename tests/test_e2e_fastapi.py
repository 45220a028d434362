"""End to end: the FastAPI example with JWT auth under a real uvicorn, real clients."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

from tests.servers import (
    Client,
    Frame,
    check_stream,
    free_port,
    http_ready,
    python,
    running,
    session_frames,
    ws_url,
)

pytestmark = pytest.mark.slow

SECRET = "test-secret-" + "x" * 32  # PyJWT warns about HS256 keys under 32 bytes


def token(sessions: list[str] | str, *, ttl: float = 60, secret: str = SECRET) -> str:
    """A token as an identity provider would issue it, made with PyJWT directly."""
    return jwt.encode({"sessions": sessions, "exp": int(time.time() + ttl)}, secret)


def with_token(base: str, jwt_token: str) -> str:
    return f"{ws_url(base)}?token={jwt_token}"


def unique(name: str) -> str:
    return f"{name}-{base64.b32encode(os.urandom(5)).decode().lower()}"


def start_agent(base: str, session_id: str, jwt_token: str, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{base}/api/sessions/{session_id}/messages",
        json=body,
        headers={"Authorization": f"Bearer {jwt_token}"},
        timeout=10,
    )


def until_complete(client: Client, session_id: str) -> list[Frame]:
    client.recv_until(lambda f: f["type"] == "complete" and f["sessionId"] == session_id)
    return session_frames(client.frames, session_id)


class BearerClient(Client):
    """``Client``, with the token offered as the subprotocols ``bearer``, token."""

    def __init__(self, url: str, jwt_token: str) -> None:
        offer = [Subprotocol("bearer"), Subprotocol(jwt_token)]
        self.ws = ws_connect(url, subprotocols=offer, max_size=None, open_timeout=10).__enter__()
        self.frames = []
        self.connected = self.recv()
        assert "connected" == self.connected["type"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The FastAPI example under a real uvicorn, its secret passed in the environment."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log: Path = tmp_path_factory.mktemp("fastapi") / "server.log"
    args = [python(), "examples/fastapi_app.py", "--port", str(port), "--log-level", "warning"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SESSIONFANOUT_JWT_SECRET", SECRET)
        with running(args, http_ready(base + "/healthz"), log=log):
            yield base


def test_a_valid_token_in_the_query_streams_its_session(server: str) -> None:
    session = unique("stream")
    message = "".join(f"word{n} " for n in range(100))
    jwt_token = token([session])
    client = Client(with_token(server, jwt_token))
    assert "subscribed" == client.subscribe(session)["type"]
    response = start_agent(
        server, session, jwt_token, message=message, deltas=50, deltaIntervalMs=1
    )
    assert 202 == response.status_code
    check_stream(until_complete(client, session), message)
    client.close()


def test_a_token_offered_as_a_subprotocol_streams_and_only_bearer_is_echoed(server: str) -> None:
    session = unique("subprotocol")
    jwt_token = token([session])
    client = BearerClient(ws_url(server), jwt_token)
    assert "bearer" == client.ws.subprotocol
    assert "subscribed" == client.subscribe(session)["type"]
    assert "forbidden" == client.subscribe(unique("other"))["code"]
    start_agent(server, session, jwt_token, message="over a subprotocol", deltas=5)
    check_stream(until_complete(client, session), "over a subprotocol")
    client.close()


# Made at collection: an hour, so that each is refused for its own reason, not expiry.
HOUR = 3600.0
NO_EXP = jwt.encode({"sessions": ["s"]}, SECRET)
NO_SESSIONS = jwt.encode({"exp": int(time.time() + HOUR)}, SECRET)
UNSIGNED = jwt.encode({"sessions": ["s"], "exp": int(time.time() + HOUR)}, None, algorithm="none")


@pytest.mark.parametrize(
    ("query", "subprotocols", "reason"),
    [
        (None, [], "missing token"),
        ("not-a-jwt", [], "invalid token"),
        (token(["s"], ttl=HOUR, secret="another-secret-" + "y" * 32), [], "does not verify"),
        (token(["s"], ttl=-10), [], "token expired"),
        (NO_SESSIONS, [], "'sessions' claim"),
        (NO_EXP, [], "'exp' claim"),
        (token("s", ttl=HOUR), [], "claim 'sessions' must be"),
        (UNSIGNED, [], "invalid token"),
        (None, ["bearer", token(["s"], ttl=-10)], "token expired"),
        (None, ["bearer"], "must be followed by the token"),
        (token(["s"], ttl=HOUR), ["bearer", token(["s"], ttl=HOUR)], "token given twice"),
    ],
    ids=[
        "missing",
        "malformed",
        "wrong-signature",
        "expired",
        "no-sessions-claim",
        "no-exp-claim",
        "sessions-not-a-list",
        "alg-none",
        "expired-subprotocol",
        "bearer-without-token",
        "query-and-subprotocol",
    ],
)
def test_a_missing_or_bad_token_is_refused_at_the_handshake_with_401_and_the_reason(
    server: str, query: str | None, subprotocols: list[str], reason: str
) -> None:
    url = ws_url(server) if query is None else with_token(server, query)
    offer = [Subprotocol(p) for p in subprotocols] or None
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(url, subprotocols=offer, open_timeout=10).close()
    response = refused.value.response
    assert 401 == response.status_code
    assert reason in response.body.decode(), response.body
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_session_the_token_does_not_list_is_forbidden_and_the_connection_stays_usable(
    server: str,
) -> None:
    mine, theirs = unique("mine"), unique("theirs")
    client = Client(with_token(server, token([mine])))
    refused = client.subscribe(theirs)
    assert ("client_error", "forbidden") == (refused["type"], refused["code"])
    assert "subscribed" == client.subscribe(mine)["type"]
    client.close()
    everything = Client(with_token(server, token("*")))
    assert "subscribed" == everything.subscribe(theirs)["type"]
    everything.close()


def test_posting_a_message_needs_a_bearer_token_that_lists_the_session(server: str) -> None:
    session = unique("post")
    url = f"{server}/api/sessions/{session}/messages"
    missing = httpx.post(url, json={"message": "hi"})
    assert 401 == missing.status_code
    assert 'Bearer realm="sessionfanout"' == missing.headers["WWW-Authenticate"]
    wrong = start_agent(server, session, token([session], secret="z" * 40), message="hi")
    assert 401 == wrong.status_code
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    other = start_agent(server, session, token([unique("other")]), message="hi")
    assert 403 == other.status_code
    bad_body = start_agent(server, session, token([session]), deltas=3)
    assert (400, "field 'message' is required and must be a string") == (
        bad_body.status_code,
        bad_body.json()["detail"],
    )


def test_token_expiry_closes_with_4001_and_a_fresh_token_resumes_without_gap_or_duplicate(
    server: str,
) -> None:
    session = unique("expiry")
    # 250 deltas 20 ms apart take 5 s at the least; the token ends within 2 s of
    # now, so expiry falls inside the stream however slow the machine is.
    message = "".join(f"{n:04d}|" for n in range(250))
    short = token([session], ttl=2)
    first = Client(with_token(server, short))
    epoch = first.subscribe(session)["epoch"]
    started = start_agent(server, session, short, message=message, deltas=250, deltaIntervalMs=20)
    assert 202 == started.status_code
    with pytest.raises(ConnectionClosed) as closed:
        first.recv_until(lambda f: f["type"] == "complete", timeout=10)
    assert closed.value.rcvd is not None
    assert (4001, "token expired") == (closed.value.rcvd.code, closed.value.rcvd.reason)
    before = session_frames(first.frames, session)
    assert "complete" not in [f["type"] for f in before]
    last_seq = before[-1]["seq"]

    again = Client(with_token(server, token([session], ttl=60)))
    reply = again.subscribe(session, lastSeq=last_seq, epoch=epoch)
    assert (True, epoch) == (reply["resumed"], reply["epoch"])
    after = until_complete(again, session)
    assert last_seq + 1 == after[0].get("firstSeq", after[0]["seq"])
    assert reply["seq"] < after[-1]["seq"], "the agent streamed on after the resume"
    check_stream(before + after, message)
    again.close()

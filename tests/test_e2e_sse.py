"""End to end over HTTP: Server-Sent Events from a real uvicorn, read by httpx,
resumed with Last-Event-ID; permissions answered by POST; late joiners."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.servers import Client, SseClient, check_stream, session_frames, ws_url
from tests.test_e2e_asgi import start_agent, unique

pytestmark = pytest.mark.slow


def events_of(client: SseClient, session_id: str) -> list[dict]:
    return session_frames(client.frames, session_id)


def test_a_stream_opens_with_connected_then_subscribed_and_ids_name_epoch_and_seq(
    server: str,
) -> None:
    session = unique("sse")
    message = "".join(f"word{n} " for n in range(100))
    client = SseClient(server, session)
    assert "text/event-stream" in client.response.headers["content-type"]
    (_, connected), (_, subscribed) = client.next(), client.next()
    assert ("connected", "subscribed") == (connected["type"], subscribed["type"])
    assert 202 == start_agent(server, session, message, deltas=50, deltaIntervalMs=2).status_code
    client.until(lambda f: f["type"] == "complete")
    check_stream(events_of(client, session), message)
    ids = [i for i, frame in client.events if "seq" in frame and frame["type"] != "subscribed"]
    assert [f"{subscribed['epoch']}:{f['seq']}" for f in events_of(client, session)] == ids
    client.close()


def test_a_dropped_stream_resumes_from_last_event_id_without_gap_or_duplicate(
    server: str,
) -> None:
    session = unique("sse-resume")
    message = "".join(f"w{n} " for n in range(600))
    first = SseClient(server, session)
    first.until(lambda f: f["type"] == "subscribed")
    start_agent(server, session, message, deltas=300, deltaIntervalMs=3)
    first.until(lambda f: f.get("seq", 0) >= 5)
    last_id = first.last_id()
    seen = events_of(first, session)
    first.close()  # dropped mid-stream
    again = SseClient(server, session, last_event_id=last_id)
    subscribed = again.until(lambda f: f["type"] == "subscribed")[-1]
    assert subscribed["resumed"] is True
    again.until(lambda f: f["type"] == "complete")
    check_stream(seen + events_of(again, session), message)
    again.close()


def test_the_query_parameter_resumes_too_for_clients_that_cannot_set_headers(
    server: str,
) -> None:
    session = unique("sse-query")
    first = SseClient(server, session)
    first.until(lambda f: f["type"] == "subscribed")
    start_agent(server, session, "hello there", deltas=2, deltaIntervalMs=1, tool=False)
    first.until(lambda f: f["type"] == "complete")
    first.close()
    again = SseClient(server, session, lastEventId=first.last_id())
    assert again.until(lambda f: f["type"] == "subscribed")[-1]["resumed"] is True
    again.close()


@pytest.mark.parametrize("place", ["wrong-epoch:1", "too-old"])
def test_an_id_that_cannot_be_resumed_answers_resumed_false(server: str, place: str) -> None:
    session = unique("sse-stale")
    first = SseClient(server, session)
    subscribed = first.until(lambda f: f["type"] == "subscribed")[-1]
    first.close()
    last_id = place if place != "too-old" else f"{subscribed['epoch']}:999"
    again = SseClient(server, session, last_event_id=last_id)
    assert again.until(lambda f: f["type"] == "subscribed")[-1]["resumed"] is False
    again.close()


@pytest.mark.parametrize("bad", ["no-colon", "epoch:-1", "epoch:x", ":3"])
def test_a_malformed_last_event_id_gets_400_with_a_clear_error(server: str, bad: str) -> None:
    for kwargs in ({"headers": {"Last-Event-ID": bad}}, {"params": {"lastEventId": bad}}):
        response = httpx.get(f"{server}/api/sessions/s/events", timeout=10, **kwargs)
        assert 400 == response.status_code
        assert "Last-Event-ID" in response.json()["error"]
        assert "invalid_message" == response.json()["code"]


def test_global_events_reach_sse_clients(server: str) -> None:
    client = SseClient(server, unique("sse-global"))
    client.until(lambda f: f["type"] == "subscribed")
    httpx.post(f"{server}/api/config/changed", json={"changeType": "config"}, timeout=10)
    assert {"type": "config_changed", "changeType": "config"} == client.until(
        lambda f: f["type"] == "config_changed"
    )[-1]
    client.close()


def test_heartbeats_keep_an_idle_stream_alive(server: str) -> None:
    client = SseClient(server, unique("sse-idle"))
    client.until(lambda f: f["type"] == "subscribed")
    time.sleep(1.2)  # idle: the test server beats every 0.5 s
    httpx.post(f"{server}/api/config/changed", json={"changeType": "config"}, timeout=10)
    client.until(lambda f: f["type"] == "config_changed")
    assert client.comments >= 1, "heartbeats came before the next event"
    client.close()


def answer(server: str, session: str, request_id: str, connection_id: str, allowed: bool):
    return httpx.post(
        f"{server}/api/sessions/{session}/permissions/{request_id}",
        json={"connectionId": connection_id, "allowed": allowed},
        timeout=10,
    )


def test_a_permission_answered_by_post_the_first_answer_wins(server: str) -> None:
    session, other = unique("sse-perm"), unique("sse-other")
    watcher, stranger = SseClient(server, session), SseClient(server, other)
    connection_id = watcher.next()[1]["connectionId"]
    stranger_id = stranger.next()[1]["connectionId"]
    watcher.until(lambda f: f["type"] == "subscribed")
    start_agent(server, session, "may I", deltas=1, permission=True)
    request = watcher.until(lambda f: f["type"] == "permission_request")[-1]["request"]
    request_id = request["requestId"]
    refused = answer(server, session, request_id, stranger_id, False)
    unknown = answer(server, session, request_id, "no-such-connection", False)
    first = answer(server, session, request_id, connection_id, True)
    late = answer(server, session, request_id, connection_id, False)
    assert (403, "forbidden") == (refused.status_code, refused.json()["code"])
    assert 403 == unknown.status_code
    assert (200, {"decided": True}) == (first.status_code, first.json())
    assert (404, "unknown_request") == (late.status_code, late.json()["code"])
    [result] = [f for f in watcher.until(lambda f: f["type"] == "complete") if "result" in f]
    assert "allowed" == result["result"]
    bad = httpx.post(
        f"{server}/api/sessions/{session}/permissions/{request_id}", content=b"{", timeout=10
    )
    assert (400, "invalid_message") == (bad.status_code, bad.json()["code"])
    watcher.close()
    stranger.close()


def statistics(server: str) -> dict:
    return httpx.get(f"{server}/api/statistics", timeout=10).json()


def test_a_client_that_goes_away_is_forgotten_within_a_second(server: str) -> None:
    before = statistics(server)["connections"]
    client = SseClient(server, unique("sse-gone"))
    client.until(lambda f: f["type"] == "subscribed")
    assert before + 1 == statistics(server)["connections"]
    client.close()
    deadline = time.monotonic() + 1.0
    while statistics(server)["connections"] > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert before == statistics(server)["connections"]


def test_a_late_joiner_gets_the_text_so_far_then_the_rest(server: str) -> None:
    """Opened in the middle of a 2,000-delta turn: replay, then live; the whole message."""
    session = unique("late")
    message = "".join(f"t{n} " for n in range(2000))
    watcher = Client(ws_url(server))
    watcher.subscribe(session)
    start_agent(server, session, message, deltas=2000, deltaIntervalMs=1)
    watcher.recv_until(lambda f: f.get("seq", 0) >= 10)
    late_ws = Client(ws_url(server))
    subscribed = late_ws.subscribe(session, **{"from": "start"})
    late_sse = SseClient(server, session, **{"from": "start"})
    sse_subscribed = late_sse.until(lambda f: f["type"] == "subscribed")[-1]
    assert subscribed["seq"] >= 10
    for reply in (subscribed, sse_subscribed):
        assert (True, 1) == (reply["resumed"], reply["firstSeq"])
    late_ws.recv_until(lambda f: f["type"] == "complete", timeout=120)
    late_sse.until(lambda f: f["type"] == "complete")
    check_stream(session_frames(late_ws.frames, session), message)
    check_stream(events_of(late_sse, session), message)
    for client in (watcher, late_ws):
        client.close()
    late_sse.close()


def test_closing_every_stream_is_a_test_only_endpoint(server: str) -> None:
    client = SseClient(server, unique("sse-cut"))
    client.until(lambda f: f["type"] == "subscribed")
    assert 200 == httpx.post(f"{server}/api/test/close-streams", timeout=10).status_code
    with pytest.raises(EOFError):
        client.until(lambda f: False)
    client.close()


def test_a_stream_with_presence_sees_who_joins_over_a_websocket(server: str) -> None:
    session = unique("sse-presence")
    stream = SseClient(server, session, presence="true")
    snapshot = stream.until(lambda f: f["type"] == "presence")[-1]
    assert 1 == len(snapshot["members"]), "itself"
    websocket = Client(ws_url(server) + "?name=ada")
    websocket.subscribe(session)
    joined = stream.until(lambda f: f["type"] == "presence")[-1]
    assert [{"name": "ada"}] == [member["info"] for member in joined["joined"]]
    websocket.close()
    left = stream.until(lambda f: f["type"] == "presence")[-1]
    assert [{"name": "ada"}] == [member["info"] for member in left["left"]]
    ids = [event_id for event_id, frame in stream.events if frame["type"] == "presence"]
    assert [None, None, None] == ids, "presence events carry no id: they are not resumed"
    stream.close()

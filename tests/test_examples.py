"""The examples' own pieces, in process: mock agent, its options, the watcher."""

from __future__ import annotations

import io
from typing import Any, cast

import anyio
import pytest
from mock_agent import MockOptions, echo_agent, split
from watch import Watcher

from sessionfanout import Hub
from tests.hubtools import connect, subscribe, wait_for


@pytest.mark.parametrize(
    ("text", "parts", "expected"),
    [("abcdefg", 3, ["abc", "de", "fg"]), ("ab", 5, ["a", "b"]), ("", 3, [])],
)
def test_split_makes_nearly_equal_chunks(text: str, parts: int, expected: list[str]) -> None:
    assert expected == split(text, parts)


def test_options_default_and_refuse_bad_knobs() -> None:
    assert MockOptions("hi", 20, 20.0, True, False) == MockOptions.from_json({"message": "hi"})
    for body, field in [
        ([], "object"),
        ({"message": 1}, "'message'"),
        ({"message": "x", "deltas": True}, "'deltas'"),
        ({"message": "x", "deltaIntervalMs": "5"}, "'deltaIntervalMs'"),
        ({"message": "x", "tool": None}, "'tool'"),
    ]:
        with pytest.raises(ValueError, match=field):
            MockOptions.from_json(body)


@pytest.mark.anyio
@pytest.mark.parametrize("allow", [True, False])
async def test_the_echo_agent_streams_asks_and_reports_the_decision(allow: bool) -> None:
    options = MockOptions("hello there", deltas=4, delta_interval_ms=0, permission=True)
    async with Hub() as hub:
        connection, sink = await connect(hub)
        await subscribe(hub, connection, "s")
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run_agent, "s", echo_agent(options))
            await wait_for(lambda: bool(sink.of_type("permission_request")))
            request_id = sink.of_type("permission_request")[0]["request"]["requestId"]
            await hub.handle_message(
                connection,
                f'{{"type":"permission_response","requestId":"{request_id}","allowed":{str(allow).lower()}}}',
            )
        await wait_for(lambda: bool(sink.of_type("complete")))
    frames = sink.session_frames("s")[1:]
    kinds = [f["type"] for f in frames]
    assert ["text_complete", "tool_start", "permission_request", "tool_result", "complete"] == [
        k for k in kinds if k != "text_delta"
    ]
    assert "hello there" == "".join(f["delta"] for f in frames if f["type"] == "text_delta")
    [result] = [f for f in frames if f["type"] == "tool_result"]
    assert ("allowed" if allow else "denied") == result["result"]
    assert (None if allow else True) == result.get("isError")


def test_the_watcher_skips_what_it_printed_and_says_when_history_is_gone() -> None:
    out = io.StringIO()
    watcher = Watcher("s", out=out, color=False)
    watcher.show(
        {"type": "subscribed", "sessionId": "s", "seq": 0, "epoch": "e1", "resumed": False}
    )
    watcher.show({"type": "text_delta", "sessionId": "s", "delta": "Hel", "seq": 1})
    watcher.show({"type": "subscribed", "sessionId": "s", "seq": 2, "epoch": "e1", "resumed": True})
    watcher.show(
        {"type": "text_delta", "sessionId": "s", "delta": "Hel", "seq": 1}
    )  # replayed twice
    watcher.show({"type": "text_delta", "sessionId": "s", "delta": "lo", "seq": 2})
    watcher.show({"type": "complete", "sessionId": "s", "seq": 3})
    watcher.show(
        {"type": "subscribed", "sessionId": "s", "seq": 9, "epoch": "e2", "resumed": False}
    )
    assert "Hel\n[resumed after seq 1]\nlo\n— complete —\n" in out.getvalue(), "Hel once"
    assert "[history gone: seq 4..9 missed]" in out.getvalue()
    assert ("e2", 9) == (watcher.epoch, watcher.last_seq)
    assert (
        watcher.subscribe_frame()
        == '{"type": "subscribe", "sessionId": "s", "lastSeq": 9, "epoch": "e2"}'
    )


class PausingWebSocket:
    """A Starlette WebSocket stand-in whose ``send`` pauses while ``full``
    (a socket whose buffer is full), as uvicorn's does."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.full: Any = None

    async def send(self, message: dict[str, Any]) -> None:
        if self.full is not None:
            await self.full
        self.sent.append(message["text"])

    async def send_text(self, text: str) -> None:
        await self.send({"type": "websocket.send", "text": text})


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_adapters_direct_write_finishes_a_paused_send_before_the_next(
    anyio_backend: str,
) -> None:
    import asyncio

    from asgi_app import WebSocketSink

    websocket = PausingWebSocket()
    sink = WebSocketSink(cast(Any, websocket))
    assert sink.try_send("a"), "written at once"
    websocket.full = asyncio.get_running_loop().create_future()
    assert sink.try_send("b"), "taken: it finishes in a task of its own"
    assert not sink.try_send("c"), "not before the paused one is done"
    later = asyncio.ensure_future(sink.send("c"))
    await asyncio.sleep(0.01)
    assert ["a"] == websocket.sent
    websocket.full.set_result(None)
    websocket.full = None
    await later
    assert ["a", "b", "c"] == websocket.sent
    assert sink.try_send("d")
    assert ["a", "b", "c", "d"] == websocket.sent


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_paused_direct_write_that_fails_fails_the_next_send(anyio_backend: str) -> None:
    import asyncio

    from asgi_app import WebSocketSink

    websocket = PausingWebSocket()
    sink = WebSocketSink(cast(Any, websocket))
    websocket.full = asyncio.get_running_loop().create_future()
    assert sink.try_send("a")
    websocket.full.set_exception(ConnectionResetError("gone"))
    with pytest.raises(ConnectionResetError):
        await sink.send("b")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_paused_write_that_failed_before_the_next_frame_is_not_forgotten(
    anyio_backend: str,
) -> None:
    import asyncio

    from asgi_app import WebSocketSink

    websocket = PausingWebSocket()
    sink = WebSocketSink(cast(Any, websocket))
    websocket.full = asyncio.get_running_loop().create_future()
    assert sink.try_send("a")
    websocket.full.set_exception(ConnectionResetError("gone"))
    await asyncio.sleep(0.01)  # the send's own task has ended
    websocket.full = None
    assert not sink.try_send("b"), "not taken: the connection is broken"
    with pytest.raises(ConnectionResetError):
        await sink.send("b")
    assert [] == websocket.sent


@pytest.mark.parametrize(
    "argv",
    [
        ["--redis-sentinel", "127.0.0.1:26379"],
        ["--redis-master", "mymaster"],
        ["--redis", "redis://127.0.0.1:6379/0", "--redis-cluster", "127.0.0.1:7000"],
        ["--redis-cluster", "127.0.0.1:7000", "--redis-sentinel", "127.0.0.1:26379"],
    ],
)
def test_the_demo_takes_one_backplane_and_a_sentinel_with_its_master(argv: list[str]) -> None:
    from asgi_app import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert 2 == exited.value.code

"""sessionfanout.testing: the in-process test client users test their servers with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
import pytest

from sessionfanout import (
    AgentComplete,
    AgentPermissionRequest,
    AgentTextDelta,
    Complete,
    Hub,
    HubConfig,
    ToolResult,
)
from sessionfanout.testing import RecordingSink, TestClient
from tests.hubtools import virtual_clock

pytestmark = pytest.mark.anyio


async def agent() -> AsyncIterator[Any]:
    yield AgentTextDelta("Hello, ", "t1")
    yield AgentTextDelta("world", "t1")
    decision = yield AgentPermissionRequest("bash", "ls", "list files")
    yield AgentTextDelta("allowed" if decision.allowed else "denied", "t2")
    yield AgentComplete()


async def test_a_client_subscribes_follows_a_run_and_answers_a_permission() -> None:
    async with Hub(HubConfig(batch_interval=0.01)) as hub, anyio.create_task_group() as tg:
        client = await TestClient.connect(hub)
        assert "connected" == (await client.receive())["type"]
        assert (0, False) == ((s := await client.subscribe("s1"))["seq"], s["resumed"])
        tg.start_soon(hub.run_agent, "s1", agent())
        request = await client.receive(type="permission_request", session="s1")
        await client.answer(request["request"]["requestId"], True)
        await client.receive(type="complete", session="s1")
    assert {"t1": "Hello, world", "t2": "allowed"} == client.text_of("s1")


async def test_receive_passes_over_other_frames_and_keeps_them() -> None:
    async with Hub() as hub:
        client = await TestClient.connect(hub, direct=True)
        for session in ("a", "b"):
            await client.subscribe(session)
        await hub.broadcast_to_session("a", ToolResult("a", "u1", "t", "x"))
        await hub.broadcast_to_session("b", Complete("b"))
        assert "b" == (await client.receive(session="b", type="complete"))["sessionId"]
        with pytest.raises(TimeoutError, match="type='tool_result'"):
            await client.receive(type="tool_result", timeout=0.05)
    assert ["a"] == [f["sessionId"] for f in client.frames if f["type"] == "tool_result"]


@virtual_clock()
async def test_on_a_virtual_clock_a_timeout_costs_no_real_time() -> None:
    async with Hub() as hub:
        client = await TestClient.connect(hub)
        await client.subscribe("s")
        start = anyio.current_time()
        with pytest.raises(TimeoutError):
            await client.receive(type="complete", timeout=30)
        assert 30 == pytest.approx(anyio.current_time() - start)


async def test_resume_late_join_unsubscribe_and_a_bad_frame() -> None:
    async with Hub() as hub:
        first = await TestClient.connect(hub)
        epoch = (await first.subscribe("s"))["epoch"]
        for n in range(3):
            await hub.broadcast_to_session("s", ToolResult("s", f"u{n}", "t", "x"))
        late = await TestClient.connect(hub)
        joined = await late.subscribe("s", from_start=True)
        again = await TestClient.connect(hub)
        resumed = await again.subscribe("s", last_seq=2, epoch=epoch)
        assert "unsubscribed" == (await first.unsubscribe("s"))["type"]
        await first.send_raw("{not json")
        error = await first.receive(type="client_error")
        await again.close()
    assert (True, 1) == (joined["resumed"], joined["firstSeq"])
    assert (True, 3) == (resumed["resumed"], resumed["firstSeq"])
    assert "invalid_json" == error["code"]
    assert [1, 2, 3] == [f["seq"] for f in late.frames if f["type"] == "tool_result"]


async def test_a_closed_connection_ends_a_wait_at_once() -> None:
    async with Hub() as hub:
        client = await TestClient.connect(hub)
        await client.receive(type="connected")
    assert (1001, "server shutting down") == client.closed
    with pytest.raises(ConnectionError):
        await client.receive(type="complete", timeout=5)


def test_the_recording_sink_decodes_and_filters() -> None:
    sink = RecordingSink()
    sink.texts += ['{"type":"complete","sessionId":"a","seq":1}', '{"type":"connected"}']
    assert [{"type": "complete", "sessionId": "a", "seq": 1}] == sink.session_frames("a")
    assert ["connected"] == [f["type"] for f in sink.of_type("connected")]
    assert not hasattr(sink, "try_send"), "queued through a writer unless direct=True"


async def test_a_frame_wakes_every_task_waiting_on_the_sink() -> None:
    from sessionfanout.testing import RecordingSink

    sink = RecordingSink()
    woken: list[int] = []

    async def wait(n: int) -> None:
        await sink.wait()
        woken.append(n)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, 1)
            tg.start_soon(wait, 2)
            await anyio.sleep(0.01)
            await sink.send("{}")
    assert [1, 2] == sorted(woken)


async def test_the_test_client_checks_its_arguments() -> None:
    from sessionfanout import InvalidArgument

    with pytest.raises(InvalidArgument, match="hub"):
        await TestClient.connect(cast(Any, "not a hub"))
    async with Hub() as hub:
        client = await TestClient.connect(hub)
        with pytest.raises(InvalidArgument, match="timeout"):
            await client.receive(timeout=cast(Any, "5"))

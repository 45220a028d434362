"""Stopping an agent: hub.abort and the client's abort frame, here and across processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
import pytest

from sessionfanout import AgentTextDelta, Connection, Hub, HubConfig
from sessionfanout.testing import TestClient
from tests.hubtools import wait_for

pytestmark = pytest.mark.anyio


async def forever(started: anyio.Event) -> AsyncIterator[Any]:
    yield AgentTextDelta("so far", "t1")
    started.set()
    await anyio.sleep_forever()
    yield AgentTextDelta("never")  # pragma: no cover


async def start_agent(
    hub: Hub, tg: anyio.abc.TaskGroup, session_id: str, stopped: list[str]
) -> None:
    """Start an agent that runs until aborted, in ``tg``; wait until it has begun."""
    started = anyio.Event()

    async def run() -> None:
        await hub.run_agent(session_id, forever(started))
        stopped.append(session_id)  # an aborted run ends; its caller goes on

    tg.start_soon(run)
    await started.wait()


async def test_abort_flushes_then_sends_error_with_the_reason_and_complete() -> None:
    async with Hub(HubConfig(batch_interval=60)) as hub, anyio.create_task_group() as tg:
        client = await TestClient.connect(hub)
        await client.subscribe("s")
        stopped: list[str] = []
        await start_agent(hub, tg, "s", stopped)
        assert await hub.is_running("s")
        assert await hub.abort("s", "stopped by the user")
        await client.receive(type="complete", session="s")
        assert not await hub.abort("s")
        await wait_for(lambda: bool(stopped))
        assert not await hub.is_running("s")
    frames = [f for f in client.frames if f.get("sessionId") == "s" and "seq" in f]
    assert [("text_delta", "so far"), ("error", "stopped by the user"), ("complete", None)] == [
        (f["type"], f.get("delta", f.get("error"))) for f in frames[1:]
    ]
    assert ["s"] == stopped


async def test_a_subscriber_may_abort_by_frame_and_a_stranger_may_not() -> None:
    async with Hub() as hub, anyio.create_task_group() as tg:
        watcher, stranger = await TestClient.connect(hub), await TestClient.connect(hub)
        await watcher.subscribe("s")
        await start_agent(hub, tg, "s", [])
        await stranger.send({"type": "abort", "sessionId": "s"})
        refused = await stranger.receive(type="client_error")
        assert await hub.is_running("s")
        await watcher.send({"type": "abort", "sessionId": "s"})
        error = await watcher.receive(type="error", session="s")
        await watcher.receive(type="complete", session="s")
    assert ("forbidden", "abort") == (refused["code"], refused["requestType"])
    assert "aborted" == error["error"]


@pytest.mark.parametrize("may_abort", [None, lambda connection, session_id: False])
async def test_the_may_abort_hook_decides_and_none_turns_the_frame_off(may_abort: Any) -> None:
    async with Hub(HubConfig(may_abort=may_abort)) as hub:
        client = await TestClient.connect(hub)
        await client.subscribe("s")
        await client.send({"type": "abort", "sessionId": "s"})
        assert "forbidden" == (await client.receive(type="client_error"))["code"]


async def test_a_hook_may_let_anyone_with_a_role_abort() -> None:
    def staff(connection: Connection, session_id: str) -> bool:
        return connection.context == "staff"

    async with Hub(HubConfig(may_abort=staff)) as hub, anyio.create_task_group() as tg:
        admin = await TestClient.connect(hub, context="staff")
        watcher = await TestClient.connect(hub)
        await watcher.subscribe("s")
        await start_agent(hub, tg, "s", [])
        await admin.send({"type": "abort", "sessionId": "s"})
        await watcher.receive(type="complete", session="s")
        assert not await hub.is_running("s")

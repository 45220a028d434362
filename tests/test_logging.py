"""Log records name their session and connection, and a flooding client
cannot flood the log."""

from __future__ import annotations

import logging

import pytest

from sessionfanout import Connection, Hub, HubConfig, ToolResult
from sessionfanout.testing import TestClient
from tests.hubtools import StuckSink, wait_for

pytestmark = pytest.mark.anyio


def broken_hook(connection: Connection, session_id: str) -> bool:
    raise RuntimeError("the user service is down")


async def test_records_carry_the_session_and_connection_as_attributes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "sessionfanout")
    config = HubConfig(authorize=broken_hook, outbox_max_messages=2, client_rate=None)
    async with Hub(config) as hub:
        client = await TestClient.connect(hub)
        await client.subscribe("s1")  # the hook fails: refused, and logged
        stuck = await hub.connect(StuckSink())
        await hub.subscribe(stuck, "s2")
        for n in range(5):  # the stuck connection goes over its outbox: closed
            await hub.broadcast_to_session("s2", ToolResult("s2", str(n), "t", "x"))
        await wait_for(lambda: any("slow" in r.getMessage() for r in caplog.records))
    hook = next(r for r in caplog.records if "hook failed" in r.getMessage())
    slow = next(r for r in caplog.records if "slow" in r.getMessage())
    assert ("s1", client.connection.id) == (hook.session_id, hook.connection_id)  # type: ignore[attr-defined]
    assert stuck.id == slow.connection_id  # type: ignore[attr-defined]


async def test_a_flooding_client_is_logged_a_few_times_and_the_rest_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, "sessionfanout")
    async with Hub(HubConfig(authorize=broken_hook, client_rate=None)) as hub:
        client = await TestClient.connect(hub)
        for n in range(50):
            await client.subscribe(f"s{n}")
        suppressed = hub.statistics().suppressed_logs
    logged = [r for r in caplog.records if "hook failed" in r.getMessage()]
    assert len(logged) <= 6, "a burst of five, then one every ten seconds"
    assert 50 == len(logged) + suppressed

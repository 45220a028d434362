"""Helpers for Hub tests: fakes of sinks and a way to wait for delivery."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from trio.testing import MockClock

from sessionfanout import Connection, Hub
from tests.conftest import RecordingSink

__all__ = (
    "BrokenSink",
    "DirectSink",
    "RecordingSink",
    "StuckSink",
    "connect",
    "subscribe",
    "virtual_clock",
    "wait_for",
)


class StuckSink(RecordingSink):
    """A client that stopped reading: ``send`` never returns."""

    async def send(self, text: str) -> None:
        await anyio.sleep_forever()


class BrokenSink(RecordingSink):
    """A client whose transport fails on the first send after ``ok`` sends."""

    def __init__(self, ok: int = 0) -> None:
        super().__init__()
        self.ok = ok

    async def send(self, text: str) -> None:
        if self.ok <= 0:
            raise ConnectionResetError("peer went away")
        self.ok -= 1
        await super().send(text)


class DirectSink(RecordingSink):
    """A sink that also takes frames directly while ``room`` says its buffer has room."""

    def __init__(self) -> None:
        super().__init__()
        self.room = True
        self.direct = 0
        self.queued = 0

    def try_send(self, text: str) -> bool:
        if not self.room:
            return False
        self.direct += 1
        self.texts.append(text)
        return True

    async def send(self, text: str) -> None:
        self.queued += 1
        await anyio.lowlevel.checkpoint()  # a real transport yields while it writes
        self.texts.append(text)


def virtual_clock() -> Any:
    """Run the test on trio's MockClock only: time-driven logic, exact and instant."""
    return pytest.mark.parametrize(
        "anyio_backend",
        [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-mockclock")],
    )


async def wait_for(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll until ``predicate()`` holds; a generous bound, not a timing claim."""
    with anyio.fail_after(seconds):
        # Polling on purpose: the predicates read fakes that have no events to wait on.
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.001)


async def connect(hub: Hub, sink: RecordingSink | None = None) -> tuple[Connection, RecordingSink]:
    sink = sink or RecordingSink()
    connection = await hub.connect(sink)
    return connection, sink


async def subscribe(
    hub: Hub, connection: Connection, session_id: str, **extra: Any
) -> dict[str, Any]:
    """Subscribe and return the ``subscribed`` reply."""
    sink = connection.sink
    assert isinstance(sink, RecordingSink)
    before = len(sink.texts)
    await hub.handle_message(
        connection, json.dumps({"type": "subscribe", "sessionId": session_id, **extra})
    )
    await wait_for(
        lambda: any(f["type"] in ("subscribed", "client_error") for f in sink.frames[before:])
    )
    return next(f for f in sink.frames[before:] if f["type"] in ("subscribed", "client_error"))

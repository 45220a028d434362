"""The Broker contract, run against every broker: LocalBroker and RedisBroker.

A broker is driven here as the hub drives it, with a recording receiver in
place of the hub: what its docstrings promise is what these tests check.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from sessionfanout import (
    Broker,
    BrokerContext,
    Complete,
    HistoryLimits,
    LocalBroker,
    PendingPermissions,
    PermissionDecision,
    TextDelta,
    ToolResult,
    encode,
)
from tests.hubtools import wait_for
from tests.servers import held_seqs

pytestmark = pytest.mark.anyio


class RecordingReceiver:
    def __init__(self) -> None:
        self.delivered: list[tuple[str, int, str, bool]] = []
        self.globals: list[str] = []
        self.resyncs: list[str] = []
        self.decisions: list[PermissionDecision] = []

    def deliver(self, session_id: str, seq: int, text: str, *, is_delta: bool) -> None:
        self.delivered.append((session_id, seq, text, is_delta))

    def deliver_global(self, text: str) -> None:
        self.globals.append(text)

    def resync(self, session_id: str) -> None:
        self.resyncs.append(session_id)

    def decided(self, request_id: str, decision: PermissionDecision) -> None:
        self.decisions.append(decision)

    def seqs(self, session_id: str) -> list[int]:
        return [seq for s, seq, _, _ in self.delivered if s == session_id]


Started = tuple[Broker, RecordingReceiver, PendingPermissions]


CASES = [
    pytest.param(("local", "asyncio"), id="local-asyncio"),
    pytest.param(("local", "trio"), id="local-trio"),
    pytest.param(("redis", "asyncio"), id="redis", marks=pytest.mark.redis),  # redis-py: asyncio
]


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest) -> tuple[str, str]:
    chosen: tuple[str, str] = request.param
    return chosen


@pytest.fixture
def anyio_backend(case: tuple[str, str]) -> str:
    return case[1]


@pytest.fixture
def make_broker(case: tuple[str, str], request: pytest.FixtureRequest) -> Callable[[], Broker]:
    if case[0] == "local":
        return LocalBroker
    server = request.getfixturevalue("redis_server")
    from sessionfanout.redis_broker import RedisBroker

    return lambda: RedisBroker(server.url, prefix="contract")


@asynccontextmanager
async def started(make: Callable[[], Broker], **limits: Any) -> AsyncIterator[Started]:
    receiver, table = RecordingReceiver(), PendingPermissions()
    broker = make()
    async with anyio.create_task_group() as tg:
        context = BrokerContext(receiver, table, tg, anyio.current_time, HistoryLimits(**limits))
        await broker.start(context)
        try:
            yield broker, receiver, table
        finally:
            await broker.aclose()
            tg.cancel_scope.cancel()


async def acked(ack: Awaitable[None] | None) -> None:
    if ack is not None:
        await ack


def body(session_id: str, n: int) -> str:
    return encode(TextDelta(session_id, f"d{n}"))


async def test_publications_are_numbered_gap_free_in_call_order(
    make_broker: Callable[[], Broker],
) -> None:
    async with started(make_broker) as (broker, receiver, _):
        await broker.watch("s")
        acks = [broker.publish("s", body("s", n), is_delta=True) for n in range(20)]
        acks.append(broker.publish("s", encode(Complete("s")), is_delta=False))
        for ack in acks:
            await acked(ack)
        await broker.flush()
        await wait_for(lambda: len(receiver.seqs("s")) == 21)
        state = broker.state("s")
    assert list(range(1, 22)) == receiver.seqs("s")
    texts = [json.loads(text) for _, _, text, _ in receiver.delivered]
    assert [f"d{n}" for n in range(20)] == [t["delta"] for t in texts[:20]]
    assert [n + 1 for n in range(21)] == [t["seq"] for t in texts], "the seq is in the text"
    assert [True] * 20 + [False] == [d for _, _, _, d in receiver.delivered]
    assert 21 == state.seq


async def test_replay_is_exactly_what_came_after_or_none(
    make_broker: Callable[[], Broker],
) -> None:
    async with started(make_broker, max_events=5) as (broker, receiver, _):
        await broker.watch("s")
        for n in range(8):
            event = ToolResult("s", f"u{n}", "tool", f"r{n}")
            await acked(broker.publish("s", encode(event), is_delta=False))
        await broker.flush()
        await wait_for(lambda: len(receiver.seqs("s")) == 8)
        epoch = broker.state("s").epoch
        replay = broker.replay("s", 5, epoch)
        too_old = broker.replay("s", 1, epoch)
        other_epoch = broker.replay("s", 5, "not-" + epoch)
        ahead = broker.replay("s", 9, epoch)
    assert replay is not None
    assert [6, 7, 8] == [json.loads(text)["seq"] for text in replay]
    assert (None, None, None) == (too_old, other_epoch, ahead)


async def test_a_turns_deltas_replay_as_one_frame_holding_their_seqs(
    make_broker: Callable[[], Broker],
) -> None:
    async with started(make_broker) as (broker, receiver, _):
        await broker.watch("s")
        for n in range(6):
            await acked(broker.publish("s", body("s", n), is_delta=True))
        await broker.flush()
        await wait_for(lambda: len(receiver.seqs("s")) == 6)
        frames = [json.loads(text) for text in broker.replay("s", 2, broker.state("s").epoch) or []]
    assert [3, 4, 5, 6] == held_seqs(frames)
    assert "d2d3d4d5" == "".join(f["delta"] for f in frames)


async def test_a_new_session_starts_at_zero_and_is_forgotten_when_unwatched_unused(
    make_broker: Callable[[], Broker],
) -> None:
    async with started(make_broker) as (broker, _, _):
        await broker.watch("s")
        assert 0 == broker.state("s").seq
        assert 1 == broker.known_sessions()
        broker.unwatch("s")
        assert 0 == broker.known_sessions()


async def test_global_events_reach_the_receiver(make_broker: Callable[[], Broker]) -> None:
    async with started(make_broker) as (broker, receiver, _):
        await acked(broker.publish_global('{"type":"config_changed","changeType":"theme"}'))
        await wait_for(lambda: bool(receiver.globals))
    assert ['{"type":"config_changed","changeType":"theme"}'] == receiver.globals


async def test_a_permission_request_is_decided_once_by_a_subscriber_of_its_session(
    make_broker: Callable[[], Broker],
) -> None:
    async with started(make_broker) as (broker, receiver, table):
        pending = table.open("s", anyio.current_time(), 60, None)
        await broker.open_permission(pending.request_id, "s", 60)
        allow = PermissionDecision(pending.request_id, allowed=True)
        stranger = await broker.answer_permission(pending.request_id, allow, {"other"})
        first = await broker.answer_permission(pending.request_id, allow, {"s"})
        second = await broker.answer_permission(pending.request_id, allow, {"s"})
        await wait_for(lambda: bool(receiver.decisions))
    assert (False, True, False) == (stranger, first, second)
    assert [allow] == receiver.decisions

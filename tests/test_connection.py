"""A connection's outbox, the overflow merge, and its writer's state machine."""

from __future__ import annotations

import json
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from sessionfanout import Complete, TextDelta, encode
from sessionfanout.connection import (
    CLOSED,
    CLOSING,
    IDLE,
    PARKED,
    RETIRED,
    RUNNING,
    STATES,
    TRANSITIONS,
    Connection,
    Frame,
    IllegalTransition,
    Writers,
    coalesce,
)
from tests.conftest import RecordingSink


class Flag:
    """A wake-up that records being set."""

    def __init__(self) -> None:
        self.is_set = False

    def set(self) -> None:
        self.is_set = True

    async def wait(self) -> None:  # pragma: no cover - never awaited here
        pass


def connection() -> Connection:
    return Connection("c1", RecordingSink())


def delta(seq: int, text: str, turn: str | None = "t") -> Frame:
    return Frame(encode(TextDelta("s", text, turn, seq=seq)), "s", True)


def test_a_writer_lives_through_its_whole_cycle_by_the_table() -> None:
    writers, c = Writers(), connection()
    assert (IDLE, 0) == (c.state, writers.count)
    writers.start(c)
    assert (RUNNING, 1) == (c.state, writers.count)
    flag = Flag()
    writers.park(c, flag, now=5.0)
    assert (PARKED, 5.0, flag) == (c.state, c.parked_at, c.wakeup)
    writers.retire(c)
    assert (RETIRED, None, True) == (c.state, c.wakeup, flag.is_set), "retiring wakes the task"
    writers.exit(c)
    assert (IDLE, 0) == (c.state, writers.count)


def test_a_frame_for_a_retired_writer_takes_it_back() -> None:
    writers, c = Writers(), connection()
    writers.start(c)
    writers.park(c, Flag(), now=0)
    writers.retire(c)
    writers.wake(c)
    assert RUNNING is c.state
    with pytest.raises(IllegalTransition):
        writers.exit(c)


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("event", sorted(TRANSITIONS))
def test_every_event_follows_the_table_and_nothing_else(event: str, state: object) -> None:
    writers, c = Writers(), connection()
    c.state = state  # type: ignore[assignment]  # set up the case; Writers alone moves it
    writers.count = int(c.state.has_task)
    target = TRANSITIONS[event].get(c.state)
    if target is None:
        with pytest.raises(IllegalTransition):
            getattr(writers, event)(c, *((Flag(), 0.0) if event == "park" else ()))
        assert state is c.state
        return
    getattr(writers, event)(c, *((Flag(), 0.0) if event == "park" else ()))
    assert target is c.state
    assert int(target.has_task) == writers.count


def test_only_quiet_states_may_be_written_to_directly() -> None:
    assert {IDLE, PARKED, RETIRED} == {s for s in STATES if s.quiet}
    assert {RUNNING, PARKED, RETIRED, CLOSING} == {s for s in STATES if s.has_task}
    assert all(CLOSED is TRANSITIONS["forget"][s] for s in STATES)


class WriterMachine(RuleBasedStateMachine):
    """Any sequence of legal events keeps ``count`` equal to the writers with a task."""

    def __init__(self) -> None:
        super().__init__()
        self.writers = Writers()
        self.connections = [Connection(f"c{n}", RecordingSink()) for n in range(3)]

    @rule(index=st.integers(0, 2), event=st.sampled_from(sorted(TRANSITIONS)))
    def move(self, index: int, event: str) -> None:
        c = self.connections[index]
        args = (Flag(), 0.0) if event == "park" else ()
        if c.state in TRANSITIONS[event]:
            getattr(self.writers, event)(c, *args)
        else:
            with pytest.raises(IllegalTransition):
                getattr(self.writers, event)(c, *args)

    @invariant()
    def count_matches(self) -> None:
        assert sum(c.state.has_task for c in self.connections) == self.writers.count

    @invariant()
    def only_a_parked_writer_has_a_wakeup(self) -> None:
        assert all((c.wakeup is not None) == (c.state is PARKED) for c in self.connections)


TestWriterMachine = WriterMachine.TestCase


def test_over_limits_exempts_the_next_frame_out_from_the_byte_limit() -> None:
    c = connection()
    c.enqueue(Frame("x" * 100))
    assert not c.over_limits(max_messages=5, max_bytes=10), "one large frame is fine"
    c.enqueue(Frame("y" * 20))
    assert c.over_limits(max_messages=5, max_bytes=10)
    assert 2 == c.discard_outbox()
    assert (0, 0) == (c.queued, c.queued_bytes)


def test_merged_deltas_carry_first_and_last_seq_and_keep_order() -> None:
    outbox = deque(
        [
            delta(1, "a"),
            delta(2, "b"),
            Frame('{"type":"connected"}'),
            delta(3, "c"),
            Frame(encode(Complete("s", seq=4)), "s"),
            delta(5, "d"),
            delta(6, "e", turn="u"),
        ]
    )
    assert 2 == coalesce(outbox)
    frames = [json.loads(f.text) for f in outbox]
    assert [
        ("text_delta", "abc", 1, 3),
        ("connected", None, None, None),
        ("complete", None, None, 4),
        ("text_delta", "d", None, 5),
        ("text_delta", "e", None, 6),
    ] == [(f["type"], f.get("delta"), f.get("firstSeq"), f.get("seq")) for f in frames]


@given(st.lists(st.tuples(st.sampled_from(["t", "u"]), st.text(max_size=3)), max_size=20))
def test_merging_twice_accounts_for_every_seq_once(parts: list[tuple[str, str]]) -> None:
    outbox = deque(delta(n + 1, text, turn) for n, (turn, text) in enumerate(parts))
    coalesce(outbox)
    coalesce(outbox)
    frames = [json.loads(f.text) for f in outbox]
    held = [n for f in frames for n in range(f.get("firstSeq", f["seq"]), f["seq"] + 1)]
    assert list(range(1, len(parts) + 1)) == held
    assert "".join(text for _, text in parts) == "".join(f["delta"] for f in frames)

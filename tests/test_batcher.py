from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionfanout import Batch, DeltaBatcher, InvalidArgument

INTERVAL = 0.05
MAX_CHARS = 16

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.sampled_from(["s1", "s2", "s3"]),
            st.text(alphabet="abcxyz", max_size=40),
            st.sampled_from([None, "t1", "t2"]),
            st.floats(min_value=0, max_value=0.08),
        ),
        st.tuples(st.just("flush"), st.sampled_from(["s1", "s2", "s3"])),
        st.tuples(st.just("wait"), st.floats(min_value=0, max_value=0.2)),
    ),
    max_size=60,
)


class Checker:
    """Expects every added character, with its turn, out in order, once, on time;
    ``due`` emits no sooner than ``early`` before a deadline, and a session's
    batches from ``due`` (with nothing forced out between) an interval apart."""

    def __init__(self, early: float = 0.0) -> None:
        self.expected: dict[str, deque[tuple[str, str | None, float]]] = {}
        self.emitted = 0
        self.early = early
        self.last_due: dict[str, float] = {}

    def due(self, batches: Any, now: float) -> None:
        for batch in batches:
            first_added = self.expected[batch.session_id][0][2]
            assert now >= first_added + INTERVAL - self.early - 1e-9, "not too early"
            previous = self.last_due.get(batch.session_id)
            if previous is not None:
                assert now - previous >= INTERVAL - 1e-9, "one batch per interval"
            self.last_due[batch.session_id] = now
        self.out(batches, now)

    def forced(self, batches: Any, now: float, *, on_time: bool = True) -> None:
        for batch in batches:
            self.last_due.pop(batch.session_id, None)
        self.out(batches, now, on_time=on_time)

    def added(self, session: str, text: str, turn: str | None, now: float) -> None:
        queue = self.expected.setdefault(session, deque())
        queue.extend((char, turn, now) for char in text)

    def out(self, batches: Any, now: float, *, on_time: bool = True) -> None:
        for batch in batches:
            assert 0 < len(batch.text) <= MAX_CHARS, "size cap"
            queue = self.expected[batch.session_id]
            for char in batch.text:
                expected_char, turn, added_at = queue.popleft()
                assert (expected_char, turn) == (char, batch.turn_id), (
                    "lost, reordered or mixed turns"
                )
                if on_time:
                    assert now - added_at <= INTERVAL + 1e-9, "latency bound"
            self.emitted += 1


@settings(max_examples=300)
@given(operations, st.sampled_from([0.0, 0.01, INTERVAL]))
def test_batcher_invariants_under_a_virtual_clock(ops: list[Any], early: float) -> None:
    """No loss, reorder or duplicate; turn changes split; the cap holds; every
    delta goes out within the interval when due() is called on time, no sooner
    than ``early`` before, and one batch per interval from a streaming session."""
    batcher = DeltaBatcher(INTERVAL, MAX_CHARS, early)
    checker = Checker(early)
    now = 0.0

    def advance_to(target: float) -> None:
        nonlocal now
        while (deadline := batcher.next_deadline()) is not None and deadline <= target:
            now = max(now, deadline)
            checker.due(batcher.due(now), now)
        now = target

    for op in ops:
        if op[0] == "add":
            _, session, text, turn, step = op
            advance_to(now + step)
            checker.added(session, text, turn, now)
            checker.forced(batcher.add(session, text, turn, now), now)
        elif op[0] == "flush":
            batch = batcher.flush(op[1])
            checker.forced([batch] if batch else [], now)
        else:
            advance_to(now + op[1])
    checker.forced(batcher.flush_all(), now, on_time=False)
    assert all(not queue for queue in checker.expected.values()), "everything came out"
    assert 0 == len(batcher)
    assert batcher.next_deadline() is None


def test_consecutive_deltas_of_a_turn_are_concatenated() -> None:
    batcher = DeltaBatcher(0.05, 100)
    for i, text in enumerate(["Hel", "lo ", "world"]):
        assert [] == list(batcher.add("s", text, "t", i * 0.01))
    assert [] == batcher.due(0.049)
    assert [Batch("s", "Hello world", "t")] == batcher.due(0.05)


def test_a_turn_change_emits_the_previous_turn_first() -> None:
    batcher = DeltaBatcher(0.05, 100)
    batcher.add("s", "old", "t1", 0)
    assert [Batch("s", "old", "t1")] == batcher.add("s", "new", "t2", 0.01)
    assert Batch("s", "new", "t2") == batcher.flush("s")


def test_reaching_the_cap_emits_at_once_and_long_text_is_split() -> None:
    batcher = DeltaBatcher(0.05, 4)
    batcher.add("s", "ab", None, 0)
    assert [Batch("s", "abcd", None), Batch("s", "efgh", None)] == batcher.add(
        "s", "cdefghij", None, 0
    )
    assert Batch("s", "ij", None) == batcher.flush("s")


def test_sessions_have_their_own_deadlines() -> None:
    batcher = DeltaBatcher(0.05, 100)
    batcher.add("a", "1", None, 0.0)
    batcher.add("b", "2", None, 0.03)
    assert 0.05 == batcher.next_deadline()
    assert [Batch("a", "1", None)] == batcher.due(0.06)
    assert pytest.approx(0.08) == batcher.next_deadline()


def test_a_flushed_session_leaves_no_stale_deadline() -> None:
    batcher = DeltaBatcher(0.05, 100)
    batcher.add("a", "1", None, 0.0)
    batcher.flush("a")
    assert batcher.next_deadline() is None
    assert [] == batcher.due(1.0)


def test_empty_text_is_ignored() -> None:
    batcher = DeltaBatcher()
    assert [] == list(batcher.add("s", "", None, 0))
    assert 0 == len(batcher)


def test_a_clock_stepping_back_cannot_reorder_deadlines() -> None:
    batcher = DeltaBatcher(0.05, 100)
    batcher.add("a", "1", None, 10.0)
    batcher.add("b", "2", None, 5.0)
    assert [Batch("a", "1", None), Batch("b", "2", None)] == batcher.due(10.05)


def test_early_lets_a_batch_go_before_its_deadline_but_not_within_an_interval() -> None:
    batcher = DeltaBatcher(0.05, 100, early=0.01)
    batcher.add("s", "a", None, 0.0)
    assert 0.04 == batcher.next_deadline()
    assert [Batch("s", "a", None)] == batcher.due(0.04)
    batcher.add("s", "b", None, 0.041)  # streaming on: held to one batch per interval
    assert pytest.approx(0.09) == batcher.next_deadline()
    assert [] == batcher.due(0.085)
    assert [Batch("s", "b", None)] == batcher.due(0.09)
    batcher.add("s", "c", None, 0.5)  # after a pause: early again
    assert pytest.approx(0.54) == batcher.next_deadline()


@pytest.mark.parametrize(
    ("interval", "max_chars", "early"),
    [(-1, 10, 0), (0.05, 0, 0), (float("nan"), 10, 0), (0.05, 10, -0.01), (0.05, 10, 0.06)],
)
def test_bad_settings_are_refused(interval: float, max_chars: int, early: float) -> None:
    with pytest.raises(InvalidArgument):
        DeltaBatcher(interval, max_chars, early)

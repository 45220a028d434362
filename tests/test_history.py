from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionfanout import Complete, History, InvalidArgument, TextDelta, ToolResult, encode


def body(n: int) -> str:
    """An event that is not a delta: kept as it is, one entry each."""
    return encode(ToolResult("s", f"u{n}", "tool", f"r{n}"))


def delta(text: str, turn: str | None = "t1") -> str:
    return encode(TextDelta("s", text, turn))


def make(**kwargs: object) -> History:
    counter = itertools.count()
    return History(new_epoch=lambda: f"e{next(counter)}", **kwargs)  # type: ignore[arg-type]


def test_seq_counts_from_one_without_gaps_and_is_stamped_on_the_frame() -> None:
    history = make()
    for n in range(1, 4):
        seq, text = history.append("s", body(n), 0)
        assert n == seq
        assert n == json.loads(text)["seq"]
    assert 3 == history.state("s", 0).seq


def test_replay_returns_exactly_what_came_after_last_seq() -> None:
    history = make()
    texts = [history.append("s", body(n), 0)[1] for n in range(1, 6)]
    assert texts[2:] == history.replay("s", 2, "e0")
    assert [] == history.replay("s", 5, "e0")
    assert texts == history.replay("s", 0, "e0")


def test_replay_refuses_rather_than_returning_part() -> None:
    history = make(max_events=3)
    for n in range(1, 7):
        history.append("s", body(n), 0)
    assert history.replay("s", 2, "e0") is None, "seq 3 is gone"
    assert 3 == len(history.replay("s", 3, "e0") or ())
    assert history.replay("s", 3, "other") is None, "epoch differs"
    assert history.replay("s", 7, "e0") is None, "ahead of the session"
    assert history.replay("unknown", 0, "e0") is None


def test_history_is_bounded_by_bytes() -> None:
    history = make(max_bytes=200)
    for n in range(50):
        history.append("s", body(n), 0)
    assert history.kept_frames * len(history.append("s", body(0), 0)[1]) <= 200 + 60


def test_a_turns_deltas_are_one_entry_and_replay_from_inside_it_with_first_seq() -> None:
    history = make()
    texts = [
        history.append("s", delta(part), 0, is_delta=True)[1]
        for part in ("Hel", "lo, ", "wor", "ld")
    ]
    history.append("s", body(5), 0)
    replay = history.replay("s", 1, "e0") or []
    assert [
        {"type": "text_delta", "sessionId": "s", "delta": "lo, world", "turnId": "t1",
         "firstSeq": 2, "seq": 4},
        json.loads(body(5)[:-1] + ',"seq":5}'),
    ] == [json.loads(frame) for frame in replay]  # fmt: skip
    assert texts[-1:] == (history.replay("s", 3, "e0") or [])[:1], "one part: as published"


def test_a_text_delta_published_as_an_event_stays_one_entry() -> None:
    history = make()
    for part in ("a", "b"):
        history.append("s", delta(part), 0)
    assert 2 == history.footprint("s")[0]


def test_a_two_thousand_delta_turn_fits_the_default_event_limit() -> None:
    history = make()
    for n in range(2000):
        history.append("s", delta(f"token{n} "), 0, is_delta=True)
    history.append("s", encode(Complete("s")), 0)
    whole = history.replay("s", 0, "e0") or []
    assert 2 == len(whole)
    assert 2 == history.footprint("s")[0], "two entries against max_events"
    assert "".join(f"token{n} " for n in range(2000)) == json.loads(whole[0])["delta"]


@given(
    st.lists(
        st.one_of(
            st.tuples(st.sampled_from(["t1", "t2", None]), st.text(max_size=4)),
            st.just("event"),
        ),
        max_size=30,
    ),
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=60, max_value=2000),
)
def test_any_replay_accounts_for_every_seq_once_and_keeps_the_text(
    script: list, max_events: int, max_bytes: int
) -> None:
    history = make(max_events=max_events, max_bytes=max_bytes)
    published = {}
    for n, step in enumerate(script, 1):
        text = body(n) if step == "event" else delta(step[1], step[0])
        frame = history.append("s", text, 0, is_delta=step != "event")[1]
        published[n] = json.loads(frame)
    state = history.state("s", 0)
    for last in range(state.first_kept - 1, state.seq + 1):
        frames = [json.loads(f) for f in history.replay("s", last, state.epoch) or []]
        held = [n for f in frames for n in range(f.get("firstSeq", f["seq"]), f["seq"] + 1)]
        assert list(range(last + 1, state.seq + 1)) == held
        wanted = "".join(f.get("delta", "") for n, f in published.items() if n > last)
        assert wanted == "".join(f.get("delta", "") for f in frames)
    assert history.replay("s", state.first_kept - 2, state.epoch) is None or state.first_kept == 1


def test_idle_sessions_are_evicted_unless_in_use_and_a_new_epoch_follows() -> None:
    history = make(idle_ttl=10)
    history.append("idle", body(1), 0)
    history.append("busy", body(1), 1)
    assert 10 == history.next_deadline()
    assert [] == history.evict_idle(9.9, lambda s: False)
    assert ["idle"] == history.evict_idle(10.5, lambda s: False)
    assert [] == history.evict_idle(11.5, lambda s: s == "busy")
    assert 21.5 == history.next_deadline(), "in use counts as active"
    assert "idle" not in history
    assert "e2" == history.state("idle", 12).epoch
    assert 0 == history.state("idle", 12).seq


def test_release_forgets_only_sessions_that_never_had_an_event() -> None:
    history = make()
    history.state("quiet", 0)
    history.append("spoken", body(1), 0)
    history.release("quiet")
    history.release("spoken")
    assert "quiet" not in history
    assert "spoken" in history


def test_bad_limits_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        History(idle_ttl=0)
    with pytest.raises(InvalidArgument):
        History(max_events=-1)

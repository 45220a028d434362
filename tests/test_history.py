from __future__ import annotations

import itertools
import json

import pytest

from sessionfanout import History, InvalidArgument, TextDelta, encode


def body(n: int) -> str:
    return encode(TextDelta("s", f"d{n}"))


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

"""The sans-IO presence roster: each watcher hears of each change once."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from sessionfanout import Roster


def test_a_report_read_before_the_watchers_changed_over_is_dropped() -> None:
    roster: Roster[str] = Roster(interval=1.0)
    roster.begin("s", {"a": None}, 0.0)
    roster.watch("s", "w1")
    stale = roster.generation("s")
    assert stale is not None
    roster.unwatch("s", "w1")
    roster.begin("s", {"b": None}, 0.0)
    assert {"b": None} == roster.watch("s", "w2")
    assert [] == roster.report("s", {"a": None}, stale)
    assert [] == roster.report("s", {"b": None}, roster.generation("s") or 0)


class RosterModel(RuleBasedStateMachine):
    """Every watcher's view (its snapshot plus every diff since) matches the
    members after each report; it never hears of a join it knew or a leave of
    someone it did not know; a report is at most one frame per watcher."""

    @initialize()
    def start(self) -> None:
        self.roster: Roster[int] = Roster(interval=1.0)
        self.now = 0.0
        self.members: dict[str, Any] = {}
        self.views: dict[int, dict[str, Any]] = {}
        self.next_watcher = 0

    @rule(member=st.sampled_from("abcdef"), info=st.none() | st.integers(0, 2))
    def join(self, member: str, info: Any) -> None:
        self.members[member] = None if info is None else {"i": info}
        self.roster.local_change("s", member, self.members[member], self.now, present=True)

    @rule(member=st.sampled_from("abcdef"))
    def leave(self, member: str) -> None:
        if self.members.pop(member, 0) != 0:
            self.roster.local_change("s", member, None, self.now, present=False)

    @rule(member=st.sampled_from("xyz"), info=st.none() | st.integers(0, 2))
    def remote_join(self, member: str, info: Any) -> None:
        self.members[member] = None if info is None else {"i": info}
        self.roster.changed("s", self.now)

    @rule()
    def add_watcher(self) -> None:
        if not self.roster.is_watched("s"):
            self.roster.begin("s", self.members, self.now)
        watcher, self.next_watcher = self.next_watcher, self.next_watcher + 1
        self.views[watcher] = dict(self.roster.watch("s", watcher))
        remote = {m for m in self.members if m in "xyz"}
        assert {m for m in self.members if m not in remote} <= set(self.views[watcher])

    @rule(data=st.data())
    def remove_watcher(self, data: st.DataObject) -> None:
        if self.views:
            watcher = data.draw(st.sampled_from(sorted(self.views)))
            self.roster.unwatch("s", watcher)
            del self.views[watcher]

    @rule(seconds=st.sampled_from([0.25, 1.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        for session_id in self.roster.due(self.now):
            generation = self.roster.generation(session_id)
            assert generation is not None
            told = set()
            for diff in self.roster.report(session_id, self.members, generation):
                for watcher in diff.watchers:
                    assert watcher not in told, "one frame per watcher"
                    told.add(watcher)
                    view = self.views[watcher]
                    for member in diff.left:
                        del view[member]
                    for member, info in diff.joined.items():
                        assert view.get(member, 0) != info, "told only of a change"
                        view[member] = info

    @invariant()
    def views_are_right_once_nothing_is_due(self) -> None:
        assert set(self.views) == set(self.roster.watchers("s"))
        if self.roster.next_deadline() is None:
            for view in self.views.values():
                assert self.members == view


TestRosterModel = RosterModel.TestCase

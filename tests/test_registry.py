from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from sessionfanout import SubscriptionRegistry, UnknownConnection

SINKS = st.sampled_from(["a", "b", "c", "d"])
# Ids that are substrings of one another: a sink on one session keeps the id
# itself, and ``in`` on a string would match a part of it.
SESSION_IDS = ("s", "s1", "s12")
SESSIONS = st.sampled_from(SESSION_IDS)


class RegistryModel(RuleBasedStateMachine):
    """The registry against a plain dict of sets, checked after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.registry: SubscriptionRegistry[str] = SubscriptionRegistry()
        self.model: dict[str, set[str]] = {}

    def _subscribers(self, session: str) -> set[str]:
        return {sink for sink, sessions in self.model.items() if session in sessions}

    @rule(sink=SINKS)
    def connect(self, sink: str) -> None:
        self.registry.connect(sink)
        self.model.setdefault(sink, set())

    @rule(sink=SINKS, session=SESSIONS)
    def subscribe(self, sink: str, session: str) -> None:
        if sink not in self.model:
            with pytest.raises(UnknownConnection):
                self.registry.subscribe(sink, session)
            return
        first = not self._subscribers(session)
        new = session not in self.model[sink]
        assert (first and new) == self.registry.subscribe(sink, session)
        self.model[sink].add(session)

    @rule(sink=SINKS, session=SESSIONS)
    def unsubscribe(self, sink: str, session: str) -> None:
        was = sink in self.model and session in self.model[sink]
        if was:
            self.model[sink].discard(session)
        emptied = was and not self._subscribers(session)
        assert emptied == self.registry.unsubscribe(sink, session)

    @rule(sink=SINKS)
    def drop(self, sink: str) -> None:
        sessions = self.model.pop(sink, set())
        emptied = {s for s in sessions if not self._subscribers(s)}
        assert emptied == set(self.registry.drop(sink))

    @invariant()
    def agrees_with_model(self) -> None:
        registry = self.registry
        assert set(self.model) == set(registry.sinks())
        all_sessions = {s for sessions in self.model.values() for s in sessions}
        assert all_sessions == set(registry.sessions())
        for session in SESSION_IDS:
            assert self._subscribers(session) == set(registry.sinks_of(session))
            assert (session in all_sessions) == registry.has_subscribers(session)
        for sink in ("a", "b", "c", "d"):
            assert self.model.get(sink, set()) == set(registry.sessions_of(sink))
            assert (sink in self.model) == registry.is_connected(sink)
            for session in SESSION_IDS:
                expected = session in self.model.get(sink, set())
                assert expected == registry.is_subscribed(sink, session)
        assert len(self.model) == registry.sink_count
        assert len(all_sessions) == registry.session_count
        assert sum(map(len, self.model.values())) == registry.subscription_count

    @invariant()
    def no_empty_session_set_left_behind(self) -> None:
        assert all(self.registry.sinks_of(s) for s in self.registry.sessions())


RegistryModel.TestCase.settings = settings(max_examples=200, stateful_step_count=40)
TestRegistryModel = RegistryModel.TestCase


def test_subscribe_and_unsubscribe_are_idempotent() -> None:
    registry: SubscriptionRegistry[str] = SubscriptionRegistry()
    registry.connect("a")
    assert registry.subscribe("a", "s")
    assert not registry.subscribe("a", "s")
    assert 1 == registry.subscription_count
    assert registry.unsubscribe("a", "s")
    assert not registry.unsubscribe("a", "s")
    assert 0 == registry.subscription_count


def test_drop_of_an_unknown_sink_is_harmless() -> None:
    registry: SubscriptionRegistry[str] = SubscriptionRegistry()
    assert [] == registry.drop("nobody")


def test_connected_sinks_are_listed_once_whatever_they_subscribe_to() -> None:
    registry: SubscriptionRegistry[str] = SubscriptionRegistry()
    for sink in ("none", "one", "many"):
        registry.connect(sink)
    registry.subscribe("one", "s1")
    for session in ("s1", "s2", "s3"):
        registry.subscribe("many", session)
    assert ["none", "one", "many"] == list(registry.sinks())

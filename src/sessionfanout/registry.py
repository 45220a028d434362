"""Who is subscribed to what: sessions to sinks, sinks to sessions.

Sans-IO bookkeeping with two rules that keep it honest:

1. Both directions always agree: ``sink in sinks_of(s)`` exactly when
   ``s in sessions_of(sink)``.
2. No empty set is left behind for a session; a connected sink keeps an entry
   (possibly empty) until it is dropped, so a global broadcast can reach every
   connected sink exactly once, subscribed to zero sessions or to many.

Subscribe and unsubscribe are O(1); dropping a sink is O(its sessions).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, KeysView, Set
from typing import Any, Generic, TypeVar

from .errors import UnknownConnection

__all__ = ("SubscriptionRegistry",)

S = TypeVar("S", bound=Hashable)

_EMPTY: frozenset[Any] = frozenset()
_NO_SESSIONS: frozenset[str] = frozenset()

_Sessions = str | set[str] | frozenset[str]
"""A sink's sessions: none (one shared empty frozenset), exactly one (the id
itself), or a set of two or more. A connection on one session, the common
case, then costs no set of its own."""


class SubscriptionRegistry(Generic[S]):
    """Subscriptions of sinks (any hashable) to sessions (strings)."""

    __slots__ = ("_by_session", "_by_sink", "_subscriptions")

    def __init__(self) -> None:
        self._by_session: dict[str, set[S]] = {}
        self._by_sink: dict[S, _Sessions] = {}
        self._subscriptions = 0

    def connect(self, sink: S) -> None:
        """Register a sink with no subscriptions; idempotent."""
        self._by_sink.setdefault(sink, _NO_SESSIONS)

    def subscribe(self, sink: S, session_id: str) -> bool:
        """Subscribe; return True when ``sink`` is the session's first subscriber.

        Idempotent. Raises ``UnknownConnection`` if ``sink`` is not connected.
        """
        sessions = self._by_sink.get(sink)
        if sessions is None:
            raise UnknownConnection(f"sink {sink!r} is not connected")
        if isinstance(sessions, str):
            if sessions == session_id:
                return False
            self._by_sink[sink] = {sessions, session_id}
        elif session_id in sessions:
            return False
        elif isinstance(sessions, set):
            sessions.add(session_id)
        else:
            self._by_sink[sink] = session_id
        self._subscriptions += 1
        sinks = self._by_session.get(session_id)
        if sinks is None:
            self._by_session[session_id] = {sink}
            return True
        sinks.add(sink)
        return False

    def unsubscribe(self, sink: S, session_id: str) -> bool:
        """Unsubscribe; return True when the session has no subscriber left.

        Idempotent: unsubscribing what is not subscribed returns False.
        """
        if not self.is_subscribed(sink, session_id):
            return False
        sessions = self._by_sink[sink]
        if isinstance(sessions, set):
            sessions.discard(session_id)
            if len(sessions) == 1:
                self._by_sink[sink] = next(iter(sessions))
        else:
            self._by_sink[sink] = _NO_SESSIONS
        self._subscriptions -= 1
        return self._remove_from_session(sink, session_id)

    def drop(self, sink: S) -> list[str]:
        """Forget ``sink`` entirely; return the sessions left with no subscriber."""
        sessions = self._by_sink.pop(sink, None)
        if not sessions:
            return []
        members = (sessions,) if isinstance(sessions, str) else tuple(sessions)
        self._subscriptions -= len(members)
        return [s for s in members if self._remove_from_session(sink, s)]

    def _remove_from_session(self, sink: S, session_id: str) -> bool:
        sinks = self._by_session[session_id]
        sinks.discard(sink)
        if sinks:
            return False
        del self._by_session[session_id]
        return True

    def sinks_of(self, session_id: str) -> Set[S]:
        """The session's subscribers (a live view: copy it before awaiting)."""
        return self._by_session.get(session_id, _EMPTY)

    def sessions_of(self, sink: S) -> Set[str]:
        """The sessions ``sink`` is subscribed to (empty if it is not connected)."""
        sessions = self._by_sink.get(sink, _NO_SESSIONS)
        return frozenset((sessions,)) if isinstance(sessions, str) else sessions

    def is_subscribed(self, sink: S, session_id: str) -> bool:
        sessions = self._by_sink.get(sink, _NO_SESSIONS)
        return sessions == session_id if isinstance(sessions, str) else session_id in sessions

    def has_subscribers(self, session_id: str) -> bool:
        return session_id in self._by_session

    def is_connected(self, sink: S) -> bool:
        return sink in self._by_sink

    def sinks(self) -> KeysView[S]:
        """Every connected sink, once each."""
        return self._by_sink.keys()

    def sessions(self) -> Iterator[str]:
        """Every session with at least one subscriber."""
        return iter(self._by_session)

    @property
    def sink_count(self) -> int:
        return len(self._by_sink)

    @property
    def session_count(self) -> int:
        return len(self._by_session)

    @property
    def subscription_count(self) -> int:
        return self._subscriptions

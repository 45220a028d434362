"""What presence watchers were told, and when they are told next; sans-IO.

The members of a session are its subscribers, on every process, each known
by connection id with the application's ``info``. A watcher is a subscriber
that asked for presence: it gets a snapshot, then what changed (``joined``,
``left``).

Rules:

1. All watchers of a session share one basis, ``told``: the members they
   were last told of. A new watcher's snapshot is that basis, so the next
   diff is right for every watcher alike and no per-watcher state is kept.
   (A watcher that arrives mid-interval sees that interval's changes, its
   own arrival included, in the next diff.)
2. Diffs are throttled per session: a change makes the session due
   ``interval`` later unless it already is, and every change until then
   goes out in one frame. A thousand joins in one interval are one frame
   per watcher, not a thousand.
3. A session is tracked only while it has watchers; changes to the others
   cost a dictionary lookup.

Deadlines are all ``now + interval`` with one ``interval`` and a clock that
does not go back, so the order sessions became due in is their deadline
order, and ``due`` takes them from the front.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Set
from typing import Any, Generic, TypeVar

__all__ = ("Roster",)

W = TypeVar("W", bound=Hashable)

Members = Mapping[str, "dict[str, Any] | None"]
"""Connection id -> info, for one session."""


class Roster(Generic[W]):
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._watchers: dict[str, set[W]] = {}
        self._told: dict[str, dict[str, dict[str, Any] | None]] = {}
        self._due: dict[str, float] = {}

    def __len__(self) -> int:
        """Sessions with watchers."""
        return len(self._watchers)

    def is_watched(self, session_id: str) -> bool:
        return session_id in self._watchers

    def watchers(self, session_id: str) -> Set[W]:
        return self._watchers.get(session_id, set())

    def begin(self, session_id: str, current: Members, now: float) -> None:
        """The first watcher is coming: ``current`` becomes the basis (unless a
        basis was made meanwhile), and the session is due once, to catch any
        change that raced with reading ``current``."""
        if session_id not in self._told:
            self._told[session_id] = dict(current)
            self._watchers.setdefault(session_id, set())
            self.changed(session_id, now)

    def watch(self, session_id: str, watcher: W) -> Members:
        """Add a watcher (after ``begin``); returns its snapshot, the basis."""
        self._watchers[session_id].add(watcher)
        return self._told[session_id]

    def unwatch(self, session_id: str, watcher: W) -> None:
        watchers = self._watchers.get(session_id)
        if watchers is None:
            return
        watchers.discard(watcher)
        if not watchers:
            del self._watchers[session_id], self._told[session_id]
            self._due.pop(session_id, None)

    def changed(self, session_id: str, now: float) -> None:
        """The session's members changed (here or on another process)."""
        if session_id in self._told and session_id not in self._due:
            self._due[session_id] = now + self.interval

    def next_deadline(self) -> float | None:
        return next(iter(self._due.values()), None)

    def due(self, now: float) -> list[str]:
        """The sessions whose diff is due, no longer due once taken."""
        taken = []
        for session_id, deadline in self._due.items():
            if deadline > now:
                break
            taken.append(session_id)
        for session_id in taken:
            del self._due[session_id]
        return taken

    def report(self, session_id: str, current: Members) -> tuple[Members, Members]:
        """``(joined, left)`` since the basis, which becomes ``current``. A member
        whose info changed is in ``joined`` again."""
        told = self._told.get(session_id)
        if told is None:
            return {}, {}
        joined = {m: i for m, i in current.items() if m not in told or told[m] != i}
        left = {m: i for m, i in told.items() if m not in current}
        self._told[session_id] = dict(current)
        return joined, left

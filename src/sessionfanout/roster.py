"""What presence watchers were told, and when they are told next; sans-IO.

The members of a session are its subscribers, on every process, each known
by connection id with the application's ``info``. A watcher is a subscriber
that asked for presence: it gets a snapshot, then what changed (``joined``,
``left``), each change exactly once.

Rules:

1. Diffs are throttled per session: a change makes the session due
   ``interval`` later unless it already is, and every change until then
   goes out in one frame per watcher. A thousand joins in one interval are
   one frame per watcher, not a thousand.
2. Watchers share what they were told. At each report every watcher of the
   session knows the same members, the ``basis``; local changes since then
   are kept in order in a ``log``. A watcher that arrives in between is
   given the basis with the whole log applied (itself included) and
   remembers how much of the log it has seen; at the next report, watchers
   that saw the same amount get the same diff, encoded once.
3. Changes on other processes are learnt by reading all members again at
   the report (``changed`` only makes the session due).
4. A session is tracked only while it has watchers; changes to the others
   cost a dictionary lookup. A report whose read began before the session's
   watchers all left and new ones came (a new ``generation``) is dropped.

Deadlines are all ``now + interval`` with one ``interval`` and a clock that
does not go back, so the order sessions became due in is their deadline
order, and ``due`` takes them from the front.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from itertools import count
from typing import Any, Final, Generic, TypeVar

import attrs

__all__ = ("Roster",)

W = TypeVar("W", bound=Hashable)

Info = dict[str, Any] | None
Members = Mapping[str, Info]
"""Connection id -> info, for one session."""
_ABSENT: Final = object()

_generations = count(1)


@attrs.define
class _Session(Generic[W]):
    basis: dict[str, Info]
    generation: int = attrs.field(factory=lambda: next(_generations))
    log: list[tuple[str, Info, bool]] = attrs.field(factory=list)
    """Local changes since the basis: member, info, present."""
    watchers: dict[W, int] = attrs.field(factory=dict)
    """Each watcher and how much of the log it has seen."""

    def applied(self, upto: int) -> dict[str, Info]:
        members = dict(self.basis)
        for member, info, present in self.log[:upto]:
            if present:
                members[member] = info
            else:
                members.pop(member, None)
        return members


@attrs.frozen
class Diff(Generic[W]):
    """What one group of watchers is told: members that joined (or whose info
    changed) and members that left."""

    watchers: tuple[W, ...]
    joined: Members
    left: Members


def diff(old: Members, new: Members) -> tuple[Members, Members]:
    joined = {m: i for m, i in new.items() if m not in old or old[m] != i}
    left = {m: i for m, i in old.items() if m not in new}
    return joined, left


class Roster(Generic[W]):
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._sessions: dict[str, _Session[W]] = {}
        self._due: dict[str, float] = {}

    def __len__(self) -> int:
        """Sessions with watchers."""
        return len(self._sessions)

    def is_watched(self, session_id: str) -> bool:
        return session_id in self._sessions

    def watchers(self, session_id: str) -> Iterator[W]:
        session = self._sessions.get(session_id)
        return iter(session.watchers if session is not None else ())

    def generation(self, session_id: str) -> int | None:
        session = self._sessions.get(session_id)
        return None if session is None else session.generation

    def begin(self, session_id: str, current: Members, now: float) -> None:
        """The first watcher is coming: ``current`` (every process's members)
        becomes the basis, unless a basis was made meanwhile; the session is
        due once, to catch a change that raced with reading ``current``."""
        if session_id not in self._sessions:
            self._sessions[session_id] = _Session(dict(current))
            self.changed(session_id, now)

    def watch(self, session_id: str, watcher: W) -> Members:
        """Add a watcher (after ``begin``); returns its snapshot."""
        session = self._sessions[session_id]
        session.watchers[watcher] = len(session.log)
        return session.applied(len(session.log))

    def unwatch(self, session_id: str, watcher: W) -> None:
        session = self._sessions.get(session_id)
        if session is None or session.watchers.pop(watcher, _ABSENT) is _ABSENT:
            return
        if not session.watchers:
            del self._sessions[session_id]
            self._due.pop(session_id, None)

    def local_change(
        self, session_id: str, member: str, info: Info, now: float, *, present: bool
    ) -> None:
        """A member joined (``present``) or left on this process."""
        session = self._sessions.get(session_id)
        if session is not None:
            session.log.append((member, info, present))
            self.changed(session_id, now)

    def changed(self, session_id: str, now: float) -> None:
        """Members may have changed (here or on another process)."""
        if session_id in self._sessions and session_id not in self._due:
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

    def report(self, session_id: str, current: Members, generation: int) -> list[Diff[W]]:
        """Each group of watchers' diff (empty ones left out); ``current``, read
        in ``generation``, becomes the basis and the log starts again."""
        session = self._sessions.get(session_id)
        if session is None or session.generation != generation:
            return []
        groups: dict[int, list[W]] = {}
        for watcher, seen in session.watchers.items():
            groups.setdefault(seen, []).append(watcher)
        diffs = []
        for seen in sorted(groups):
            joined, left = diff(session.applied(seen), current)
            if joined or left:
                diffs.append(Diff(tuple(groups[seen]), joined, left))
        session.basis = dict(current)
        session.log.clear()
        session.watchers = dict.fromkeys(session.watchers, 0)
        return diffs

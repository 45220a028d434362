"""Coalescing of streamed text deltas, sans-IO.

Rules (PROTOCOL.md, "Delta batching"): consecutive deltas of one session with
the same turn id are concatenated into one batch, emitted at most ``interval``
after its first delta arrived, or as soon as it reaches ``max_chars``, or on
``flush``. A change of turn id emits what was pending first. Nothing is lost,
reordered or duplicated.

Time comes in as ``now``; nothing here sleeps. Every batch's deadline is its
first delta's time plus one constant interval, so deadlines arrive in order
and one FIFO of (deadline, session) holds them all (a timing wheel with one
slot): no timer per session, O(1) per add. Entries whose batch was already
emitted are skipped when they reach the front.

``early`` lets ``due`` emit a batch up to that long before its deadline, so
that a driver woken late by a busy event loop is not late, but never sooner
than ``interval`` after the session's previous batch from ``due``: a session
streaming without pause still gets at most one frame per interval.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Final

import attrs

from .errors import InvalidArgument

__all__ = ("Batch", "DeltaBatcher")

_NONE: Final[tuple[()]] = ()


@attrs.frozen
class Batch:
    """Text to send as one ``text_delta`` frame."""

    session_id: str
    text: str
    turn_id: str | None


@attrs.define
class _Pending:
    turn_id: str | None
    deadline: float
    emit_at: float
    """When ``due`` may emit it: ``early`` before the deadline, but not within
    ``interval`` of the session's previous batch from ``due``."""
    parts: list[str]
    chars: int

    def to_batch(self, session_id: str) -> Batch:
        return Batch(session_id, "".join(self.parts), self.turn_id)


class DeltaBatcher:
    """Pending delta text per session; call ``due(now)`` by ``next_deadline()``."""

    __slots__ = (
        "_deadlines",
        "_emitted",
        "_last_now",
        "_pending",
        "early",
        "interval",
        "max_chars",
    )

    def __init__(self, interval: float = 0.05, max_chars: int = 16384, early: float = 0.0) -> None:
        if not interval >= 0:
            raise InvalidArgument(f"interval must be >= 0, got {interval!r}")
        if max_chars < 1:
            raise InvalidArgument(f"max_chars must be >= 1, got {max_chars!r}")
        if not 0 <= early <= interval:
            raise InvalidArgument(f"early must be between 0 and interval, got {early!r}")
        self.interval = interval
        self.max_chars = max_chars
        self.early = early
        self._pending: dict[str, _Pending] = {}
        self._deadlines: deque[tuple[float, str, _Pending]] = deque()
        # When due() last emitted each session's batch, oldest first; kept only
        # while it can still hold a new batch back (``early`` long). Ordered:
        # a plain dict emptied from the front slows down as it is emptied.
        self._emitted: OrderedDict[str, float] = OrderedDict()
        self._last_now = float("-inf")

    def add(self, session_id: str, text: str, turn_id: str | None, now: float) -> Sequence[Batch]:
        """Queue ``text``; return the batches that must be sent right away.

        Those are the previous turn's text when ``turn_id`` changed and every
        batch that reached ``max_chars`` (a long text is split at the cap).
        """
        pending = self._pending.get(session_id)
        if pending is not None and pending.turn_id == turn_id:
            chars = pending.chars + len(text)
            if chars < self.max_chars:
                pending.parts.append(text)
                pending.chars = chars
                return _NONE
            return self._add_overflowing(session_id, pending, text, turn_id, now)
        if not text:
            return _NONE
        out: list[Batch] = []
        if pending is not None:
            out.append(self._pop(session_id, pending))
        if len(text) < self.max_chars:
            self._start(session_id, text, turn_id, now)
        else:
            out.extend(self._add_overflowing(session_id, None, text, turn_id, now))
        return out

    def _add_overflowing(
        self, session_id: str, pending: _Pending | None, text: str, turn_id: str | None, now: float
    ) -> list[Batch]:
        out: list[Batch] = []
        if pending is not None:
            room = self.max_chars - pending.chars
            pending.parts.append(text[:room])
            text = text[room:]
            out.append(self._pop(session_id, pending))
        cap = self.max_chars
        while len(text) >= cap:
            out.append(Batch(session_id, text[:cap], turn_id))
            text = text[cap:]
        if text:
            self._start(session_id, text, turn_id, now)
        return out

    def _start(self, session_id: str, text: str, turn_id: str | None, now: float) -> None:
        # A clock that steps back must not break the FIFO's order.
        if now < self._last_now:
            now = self._last_now
        self._last_now = now
        deadline = now + self.interval
        emit_at = deadline - self.early
        previous = self._emitted.pop(session_id, None) if self._emitted else None
        if previous is not None and previous + self.interval > emit_at:
            emit_at = min(deadline, previous + self.interval)
        pending = _Pending(turn_id, deadline, emit_at, [text], len(text))
        self._pending[session_id] = pending
        self._deadlines.append((deadline, session_id, pending))

    def _pop(self, session_id: str, pending: _Pending) -> Batch:
        del self._pending[session_id]
        return pending.to_batch(session_id)

    def due(self, now: float) -> list[Batch]:
        """Emit the batches that may go at ``now``, oldest first: every one
        whose deadline is ``<= now``, and those ahead of it that ``early``
        allows."""
        out: list[Batch] = []
        deadlines = self._deadlines
        emitted = self._emitted
        while deadlines:
            _, session_id, pending = deadlines[0]
            if self._pending.get(session_id) is not pending:
                deadlines.popleft()  # emitted already (flush, turn change, cap)
                continue
            if pending.emit_at > now:
                # Later entries wait too; none of them is late, since every
                # deadline behind this one is later than its emit_at.
                break
            deadlines.popleft()
            out.append(self._pop(session_id, pending))
            if self.early:
                emitted[session_id] = now  # popped when its batch started: goes last
        horizon = now - self.early
        while emitted and next(iter(emitted.values())) <= horizon:
            emitted.popitem(last=False)
        return out

    def flush(self, session_id: str) -> Batch | None:
        """Emit the session's pending text now (the ordering barrier uses this)."""
        pending = self._pending.get(session_id)
        if pending is None:
            return None
        return self._pop(session_id, pending)

    def flush_all(self) -> list[Batch]:
        """Emit everything pending, oldest first (shutdown uses this)."""
        out = [p.to_batch(s) for s, p in self._pending.items()]
        self._pending.clear()
        self._deadlines.clear()
        self._emitted.clear()
        return out

    def next_deadline(self) -> float | None:
        """When ``due`` next has something to emit, or None when nothing is pending."""
        deadlines = self._deadlines
        while deadlines and self._pending.get(deadlines[0][1]) is not deadlines[0][2]:
            deadlines.popleft()
        return deadlines[0][2].emit_at if deadlines else None

    def __len__(self) -> int:
        """Sessions with pending text."""
        return len(self._pending)

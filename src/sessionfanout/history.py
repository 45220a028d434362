"""Per-session sequence numbers and a bounded replay buffer, sans-IO.

Each session has an ``epoch`` (a random token naming this incarnation of its
sequence) and a ``seq`` counter: 1, 2, 3, ... with no gaps. The last events are
kept for replay, bounded by count and by bytes; a session that has been idle
for ``idle_ttl`` with no subscriber is forgotten, and a later event starts a
new epoch, so a client resuming across that loss is told to resync instead of
being handed a partial replay.
"""

from __future__ import annotations

import enum
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from itertools import islice

import attrs

from .codec import with_seq
from .errors import InvalidArgument

__all__ = ("History", "HistoryLimits", "Recorded", "SessionState")


def new_epoch() -> str:
    return secrets.token_urlsafe(9)


class Recorded(enum.Enum):
    """What ``History.record`` made of a frame numbered elsewhere."""

    NEXT = "next"
    """The next frame: kept, to be delivered."""
    DUPLICATE = "duplicate"
    """Already had it: drop it."""
    GAP = "gap"
    """Frames are missing before it: fetch them first."""
    OTHER_EPOCH = "other_epoch"
    """The session's sequence started again: reload it."""
    UNKNOWN = "unknown"
    """Not a session this history follows."""


@attrs.frozen(kw_only=True)
class HistoryLimits:
    """How much of each session a history keeps, and how long an idle one lives."""

    max_events: int = 1000
    max_bytes: int = 4 * 1024 * 1024
    idle_ttl: float = 3600.0
    """Seconds without an event and without a local subscriber before a session is forgotten."""


@attrs.frozen
class SessionState:
    epoch: str
    seq: int


@attrs.define
class _Log:
    epoch: str
    last_active: float
    seq: int = 0
    chars: int = 0
    frames: deque[str] = attrs.field(factory=deque)

    @property
    def first_seq(self) -> int:
        """Seq of the oldest kept frame (``seq + 1`` when none is kept)."""
        return self.seq - len(self.frames) + 1


class History:
    """Sequence numbers and replay buffers of every session the hub knows."""

    def __init__(
        self,
        *,
        max_events: int = 1000,
        max_bytes: int = 4 * 1024 * 1024,
        idle_ttl: float = 3600.0,
        new_epoch: Callable[[], str] = new_epoch,
    ) -> None:
        if max_events < 0 or max_bytes < 0:
            raise InvalidArgument("history limits must be >= 0")
        if not idle_ttl > 0:
            raise InvalidArgument(f"idle_ttl must be > 0, got {idle_ttl!r}")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.idle_ttl = idle_ttl
        self._new_epoch = new_epoch
        # Ordered by last activity, least recent first: the idle scan stops early.
        self._logs: OrderedDict[str, _Log] = OrderedDict()

    @classmethod
    def with_limits(cls, limits: HistoryLimits) -> History:
        return cls(
            max_events=limits.max_events, max_bytes=limits.max_bytes, idle_ttl=limits.idle_ttl
        )

    @property
    def limits(self) -> HistoryLimits:
        return HistoryLimits(
            max_events=self.max_events, max_bytes=self.max_bytes, idle_ttl=self.idle_ttl
        )

    def state(self, session_id: str, now: float) -> SessionState:
        """The session's epoch and last seq; creates the session if new."""
        log = self._touch(session_id, now)
        return SessionState(log.epoch, log.seq)

    def append(self, session_id: str, body: str, now: float) -> tuple[int, str]:
        """Give ``body`` (a session event encoded without seq) the next seq; keep it.

        Returns the seq and the frame with the seq in it.
        """
        log = self._logs.get(session_id)
        if log is None:
            log = self._touch(session_id, now)
        else:  # _touch, inline: this runs for every event
            log.last_active = now
            self._logs.move_to_end(session_id)
        seq = log.seq = log.seq + 1
        text = with_seq(body, seq)
        log.frames.append(text)
        log.chars += len(text)
        if len(log.frames) > self.max_events or log.chars > self.max_bytes:
            self._trim(log)
        return seq, text

    def peek(self, session_id: str) -> SessionState | None:
        """The session's epoch and last seq, if known (creates nothing)."""
        log = self._logs.get(session_id)
        return None if log is None else SessionState(log.epoch, log.seq)

    def seed(
        self, session_id: str, epoch: str, seq: int, frames: Sequence[str], now: float
    ) -> None:
        """Take the session's state from a backplane: ``frames`` end at ``seq``."""
        log = self._touch(session_id, now)
        log.epoch, log.seq = epoch, seq
        log.frames = deque(frames)
        log.chars = sum(map(len, frames))
        self._trim(log)

    def record(self, session_id: str, epoch: str, seq: int, text: str, now: float) -> Recorded:
        """Keep a frame numbered elsewhere (by a backplane), if it is the next one."""
        log = self._logs.get(session_id)
        if log is None:
            return Recorded.UNKNOWN
        if epoch != log.epoch:
            return Recorded.OTHER_EPOCH
        if seq <= log.seq:
            return Recorded.DUPLICATE
        if seq > log.seq + 1:
            return Recorded.GAP
        self._touch(session_id, now)
        log.seq = seq
        log.frames.append(text)
        log.chars += len(text)
        self._trim(log)
        return Recorded.NEXT

    def forget(self, session_id: str) -> None:
        self._logs.pop(session_id, None)

    def _trim(self, log: _Log) -> None:
        frames = log.frames
        while frames and (len(frames) > self.max_events or log.chars > self.max_bytes):
            log.chars -= len(frames.popleft())

    def replay(self, session_id: str, last_seq: int, epoch: str | None) -> Sequence[str] | None:
        """Every kept frame after ``last_seq``, or None when that cannot be complete.

        None when the epoch differs (history lost or never known), when
        ``last_seq`` is ahead of the session, or when the oldest kept frame is
        later than ``last_seq + 1``: never a partial replay.
        """
        log = self._logs.get(session_id)
        if log is None or epoch != log.epoch or last_seq > log.seq:
            return None
        first = log.first_seq
        if last_seq + 1 < first:
            return None
        return list(islice(log.frames, last_seq + 1 - first, None))

    def release(self, session_id: str) -> None:
        """The last subscriber left: forget the session now if it never had an event."""
        log = self._logs.get(session_id)
        if log is not None and log.seq == 0:
            del self._logs[session_id]

    def evict_idle(self, now: float, in_use: Callable[[str], bool]) -> list[str]:
        """Forget sessions idle for ``idle_ttl`` that are not ``in_use``; return them.

        A session still in use counts as active now.
        """
        evicted: list[str] = []
        logs = self._logs
        horizon = now - self.idle_ttl
        while logs:
            session_id, log = next(iter(logs.items()))
            if log.last_active > horizon:
                break
            if in_use(session_id):
                log.last_active = now
                logs.move_to_end(session_id)
            else:
                del logs[session_id]
                evicted.append(session_id)
        return evicted

    def next_deadline(self) -> float | None:
        """When ``evict_idle`` next has work, or None when no session is known."""
        if not self._logs:
            return None
        return next(iter(self._logs.values())).last_active + self.idle_ttl

    def _touch(self, session_id: str, now: float) -> _Log:
        log = self._logs.get(session_id)
        if log is None:
            log = self._logs[session_id] = _Log(self._new_epoch(), now)
        else:
            log.last_active = now
            self._logs.move_to_end(session_id)
        return log

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._logs

    def __len__(self) -> int:
        return len(self._logs)

    @property
    def kept_frames(self) -> int:
        return sum(len(log.frames) for log in self._logs.values())

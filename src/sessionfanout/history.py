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
    """The last seq."""
    first_kept: int = 1
    """The oldest seq the history still holds (``seq + 1`` when it holds none)."""


def _split_delta(text: str) -> tuple[str, str, str] | None:
    """A text_delta frame as the codec writes it, cut into its head (up to the
    delta's text), the text (escaped, unquoted) and its tail (the turn); None
    when it is not one. No unescaped quote can stand inside a JSON string, so
    the boundaries found are the fields' own."""
    start = text.find('","delta":"')
    end = text.rfind(',"seq":')
    if start < 0 or end < 0 or '"firstSeq"' in text:
        return None
    start += len('","delta":"')
    value = text[start:end]
    turn = value.rfind('","turnId":"')
    if turn >= 0:
        return text[:start], value[:turn], value[turn + 1 :]
    return text[:start], value[:-1], ""


@attrs.define
class _Run:
    """Consecutive ``text_delta`` frames of one turn, kept as one entry.

    An agent's turn is hundreds of delta batches; one entry of their texts
    holds it in a fraction of the bytes (``benchmarks/history.py``) and in one
    of ``max_events``. Each part is still one seq: a replay from inside the
    run starts at the right part, as one merged frame with ``firstSeq``.
    """

    head: str
    tail: str
    first_seq: int
    parts: list[str]
    size: int

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.parts) - 1

    def frame(self, from_seq: int) -> str:
        """The frame for this run's parts from ``from_seq`` on (one part: as published)."""
        text = "".join(self.parts[from_seq - self.first_seq :])
        first = f',"firstSeq":{from_seq}' if from_seq < self.last_seq else ""
        return f'{self.head}{text}"{self.tail}{first},"seq":{self.last_seq}}}'

    def drop_first(self) -> int:
        """Forget the oldest part; returns the bytes freed."""
        part = self.parts.pop(0)
        self.first_seq += 1
        self.size -= len(part)
        return len(part)


_RUN_OVERHEAD = 24
"""Bytes of a run's frame besides its head, tail and text (quote, firstSeq, seq)."""


@attrs.define
class _Log:
    epoch: str
    last_active: float
    seq: int = 0
    chars: int = 0
    entries: deque[str | _Run] = attrs.field(factory=deque)
    first_seq: int = 1
    """Seq of the oldest kept frame (``seq + 1`` when none is kept)."""

    def keep(self, seq: int, text: str, is_delta: bool) -> None:
        """Keep the frame numbered ``seq`` (the next one); a delta batch joins the
        run before it. (Only batches merge: a ``text_delta`` published as an
        event stays one, as the slow-consumer policy treats it.)"""
        if not self.entries:
            self.first_seq = seq
        parts = _split_delta(text) if is_delta else None
        if parts is None:
            self.entries.append(text)
            self.chars += len(text)
            return
        head, delta, tail = parts
        last = self.entries[-1] if self.entries else None
        if isinstance(last, _Run) and last.head == head and last.tail == tail:
            last.parts.append(delta)
            last.size += len(delta)
            self.chars += len(delta)
            return
        size = len(head) + len(delta) + len(tail) + _RUN_OVERHEAD
        self.entries.append(_Run(head, tail, seq, [delta], size))
        self.chars += size

    def trim(self, max_events: int, max_bytes: int) -> None:
        """Forget the oldest frames until the limits hold (a run part by part)."""
        entries = self.entries
        while entries and (len(entries) > max_events or self.chars > max_bytes):
            oldest = entries[0]
            if isinstance(oldest, str):
                entries.popleft()
                self.chars -= len(oldest)
                self.first_seq += 1
            elif len(oldest.parts) > 1 and len(entries) <= max_events:
                self.chars -= oldest.drop_first()
                self.first_seq += 1
            else:
                entries.popleft()
                self.chars -= oldest.size
                self.first_seq += len(oldest.parts)
        if not entries:
            self.first_seq = self.seq + 1

    def after(self, last_seq: int) -> list[str]:
        """The kept frames after ``last_seq`` (which the caller checked is kept or next)."""
        frames, seq = [], self.first_seq
        for entry in self.entries:
            if isinstance(entry, _Run):
                if entry.last_seq > last_seq:
                    frames.append(entry.frame(max(entry.first_seq, last_seq + 1)))
                seq = entry.last_seq + 1
            else:
                if seq > last_seq:
                    frames.append(entry)
                seq += 1
        return frames


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

    def state(self, session_id: str, now: float) -> SessionState:
        """The session's epoch and last seq; creates the session if new."""
        log = self._touch(session_id, now)
        return SessionState(log.epoch, log.seq, log.first_seq)

    def append(
        self, session_id: str, body: str, now: float, is_delta: bool = False
    ) -> tuple[int, str]:
        """Give ``body`` (a session event encoded without seq) the next seq; keep it
        (``is_delta``: a batch of text deltas, which joins its turn's run).

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
        entries = log.entries
        if is_delta or not entries:
            log.keep(seq, text, is_delta)
        else:  # keep, inline for the common case: this runs for every event
            entries.append(text)
            log.chars += len(text)
        if len(entries) > self.max_events or log.chars > self.max_bytes:
            log.trim(self.max_events, self.max_bytes)
        return seq, text

    def peek(self, session_id: str) -> SessionState | None:
        """The session's epoch and last seq, if known (creates nothing)."""
        log = self._logs.get(session_id)
        return None if log is None else SessionState(log.epoch, log.seq, log.first_seq)

    def seed(
        self,
        session_id: str,
        epoch: str,
        seq: int,
        frames: Sequence[tuple[str, bool]],
        now: float,
    ) -> None:
        """Take the session's state from a backplane: ``frames`` (each with
        whether it is a delta batch) end at ``seq``."""
        log = self._touch(session_id, now)
        log.epoch, log.seq, log.chars, log.entries = epoch, seq, 0, deque()
        for number, (text, is_delta) in enumerate(frames, seq - len(frames) + 1):
            log.keep(number, text, is_delta)
        log.first_seq = seq - len(frames) + 1
        log.trim(self.max_events, self.max_bytes)

    def record(
        self,
        session_id: str,
        epoch: str,
        seq: int,
        text: str,
        now: float,
        *,
        is_delta: bool = False,
    ) -> Recorded:
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
        log.keep(seq, text, is_delta)
        log.trim(self.max_events, self.max_bytes)
        return Recorded.NEXT

    def forget(self, session_id: str) -> None:
        self._logs.pop(session_id, None)

    def replay(self, session_id: str, last_seq: int, epoch: str | None) -> Sequence[str] | None:
        """Every kept frame after ``last_seq``, or None when that cannot be complete.

        None when the epoch differs (history lost or never known), when
        ``last_seq`` is ahead of the session, or when the oldest kept frame is
        later than ``last_seq + 1``: never a partial replay.
        """
        log = self._logs.get(session_id)
        if log is None or epoch != log.epoch or last_seq > log.seq:
            return None
        if last_seq + 1 < log.first_seq:
            return None
        return log.after(last_seq)

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

    def footprint(self, session_id: str) -> tuple[int, int]:
        """The session's kept entries and bytes, as the limits count them."""
        log = self._logs.get(session_id)
        return (0, 0) if log is None else (len(log.entries), log.chars)

    @property
    def kept_frames(self) -> int:
        """Seqs kept, over every session (a run of deltas keeps one per part)."""
        return sum(log.seq - log.first_seq + 1 for log in self._logs.values())

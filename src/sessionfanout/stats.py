"""What a hub counts, and the snapshots ``Hub.statistics()`` returns."""

from __future__ import annotations

from typing import Any

import attrs

from .connection import Connection

__all__ = ("ConnectionStatistics", "HubStatistics")


@attrs.define
class Counters:
    """The hub's running totals (one owner: the hub; its parts add to them).

    ``frames_sent`` and ``bytes_sent`` hold forgotten connections' counts;
    a live connection counts its own."""

    frames_sent: int = 0
    bytes_sent: int = 0
    batches: int = 0
    coalesced: int = 0
    dropped: int = 0
    closed_slow: int = 0
    closed_broken: int = 0
    client_errors: int = 0
    lost_batches: int = 0
    resyncs: int = 0
    session_faults: int = 0
    suppressed_logs: int = 0
    client_errors_by_code: dict[str, int] = attrs.field(factory=dict)

    def snapshot(self, outboxes: tuple[ConnectionStatistics, ...], **figures: Any) -> HubStatistics:
        """These totals (with the live connections' own counts) and ``figures``."""
        totals = attrs.asdict(self)  # copies: the snapshot does not change with the hub
        totals["frames_sent"] += sum(c.frames_sent for c in outboxes)
        totals["bytes_sent"] += sum(c.bytes_sent for c in outboxes)
        return HubStatistics(**totals, **figures, outboxes=outboxes)


@attrs.frozen
class ConnectionStatistics:
    connection_id: str
    queued_frames: int
    queued_bytes: int
    frames_sent: int
    bytes_sent: int

    @classmethod
    def of(cls, c: Connection) -> ConnectionStatistics:
        return cls(c.id, c.queued, c.queued_bytes, c.frames_sent, c.bytes_sent)


@attrs.frozen
class HubStatistics:
    """A snapshot; counters run from the hub's start."""

    connections: int
    subscriptions: int
    sessions: int
    """Sessions with at least one subscriber."""
    known_sessions: int
    """Sessions with a sequence and history (subscribed or not)."""
    pending_deltas: int
    """Sessions with delta text waiting to be batched."""
    pending_permissions: int
    writers: int
    """Connections with a writer task (the others are idle, or written to directly)."""
    frames_sent: int
    bytes_sent: int
    batches: int
    coalesced: int
    """Queued delta frames merged away by the slow-consumer policy."""
    dropped: int
    """Queued frames discarded because their connection was closed or broke."""
    closed_slow: int
    closed_broken: int
    client_errors: int
    client_errors_by_code: dict[str, int]
    """``client_errors`` by their PROTOCOL.md code."""
    unknown_agent_events: int
    lost_batches: int
    """Delta batches the backplane could not take (it was unavailable)."""
    resyncs: int
    """Times subscribers were told to reload a session after lost events."""
    suppressed_logs: int
    """Log records about one connection left out once it had caused too many."""
    session_faults: int
    """Unexpected errors in the hub's work for one session (each logged and
    confined to that session). Non-zero means a bug."""
    broker: dict[str, int]
    """The backplane's own counters."""
    outboxes: tuple[ConnectionStatistics, ...]

"""What the Redis backplane counts (``statistics().broker``)."""

from __future__ import annotations

import attrs

__all__ = ()


@attrs.define
class Counters:
    published: int = 0
    """Events committed by this process."""
    retried: int = 0
    """Events sent again because their session was not where this process predicted."""
    received: int = 0
    forged: int = 0
    """Messages and history entries dropped: bad signature, malformed, or moved."""
    gaps_filled: int = 0
    resyncs: int = 0
    reconnects: int = 0
    failed: int = 0
    """Publications that failed (Redis unreachable or an error reply)."""

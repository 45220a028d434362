"""A token bucket per connection for client frames; sans-IO."""

from __future__ import annotations

__all__ = ("TokenBucket",)


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; one token a frame."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False means over the rate."""
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

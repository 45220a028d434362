from __future__ import annotations

from sessionfanout.ratelimit import TokenBucket


def test_a_burst_is_allowed_then_the_rate_applies() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0)
    assert [True, True, True, False] == [bucket.take(0) for _ in range(4)]
    assert bucket.take(0.1)
    assert not bucket.take(0.1)
    assert [True, True, True, False] == [bucket.take(100) for _ in range(4)], "saving is capped"

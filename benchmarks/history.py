"""What a session's history costs with the default settings, for one agent turn.

Run: ``.venv/bin/python benchmarks/history.py``. Sans-IO and on a virtual
clock, so the figures are exact, not timings: a turn of 2,000 deltas (a word
each, 50 a second, 40 s of streaming) batched as the hub batches them
(``batch_interval`` 50 ms), then ``text_complete``, a tool call and
``complete``. It counts the history's entries and bytes as the history keeps
them (each run of one turn's ``text_delta`` frames as one entry), and as they
would be kept frame by frame.
"""

from __future__ import annotations

import argparse

from sessionfanout import (
    Complete,
    DeltaBatcher,
    History,
    HubConfig,
    TextComplete,
    TextDelta,
    ToolResult,
    ToolStart,
    encode,
)
from sessionfanout.publishing import BATCH_EARLY

SESSION = "session-0123456789"
WORDS = ["the ", "agent ", "streams ", "a ", "long ", "answer, ", "token ", "by ", "token. "]


def turn(history: History, batcher: DeltaBatcher, deltas: int, per_second: float) -> list[str]:
    """Publish one turn into ``history``; returns every frame as published."""
    now, frames = 0.0, []

    def publish(body: str, is_delta: bool = False) -> None:
        frames.append(history.append(SESSION, body, now, is_delta=is_delta)[1])

    for n in range(deltas):
        now += 1 / per_second
        for batch in [*batcher.due(now), *batcher.add(SESSION, WORDS[n % len(WORDS)], "t1", now)]:
            publish(encode(TextDelta(SESSION, batch.text, batch.turn_id)), is_delta=True)
    for batch in batcher.flush_all():
        publish(encode(TextDelta(SESSION, batch.text, batch.turn_id)), is_delta=True)
    text = "".join(WORDS[n % len(WORDS)] for n in range(deltas))
    publish(encode(TextComplete(SESSION, text, turn_id="t1")))
    publish(encode(ToolStart(SESSION, "bash", "toolu_01", {"command": "ls -la"}, turn_id="t1")))
    publish(encode(ToolResult(SESSION, "toolu_01", "bash", "total 0", turn_id="t1")))
    publish(encode(Complete(SESSION)))
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deltas", type=int, default=2000)
    parser.add_argument("--per-second", type=float, default=50.0)
    args = parser.parse_args()
    config = HubConfig()
    history = History.with_limits(
        HubConfig(history_max_events=10**9, history_max_bytes=10**12).history_limits
    )
    early = config.batch_interval * BATCH_EARLY
    batcher = DeltaBatcher(config.batch_interval, config.max_batch_chars, early)
    frames = turn(history, batcher, args.deltas, args.per_second)
    deltas = [f for f in frames if f.startswith('{"type":"text_delta"')]
    entries, kept = history.footprint(SESSION)
    published = sum(map(len, frames))
    print(f"one turn: {args.deltas:,} deltas at {args.per_second:g}/s, default batching")
    print(f"  frames published:             {len(frames):>7,}  ({len(deltas):,} text_delta)")
    print(f"  frame by frame: bytes         {published:>7,}")
    print(f"  kept (deltas merged): entries {entries:>7,}")
    print(f"  kept (deltas merged): bytes   {kept:>7,}  ({kept / published:.0%})")
    limit = config.history_max_events
    print(
        f"  turns of this size the default history_max_events ({limit:,}) holds: {limit // entries}"
    )


if __name__ == "__main__":
    main()

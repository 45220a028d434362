"""The producer's path into the broker: delta batching and the ordering barrier.

Text deltas wait in the ``DeltaBatcher`` and go out as batches; any other
event of a session first sends that session's pending batch
(``sequence``), with no await between the two, so the broker numbers them
in this order whatever else runs. Nobody waits for a batch: a backplane that
refuses one has it counted (``lost_batches``); an unexpected error while
publishing one session's batch is contained to that session.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from .approvals import Contain
from .batcher import Batch, DeltaBatcher
from .broker import Broker
from .codec import encode
from .config import HubConfig
from .errors import BrokerUnavailable, SessionFanoutError
from .events import SessionEvent, TextDelta
from .stats import Counters

__all__ = ()

logger = logging.getLogger("sessionfanout")

BATCH_EARLY = 0.2
"""A batch may go out this fraction of ``batch_interval`` early (but never
sooner than ``batch_interval`` after its session's previous one), so that a
wake-up made late by a busy event loop does not make the batch late."""


class Publisher:
    """Hands a hub's events to its broker, deltas batched, in order."""

    def __init__(
        self, config: HubConfig, broker: Broker, counters: Counters, contain: Contain
    ) -> None:
        early = config.batch_interval * BATCH_EARLY
        self.batcher = DeltaBatcher(config.batch_interval, config.max_batch_chars, early)
        self.shortest_wait = config.batch_interval - early
        """The least a new batch waits: a scheduler due sooner need not be woken."""
        self._broker = broker
        self._counters = counters
        self._contain = contain

    def sequence(self, event: SessionEvent) -> Awaitable[None] | None:
        """The ordering barrier: the session's pending deltas, then ``event``.

        Returns the broker's acknowledgement (if any) for the caller to await.
        """
        body = encode(event)  # first: an event that cannot be encoded changes nothing
        session_id = event.session_id
        self.flush(session_id)
        try:
            return self._broker.publish(session_id, body, is_delta=False)
        except SessionFanoutError:
            raise
        except Exception as exc:  # a bug: counted and logged, and the producer learns of it
            self._contain(session_id, "publishing an event", exc)
            raise

    def add_delta(self, session_id: str, text: str, turn_id: str | None, now: float) -> None:
        for batch in self.batcher.add(session_id, text, turn_id, now):
            self.publish_batch(batch)

    def flush(self, session_id: str) -> None:
        batch = self.batcher.flush(session_id)
        if batch is not None:
            self.publish_batch(batch)

    def flush_due(self, now: float) -> None:
        for batch in self.batcher.due(now):
            self.publish_batch(batch)

    def flush_all(self) -> None:
        for batch in self.batcher.flush_all():
            self.publish_batch(batch)

    def publish_batch(self, batch: Batch) -> None:
        self._counters.batches += 1
        session_id = batch.session_id
        try:
            body = encode(TextDelta(session_id, batch.text, batch.turn_id))
            self._broker.publish(session_id, body, is_delta=True)
        except BrokerUnavailable as exc:
            self._counters.lost_batches += 1
            logger.warning(
                "delta batch for %s not published: %s",
                session_id,
                exc,
                extra={"session_id": session_id},
            )
        except Exception as exc:
            self._counters.lost_batches += 1
            self._contain(session_id, "publishing a delta batch", exc)

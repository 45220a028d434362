"""The one task that drives every deadline of a hub (never a timer per session).

Batch flushes, permission timeouts, idle sessions and idle writers each say
when they next have work; the scheduler sleeps until the earliest, does what
is due, and sleeps again. Whoever adds work sooner than that wakes it with
``wake_by``. An unexpected error in one round is contained (logged and
counted), and the next round goes on: each step takes its work before doing
it, so no round repeats a failure.
"""

from __future__ import annotations

import math

import anyio

from .approvals import Approvals, Contain
from .broker import Broker
from .config import HubConfig
from .connection import Wakeup
from .delivery import Delivery
from .publishing import Publisher
from .runtime import Runtime

__all__ = ()


class Scheduler:
    def __init__(
        self,
        config: HubConfig,
        publisher: Publisher,
        approvals: Approvals,
        broker: Broker,
        delivery: Delivery,
        contain: Contain,
    ) -> None:
        self._config = config
        self._publisher = publisher
        self._approvals = approvals
        self._broker = broker
        self._delivery = delivery
        self._contain = contain
        self.wake_at = math.inf
        """When the scheduler wakes next (-inf: it has been woken)."""
        self._wakeup: Wakeup | None = None
        self._next_sweep = 0.0

    async def run(self, runtime: Runtime) -> None:
        while True:
            now = runtime.clock()
            try:
                await self._run_due(now)
            except Exception as exc:
                self._contain(None, "the scheduler's work", exc)
            try:
                self.wake_at = self._next_deadline()
            except Exception as exc:  # a broker's bug: try again soon
                self._contain(None, "the scheduler's deadlines", exc)
                self.wake_at = now + self._config.writer_idle_seconds
            wakeup = self._wakeup = runtime.new_wakeup()
            with anyio.move_on_after(self.wake_at - now):
                await wakeup.wait()

    def _next_deadline(self) -> float:
        deadlines = [
            self._publisher.batcher.next_deadline(),
            self._approvals.table.next_deadline(),
            self._broker.next_deadline(),  # the broker's: contained like the rest
        ]
        if self._delivery.writers.count:  # idle writers are swept only while there are some
            deadlines.append(self._next_sweep)
        return min((d for d in deadlines if d is not None), default=math.inf)

    def wake_by(self, deadline: float) -> None:
        """New work is due at ``deadline``: wake the scheduler if it would sleep past it."""
        if deadline < self.wake_at:
            self.wake_at = -math.inf
            if self._wakeup is not None:
                self._wakeup.set()

    def sweep_needed(self) -> None:
        """A writer started while there was none: idle writers need sweeping again."""
        self.wake_by(self._next_sweep)

    async def _run_due(self, now: float) -> None:
        self._publisher.flush_due(now)
        for pending in self._approvals.table.expired(now):
            await self._approvals.expire(pending)  # each is decided, even when closing
        self._broker.run_due(now)
        if now >= self._next_sweep:
            self._delivery.retire_idle_writers(now)
            self._next_sweep = now + self._config.writer_idle_seconds

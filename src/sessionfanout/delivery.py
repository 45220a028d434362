"""Delivery: frames to connections, never waiting on a client.

Each frame is encoded once by its publisher; ``fan_out`` writes it straight
to an idle sink that takes frames directly (``try_send``), or queues one
shared ``Frame`` in each outbox, drained by that connection's writer. An
outbox over its limits gets the slow-consumer policy (``_overflow``, the one
place it is decided). A connection whose send fails, or whose queueing
fails for any reason, is closed and forgotten; nothing else is affected.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import anyio
import anyio.abc

from .approvals import Approvals, Contain
from .broker import Broker
from .codec import encode
from .config import HubConfig, SlowConsumerPolicy
from .connection import (
    CLOSED,
    CLOSING,
    IDLE,
    PARKED,
    RETIRED,
    Connection,
    Frame,
    Sink,
    Writers,
)
from .events import ServerEvent, Subscribed
from .registry import SubscriptionRegistry
from .runtime import Runtime
from .stats import Counters

__all__ = ()

logger = logging.getLogger("sessionfanout")

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
SHUTDOWN = "server shutting down"


def _nothing() -> None:
    pass


def _ignore(connection: Connection, session_id: str) -> None:
    pass


class Delivery:
    """Fan-out, outboxes, the overflow policy, writers, closing connections."""

    def __init__(
        self,
        config: HubConfig,
        registry: SubscriptionRegistry[Connection],
        counters: Counters,
        contain: Contain,
    ) -> None:
        self._config = config
        self._contain = contain
        self._registry = registry
        self._counters = counters
        self.unsubscribed: Callable[[Connection, str], None] = _ignore
        """Called once per subscription a forgotten connection had."""
        self.writers = Writers()
        self._runtime: Runtime | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._drained: anyio.Event | None = None
        self._first_writer: Callable[[], None] = _nothing

    def start(
        self,
        runtime: Runtime,
        task_group: anyio.abc.TaskGroup,
        first_writer: Callable[[], None],
    ) -> None:
        """``first_writer`` is called when a writer starts while none had a
        task: the scheduler retires idle writers only while there are some."""
        self._runtime = runtime
        self._task_group = task_group
        self._first_writer = first_writer

    # -- fan-out ------------------------------------------------------------

    def deliver(self, session_id: str, seq: int, text: str, *, is_delta: bool) -> None:
        """A numbered session event to the session's subscribers (``Receiver.deliver``)."""
        try:
            # A copy: the overflow policy may drop a connection mid-loop.
            connections = tuple(self._registry.sinks_of(session_id))
            self.fan_out(connections, text, session_id, is_delta)
        except Exception as exc:
            self._contain(session_id, "delivering an event", exc)

    def deliver_global(self, text: str) -> None:
        try:
            self.fan_out(tuple(self._registry.sinks()), text)
        except Exception as exc:
            self._contain(None, "delivering a global event", exc)

    def reply(self, connection: Connection, event: ServerEvent) -> None:
        # A reply about a session (subscribed, unsubscribed) ends a run of its
        # deltas in the outbox: merging must not reach across it.
        self.fan_out((connection,), encode(event), getattr(event, "session_id", None))

    def fan_out(
        self,
        connections: Iterable[Connection],
        text: str,
        session_id: str | None = None,
        is_delta: bool = False,
    ) -> None:
        """Send ``text`` to each connection: straight to a quiet sink that takes
        it now, else as one ``Frame`` shared by every outbox it is queued in."""
        frame: Frame | None = None
        size = len(text)
        for connection in connections:
            # Whatever goes wrong here is this connection's: it is closed, the loop goes on.
            try:
                try_send = connection.try_send
                if (
                    try_send is not None
                    and connection.state.quiet
                    and not connection.outbox
                    and try_send(text)
                ):
                    connection.frames_sent += 1
                    connection.bytes_sent += size
                    continue
                if frame is None:
                    frame = Frame(text, session_id, is_delta)
                self._queue(connection, frame)
            except Exception as exc:
                self.broken(connection, exc)

    def _queue(self, connection: Connection, frame: Frame) -> None:
        connection.enqueue(frame)
        state = connection.state
        if state is IDLE:
            self._start_writer(connection)
        elif state is PARKED or state is RETIRED:  # retired, but its task not yet gone
            self.writers.wake(connection)
        config = self._config
        if connection.over_limits(config.outbox_max_messages, config.outbox_max_bytes):
            self._overflow(connection)

    def _overflow(self, connection: Connection) -> None:
        """The slow-consumer policy, applied when an outbox goes over its limits."""
        config = self._config
        if config.slow_consumer is SlowConsumerPolicy.COALESCE_THEN_CLOSE:
            self._counters.coalesced += connection.coalesce()
            if not connection.over_limits(config.outbox_max_messages, config.outbox_max_bytes):
                return
        self._counters.closed_slow += 1
        logger.warning(
            "closing slow connection %s: outbox over its limits",
            connection.id,
            extra={"connection_id": connection.id},
        )
        self.close(connection, CLOSE_POLICY, "slow consumer: outbox limit exceeded")

    # -- writers --------------------------------------------------------------

    def _start_writer(self, connection: Connection) -> None:
        assert self._runtime is not None, "the hub was never entered"
        self.writers.start(connection)
        self._runtime.start_writer(self._writer, connection)
        if self.writers.count == 1:
            self._first_writer()

    async def _writer(self, connection: Connection) -> None:
        """Send from the outbox until the hub closes or the sweep retires this
        writer. One coroutine, not a loop in a helper: a parked writer is one
        frame, and a wake-up resumes one."""
        assert self._runtime is not None
        sink, runtime = connection.sink, self._runtime
        try:
            while True:
                outbox = connection.outbox
                if outbox:
                    text = outbox.popleft().text
                    connection.queued_bytes -= len(text)
                    await sink.send(text)
                    connection.frames_sent += 1
                    connection.bytes_sent += len(text)
                    del text  # a waiting writer holds no frame
                    continue
                # Nothing to send: a waiting connection keeps no queue (a
                # deque is most of its size; this frame must not hold it
                # either); the next frame makes one.
                outbox = connection.outbox = None
                state = connection.state
                if state is CLOSING:
                    break
                if state is CLOSED:
                    return
                if state is RETIRED:
                    self.writers.exit(connection)
                    return
                wakeup = runtime.new_wakeup()
                self.writers.park(connection, wakeup, runtime.clock())
                await wakeup.wait()
        except Exception as exc:
            self.broken(connection, exc)
            return
        # Hub shutdown, the outbox drained: close the sink, then forget it (in
        # this order, so that draining ends once every drained sink is closed).
        await self.close_sink(sink, CLOSE_GOING_AWAY, SHUTDOWN)
        self.forget(connection)

    def retire_idle_writers(self, now: float) -> None:
        """End the writers parked for ``writer_idle_seconds``: an idle connection
        costs no task; the next frame that has to wait starts one again."""
        horizon = now - self._config.writer_idle_seconds
        for connection in self._registry.sinks():
            if connection.state is PARKED and connection.parked_at <= horizon:
                self.writers.retire(connection)

    # -- closing --------------------------------------------------------------

    def broken(self, connection: Connection, exc: Exception) -> None:
        self._counters.closed_broken += 1
        logger.info(
            "dropping connection %s: send failed: %r",
            connection.id,
            exc,
            extra={"connection_id": connection.id},
        )
        self.close(connection, CLOSE_INTERNAL, "send failed")

    def close(self, connection: Connection, code: int, reason: str) -> None:
        """Forget the connection now and close its sink in the background."""
        if self.forget(connection) and self._task_group is not None:
            self._task_group.start_soon(self.close_sink, connection.sink, code, reason)

    async def close_sink(self, sink: Sink, code: int, reason: str) -> None:
        with anyio.move_on_after(self._config.close_timeout, shield=True):
            try:
                await sink.close(code, reason)
            except Exception as exc:
                logger.debug("closing a sink failed: %r", exc)

    def forget(self, connection: Connection) -> bool:
        """Remove every trace of the connection; False if it was already gone."""
        if not self._registry.is_connected(connection):
            return False
        for session_id in tuple(self._registry.sessions_of(connection)):
            self._registry.unsubscribe(connection, session_id)
            self.unsubscribed(connection, session_id)
        self._registry.drop(connection)
        counters = self._counters
        counters.dropped += connection.discard_outbox()
        # Frames are counted once, on their connection (the cheapest place, per
        # frame); a forgotten connection's counts move to the hub's totals.
        counters.frames_sent += connection.frames_sent
        counters.bytes_sent += connection.bytes_sent
        connection.frames_sent = connection.bytes_sent = 0
        self.writers.forget(connection)
        if connection.task is not None:
            connection.task.cancel()
        if self._drained is not None and not self._registry.sink_count:
            self._drained.set()
        return True

    async def drain_and_close_all(self) -> None:
        """Hub shutdown: every writer sends what is queued and closes its sink
        (for at most ``close_timeout``); the rest are closed as they are."""
        self._drained = anyio.Event()
        for connection in tuple(self._registry.sinks()):
            if self.writers.drain(connection) is IDLE:
                self._start_writer_to_close(connection)
        if self._registry.sink_count:
            with anyio.move_on_after(self._config.close_timeout):
                await self._drained.wait()
        stragglers = tuple(self._registry.sinks())
        for connection in stragglers:
            self.forget(connection)
        async with anyio.create_task_group() as tg:
            for connection in stragglers:
                tg.start_soon(self.close_sink, connection.sink, CLOSE_GOING_AWAY, SHUTDOWN)
        assert self._runtime is not None
        await self._runtime.join_writers()

    def _start_writer_to_close(self, connection: Connection) -> None:
        assert self._runtime is not None
        self._runtime.start_writer(self._writer, connection)


class BrokerReceiver:
    """What the broker calls back into: delivery and decisions. A private
    object, so that nothing outside the broker can bypass its sequencing."""

    def __init__(
        self,
        delivery: Delivery,
        approvals: Approvals,
        broker: Broker,
        counters: Counters,
        contain: Contain,
        abort: Callable[[str, str], bool],
        remote_members_changed: Callable[[str], None],
    ) -> None:
        self._delivery = delivery
        self._broker = broker
        self._counters = counters
        self._contain = contain
        self.deliver = delivery.deliver
        self.deliver_global = delivery.deliver_global
        self.decided = approvals.decided
        self.abort = abort
        self.remote_members_changed = remote_members_changed

    def resync(self, session_id: str) -> None:
        """``subscribed`` with ``resumed: false`` tells each subscriber to reload
        the session and carry on from the new seq."""
        self._counters.resyncs += 1
        try:
            state = self._broker.state(session_id)
            text = encode(Subscribed(session_id, state.seq, state.epoch, False))
            self._delivery.deliver(session_id, state.seq, text, is_delta=False)
        except Exception as exc:
            self._contain(session_id, "telling subscribers to reload", exc)

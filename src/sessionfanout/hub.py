"""The Hub: the facade that starts, drives and stops the runtime.

It composes the pieces and owns what they share: one task group, the
producer API and the counters. Each job lives in a module of its own::

    producer --> Hub --> Publisher (batcher, ordering barrier) --> Broker
                                                                      |
    clients <-- Delivery (fan-out, outboxes, writers) <-- receiver <--+
            --> Clients (frames, subscribe + replay, answers) --> Broker

``Scheduler`` drives every deadline from one task, ``Approvals`` keeps
permission requests in flight, ``agent_runner`` runs an agent through the
producer API (and knows the runs ``abort`` stops), and ``runtime`` holds what
differs between asyncio and trio. The broker owns every session's numbering
and history.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Callable
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import anyio.abc

from . import agent_runner
from .agent import PermissionDecision
from .agent_runner import check_session_event
from .approvals import Approvals
from .broker import Broker, BrokerContext, LocalBroker
from .checks import check_id, check_text, check_timeout, describe
from .clients import Clients, CustomFrameHandler, check_connection
from .codec import SERVER_CLASSES, encode
from .config import HubConfig
from .connection import Connection, Sink
from .delivery import BrokerReceiver, Delivery
from .errors import BrokerUnavailable, HubClosed, InvalidArgument, UnknownConnection
from .events import (
    ConfigChanged,
    GlobalEvent,
    PermissionResponse,
    PresenceMember,
    ServerEvent,
    SessionEvent,
    Subscribe,
    Subscribed,
    Unsubscribed,
)
from .presence import PresenceKeeper, as_members
from .publishing import Publisher
from .registry import SubscriptionRegistry
from .runtime import Runtime
from .scheduler import Scheduler
from .stats import ConnectionStatistics, Counters, HubStatistics
from .transformer import EventTransformer

__all__ = ("Hub",)

logger = logging.getLogger("sessionfanout")

NOT_RUNNING = "the hub is not running; use it inside 'async with Hub(...)'"


class Containment:
    """The containment rule: an unexpected error in the hub's work for one
    session is logged with the session id, counted (``session_faults``) and
    goes no further. The scheduler, the other sessions and every connection
    keep running; one session's fault never ends the task group.
    """

    def __init__(self, counters: Counters) -> None:
        self._counters = counters

    def __call__(
        self,
        session_id: str | None,
        work: str,
        exc: BaseException,
        connection_id: str | None = None,
    ) -> None:
        self._counters.session_faults += 1
        logger.error(
            "%s failed for session %s; other sessions are not affected",
            work,
            session_id,
            exc_info=exc,
            extra={"session_id": session_id, "connection_id": connection_id},
        )

    def writer_failed(self, connection: Connection, exc: BaseException) -> None:
        self(None, f"connection {connection.id}'s writer", exc, connection.id)


class Hub:
    """Session-scoped fan-out. Use as ``async with Hub(config) as hub:``.

    Leaving the block flushes every pending delta, lets outboxes drain (for
    at most ``close_timeout``), closes every sink and ends pending permission
    requests (denied). The same happens when the surrounding scope is
    cancelled: nothing accepted before is lost.
    """

    def __init__(
        self,
        config: HubConfig | None = None,
        *,
        transformer: EventTransformer | None = None,
        broker: Broker | None = None,
    ) -> None:
        self.config = config = config or HubConfig()
        self.transformer = transformer or EventTransformer()
        self.broker: Broker = broker or LocalBroker()
        self._counters = counters = Counters()
        self._contain = Containment(counters)
        self._registry: SubscriptionRegistry[Connection] = SubscriptionRegistry()
        self._delivery = delivery = Delivery(config, self._registry, counters, self._contain)
        self._presence = PresenceKeeper(
            config, self._registry, delivery, self.broker, self._contain
        )
        self._clients = Clients(
            config, self._registry, delivery, self.broker, counters, self._presence
        )
        delivery.unsubscribed = self._clients.subscription_ended
        self._publisher = Publisher(config, self.broker, counters, self._contain)
        self._approvals = Approvals(self.broker, self._publish_in_order, self._contain)
        self._runs = agent_runner.Runs(self.broker)
        self._task_group: anyio.abc.TaskGroup | None = None
        self._clock: Callable[[], float] = anyio.current_time  # the backend's, once entered
        self._running = False
        self._scheduler = Scheduler(
            config, self._publisher, self._approvals, self.broker, self._delivery, self._contain
        )
        self._closed: anyio.Event | None = None

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._task_group is not None:
            raise HubClosed("a Hub can be entered only once")
        self._task_group = task_group = anyio.create_task_group()
        await task_group.__aenter__()
        runtime = Runtime.current(task_group, self._contain.writer_failed)
        self._delivery.start(runtime, task_group, self._scheduler.sweep_needed)
        self._clients.clock = self._clock = runtime.clock
        self._clients.abort = self.abort
        limits = self.config.history_limits
        receiver = BrokerReceiver(
            self._delivery,
            self._approvals,
            self.broker,
            self._counters,
            self._contain,
            self._runs.abort,
            self._presence.remote_changed,
        )
        context = BrokerContext(receiver, self._approvals.table, task_group, runtime.clock, limits)
        try:
            await self.broker.start(context)
        except BaseException:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)
            self._task_group = None
            raise
        self._running = True
        task_group.start_soon(self._scheduler.run, runtime, name="sessionfanout scheduler")
        self._presence.start(runtime)
        task_group.start_soon(self._presence.run, runtime, name="sessionfanout presence")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        await self.aclose()
        self._task_group.cancel_scope.cancel()
        return await self._task_group.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Stop accepting work, flush pending deltas, let outboxes drain (for at
        most ``close_timeout``), then close every sink with 1001 and end pending
        permission requests (denied). Idempotent; leaving ``async with`` calls
        it. A server calls it first when it wants its clients to get the last
        frames before the transport goes down."""
        if self._closed is not None:
            await self._closed.wait()
            return
        self._closed = anyio.Event()
        with anyio.CancelScope(shield=True):
            self._running = False
            self._approvals.close_all()
            self._publisher.flush_all()
            await self.broker.flush()
            await self._delivery.drain_and_close_all()
            await self.broker.aclose()
        self._closed.set()

    @property
    def running(self) -> bool:
        return self._running

    # -- connections (the work is in Clients) -------------------------------

    async def connect(self, sink: Sink, context: Any = None) -> Connection:
        """Accept a connection: send it ``connected``."""
        if not self._running:
            raise HubClosed(NOT_RUNNING)
        return self._clients.connect(sink, context)

    async def disconnect(self, connection: Connection) -> None:
        """The client went away: forget the connection and discard its queue. Idempotent."""
        self._delivery.forget(check_connection(connection))

    async def serve(
        self, sink: Sink, incoming: AsyncIterable[str | bytes], context: Any = None
    ) -> None:
        """Connect, handle every incoming frame, disconnect when ``incoming`` ends."""
        if not hasattr(incoming, "__aiter__"):
            raise InvalidArgument(f"incoming must be an async iterable, got {describe(incoming)}")
        await self._clients.serve(await self.connect(sink, context), incoming)

    def register_client_frame(self, frame_type: str, handler: CustomFrameHandler) -> None:
        """Accept client frames of an application-defined ``type``."""
        self._clients.register(frame_type, handler)

    async def handle_message(self, connection: Connection, raw: str | bytes) -> None:
        """Act on one client frame. A bad frame is answered with ``client_error``
        and changes nothing; no ``ProtocolError`` escapes. ``raw`` that is not
        text or bytes is the adapter's mistake: ``InvalidArgument``."""
        self._clients.check_connected(connection)
        await self._clients.handle(connection, raw)

    async def send(self, connection: Connection, event: ServerEvent) -> None:
        """Send one frame to one connection (replies of custom frame handlers)."""
        if not self._running:
            raise HubClosed(NOT_RUNNING)
        self._clients.check_connected(connection)
        if type(event) not in SERVER_CLASSES:
            raise InvalidArgument(f"event must be a server frame, got {describe(event)}")
        self._delivery.reply(connection, event)

    def sessions_of(self, connection: Connection) -> frozenset[str]:
        return frozenset(self._registry.sessions_of(check_connection(connection)))

    async def subscribe(
        self,
        connection: Connection,
        session_id: str,
        last_seq: int | None = None,
        epoch: str | None = None,
        *,
        from_start: bool = False,
        presence: bool = False,
        authorize: bool = False,
    ) -> Subscribed:
        """Subscribe a connection: exactly what a client's ``subscribe`` frame
        does, replay included (``from_start``: a late joiner, ``"from":
        "start"``; ``presence``: ``presence`` frames too), on the server's own
        authority unless ``authorize`` asks the hook (a refusal raises
        ``ProtocolError`` ``forbidden``). Returns the ``subscribed`` reply."""
        if not self._running:
            raise HubClosed(NOT_RUNNING)
        self._clients.check_connected(connection)
        if not isinstance(from_start, bool) or (from_start and last_seq is not None):
            raise InvalidArgument("from_start is a bool, and excludes last_seq")
        if not isinstance(authorize, bool):
            raise InvalidArgument(f"authorize must be a bool, got {describe(authorize)}")
        start: Literal["start"] | None = "start" if from_start else None
        message = Subscribe(session_id, last_seq, epoch, start, presence)
        subscribed = await self._clients.subscribe(connection, message, authorize=authorize)
        if subscribed is None:
            raise UnknownConnection(f"{connection!r} went away while subscribing")
        return subscribed

    async def unsubscribe(
        self, connection: Connection, session_id: str, *, reason: str = "ended by the server"
    ) -> bool:
        """End a subscription at once (access withdrawn): the client gets
        ``unsubscribed`` with ``reason``. False when it was not subscribed."""
        if not self._running:
            raise HubClosed(NOT_RUNNING)
        self._clients.check_connected(connection)
        notice = Unsubscribed(session_id, reason)
        if not self._clients.end_subscription(connection, session_id):
            return False
        self._delivery.reply(connection, notice)
        return True

    async def answer_permission(
        self,
        connection: Connection,
        request_id: str,
        allowed: bool,
        *,
        always_allow: bool = False,
    ) -> None:
        """A permission answer from ``connection`` that did not come as a frame
        (an HTTP request, say): exactly what a ``permission_response`` does.
        Raises ``ProtocolError`` (``unknown_request``) unless it decided."""
        if not self._running:
            raise HubClosed(NOT_RUNNING)
        self._clients.check_connected(connection)
        await self._clients.answer(
            connection, PermissionResponse(request_id, allowed, always_allow)
        )

    # -- producer side -----------------------------------------------------

    async def broadcast_to_session(self, session_id: str, event: SessionEvent) -> None:
        """Publish a session event to the session's subscribers, after its pending deltas."""
        if not self._running:
            raise HubClosed(NOT_RUNNING)
        check_session_event(session_id, event)
        ack = self._publisher.sequence(event)
        if ack is not None:
            await ack

    async def broadcast_global(self, event: GlobalEvent) -> None:
        """Send an event to every connected client exactly once, subscribed or not."""
        if not self._running:
            raise HubClosed(NOT_RUNNING)
        if type(event) is not ConfigChanged:
            raise InvalidArgument(f"not a global event: {describe(event)}")
        ack = self.broker.publish_global(encode(event))
        if ack is not None:
            await ack

    async def queue_delta(self, session_id: str, text: str, turn_id: str | None = None) -> None:
        """Queue streamed text; it goes out coalesced within ``batch_interval``."""
        if not self._running:
            raise HubClosed(NOT_RUNNING)
        check_id("session_id", session_id)
        check_text("text", text)
        check_text("turn_id", turn_id, optional=True)
        if not self.broker.available_for(session_id):
            raise BrokerUnavailable("the backplane is unavailable; the delta was not accepted")
        now = self._clock()
        self._publisher.add_delta(session_id, text, turn_id, now)
        if self._publisher.shortest_wait:
            self._scheduler.wake_by(now + self._publisher.shortest_wait)
        else:  # no batching: out now, not on the scheduler's next turn
            self._publisher.flush(session_id)

    async def flush_delta(self, session_id: str) -> None:
        """Send the session's pending delta text now."""
        if not self._running:
            raise HubClosed(NOT_RUNNING)
        self._publisher.flush(check_id("session_id", session_id))

    async def request_permission(
        self,
        session_id: str,
        tool_name: str,
        command: str,
        description: str,
        *,
        deny_after: float | None = None,
        request_id: str | None = None,
    ) -> PermissionDecision:
        """Ask the session's clients; return the first subscriber's answer, or a
        denial when ``deny_after`` seconds (default ``permission_timeout``) pass."""
        if not self._running:
            raise HubClosed(NOT_RUNNING)
        check_id("session_id", session_id)
        timeout = self.config.permission_timeout if deny_after is None else deny_after
        check_timeout("deny_after", timeout)
        now = self._clock()
        pending, info = self._approvals.open(
            session_id, tool_name, command, description, request_id, now, timeout
        )
        self._scheduler.wake_by(pending.deadline)
        return await self._approvals.ask(pending, info, now)

    async def run_agent(self, session_id: str, events: AsyncIterable[Any]) -> None:
        """Publish an agent's events through the transformer until it ends.

        An agent written as an async generator receives each permission
        decision as the value of its ``yield AgentPermissionRequest(...)``.
        Cancelled (an abort), it flushes pending deltas, then sends ``error``
        ("aborted") and ``complete``; if the agent raises, or yields an event
        that is refused, ``error`` with the message and ``complete`` are sent
        and the exception propagates.
        """
        if not self._running:
            raise HubClosed(NOT_RUNNING)
        check_id("session_id", session_id)
        if not hasattr(events, "__aiter__"):
            raise InvalidArgument(f"events must be an async iterable, got {describe(events)}")
        await self._runs.run(self, self.transformer, session_id, events)

    async def abort(self, session_id: str, reason: str = agent_runner.ABORTED) -> bool:
        """Stop the session's agent on whichever process runs it (flush, then
        ``error`` with ``reason`` and ``complete``); False when none runs."""
        if not self._running:
            raise HubClosed(NOT_RUNNING)
        check_id("session_id", session_id)
        check_text("reason", reason)
        return self._runs.abort(session_id, reason) or await self.broker.abort(session_id, reason)

    async def is_running(self, session_id: str) -> bool:
        """Whether an agent runs for the session, on any process."""
        if not self._running:
            raise HubClosed(NOT_RUNNING)
        check_id("session_id", session_id)
        return session_id in self._runs or await self.broker.is_running(session_id)

    async def presence(self, session_id: str) -> tuple[PresenceMember, ...]:
        """Who is subscribed to the session on every process, in connection id
        order; ``BrokerUnavailable`` when the other processes cannot be asked."""
        if not self._running:
            raise HubClosed(NOT_RUNNING)
        return as_members(await self._presence.members(check_id("session_id", session_id)))

    async def _publish_in_order(self, event: SessionEvent) -> None:
        ack = self._publisher.sequence(event)
        if ack is not None:
            await ack

    # -- introspection -----------------------------------------------------

    def statistics(self) -> HubStatistics:
        return self._counters.snapshot(
            tuple(map(ConnectionStatistics.of, self._registry.sinks())),
            connections=self._registry.sink_count,
            subscriptions=self._registry.subscription_count,
            sessions=self._registry.session_count,
            known_sessions=self.broker.known_sessions(),
            pending_deltas=len(self._publisher.batcher),
            pending_permissions=len(self._approvals.table),
            writers=self._delivery.writers.count,
            unknown_agent_events=self.transformer.unknown_events,
            broker=dict(self.broker.statistics()),
        )

"""The Hub: the one piece that does I/O.

It composes the sans-IO core (registry, batcher, transformer, history,
permissions, codec) with anyio. It owns one task group, with one scheduler
task that drives every deadline (batch flushes, permission timeouts, idle
eviction, idle writers), and a writer task per connection while it has
frames waiting in its bounded outbox (on asyncio a plain task the hub owns
and joins, see ``Hub._start_writer``). Publishing encodes an event once and
either writes it straight to an idle sink that takes it (``try_send``) or
appends it to outboxes; it never awaits a client.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import secrets
import sys
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Self

import anyio
import attrs

from .agent import PermissionDecision
from .batcher import Batch, DeltaBatcher
from .broker import Broker, BrokerContext, LocalBroker
from .checks import MAX_ID_LENGTH, check_id, describe
from .codec import SERVER_CLASSES, decode_client, encode, encode_delta
from .config import HubConfig, SlowConsumerPolicy
from .connection import Connection, Frame, Queued, Sink, Wakeup, coalesce, text_of
from .errors import (
    BrokerUnavailable,
    HubClosed,
    InvalidArgument,
    ProtocolError,
    SessionFanoutError,
    SessionMismatch,
    UnknownConnection,
)
from .events import (
    SESSION_EVENT_TYPES,
    ClientError,
    Complete,
    ConfigChanged,
    Connected,
    CustomFrame,
    Error,
    GlobalEvent,
    PermissionRequest,
    PermissionRequestInfo,
    PermissionResponse,
    PermissionTimeout,
    ServerEvent,
    SessionEvent,
    Subscribe,
    Subscribed,
    TextDelta,
    Unsubscribe,
    Unsubscribed,
)
from .history import History
from .permissions import PendingPermission, PermissionBroker
from .ratelimit import TokenBucket
from .registry import SubscriptionRegistry
from .transformer import EventTransformer

__all__ = ("ConnectionStatistics", "CustomFrameHandler", "Hub", "HubStatistics")

logger = logging.getLogger("sessionfanout")

CustomFrameHandler = Callable[[Connection, CustomFrame], Awaitable[None]]
"""Handles an application-defined client frame; raise ``ProtocolError`` to refuse it."""

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
ABORTED = "aborted"
SHUTDOWN = "server shutting down"
BATCH_EARLY = 0.2
"""A batch may go out this fraction of ``batch_interval`` early (but never
sooner than ``batch_interval`` after its session's previous one), so that a
wake-up made late by a busy event loop does not make the batch late."""


@attrs.frozen
class ConnectionStatistics:
    connection_id: str
    queued_frames: int
    queued_bytes: int
    frames_sent: int
    bytes_sent: int


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
    unknown_agent_events: int
    lost_batches: int
    """Delta batches the backplane could not take (it was unavailable)."""
    resyncs: int
    """Times subscribers were told to reload a session after lost events."""
    session_faults: int
    """Unexpected errors in the hub's work for one session (each logged and
    confined to that session; see ``Hub._contain``). Non-zero means a bug."""
    broker: dict[str, int]
    """The backplane's own counters."""
    outboxes: tuple[ConnectionStatistics, ...]


@attrs.define
class _Waiter:
    event: anyio.Event = attrs.field(factory=anyio.Event)
    decision: PermissionDecision | None = None


class _FutureWakeup(asyncio.Future[None]):
    """A one-shot wake-up on asyncio: a bare future that can ``set()``.

    An ``anyio.Event`` is three objects and about 1.5 KB per wait (its
    asyncio.Event keeps a deque of waiters); a parked writer needs neither.
    Cancellation works as for any awaited future.
    """

    __slots__ = ()

    def set(self) -> None:
        if not self.done():
            self.set_result(None)

    def wait(self) -> Awaitable[None]:
        return self


@attrs.frozen
class _Runtime:
    """The running backend's clock, a cheap one-shot wake-up, and (on asyncio)
    its loop, looked up once.

    ``anyio.current_time()`` and ``anyio.Event()`` find the backend on every
    call, which costs more than the rest of a delivery; the hub needs them per
    event and per wake-up. These are the same clocks, found once.
    """

    clock: Callable[[], float]
    new_event: Callable[[], Wakeup]
    loop: asyncio.AbstractEventLoop | None = None
    """Set on asyncio: writers run as plain tasks of this loop (see ``Hub._start_writer``)."""

    @classmethod
    def current(cls) -> _Runtime:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            clock = loop.time
            if type(loop).time is asyncio.BaseEventLoop.time:
                clock = time.monotonic  # what loop.time() returns, one call less
            return cls(clock, functools.partial(_FutureWakeup, loop=loop), loop)
        event_type: Callable[[], Wakeup] = type(anyio.Event())
        if "trio" in sys.modules:
            import trio

            return cls(trio.current_time, event_type)
        return cls(anyio.current_time, event_type)  # pragma: no cover - other backends


def _check_session_id(session_id: object) -> str:
    return check_id("session_id", session_id)


def _check_session_event(session_id: str, event: object) -> SessionEvent:
    """A session event a producer may publish: of a session event class, for
    ``session_id``, and not yet numbered (the hub assigns ``seq``)."""
    if type(event) not in SESSION_EVENT_TYPES:
        raise InvalidArgument(f"event must be a session event, got {describe(event)}")
    assert isinstance(event, SessionEvent)
    if event.session_id != session_id:
        raise SessionMismatch(
            f"event for session {event.session_id!r:.80} passed for session {session_id!r:.80}"
        )
    if event.seq is not None or getattr(event, "first_seq", None) is not None:
        raise InvalidArgument("seq and firstSeq are assigned by the hub; leave them None")
    return event


def _check_text(name: str, value: object, *, optional: bool = False) -> None:
    if not isinstance(value, str) and not (optional and value is None):
        kind = "a string or None" if optional else "a string"
        raise InvalidArgument(f"{name} must be {kind}, got {describe(value)}")


def _check_connection(connection: object) -> Connection:
    if not isinstance(connection, Connection):
        raise InvalidArgument(f"connection must be a Connection, got {describe(connection)}")
    return connection


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
        self._registry: SubscriptionRegistry[Connection] = SubscriptionRegistry()
        early = config.batch_interval * BATCH_EARLY
        self._batcher = DeltaBatcher(config.batch_interval, config.max_batch_chars, early)
        self._batch_wait = config.batch_interval - early
        """The shortest a new batch waits: sooner than that, no need to wake the scheduler."""
        self._history = History(
            max_events=config.history_max_events,
            max_bytes=config.history_max_bytes,
            idle_ttl=config.history_idle_ttl,
        )
        self._permissions = PermissionBroker()
        self._waiters: dict[str, _Waiter] = {}
        self._custom: dict[str, CustomFrameHandler] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._running = False
        self._wake_at = math.inf
        self._writers = 0
        self._next_sweep = 0.0
        self._clock: Callable[[], float] = anyio.current_time
        self._new_event: Callable[[], Wakeup] = anyio.Event
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer_tasks: set[asyncio.Task[None]] = set()
        self._on_writer_done = self._writer_done  # bound once, not per writer
        self._wakeup: Wakeup | None = None
        self._drained: anyio.Event | None = None
        self._closed: anyio.Event | None = None
        self._counters = dict.fromkeys(
            (
                "frames_sent",
                "bytes_sent",
                "batches",
                "coalesced",
                "dropped",
                "closed_slow",
                "closed_broken",
                "client_errors",
                "lost_batches",
                "resyncs",
                "session_faults",
            ),
            0,
        )

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise HubClosed("a Hub can be entered only once")
        runtime = _Runtime.current()
        self._clock, self._new_event, self._loop = runtime.clock, runtime.new_event, runtime.loop
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            await self.broker.start(
                BrokerContext(self, self._history, self._permissions, self._tg, self._clock)
            )
        except BaseException:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            self._tg = None
            raise
        self._running = True
        self._tg.start_soon(self._scheduler, name="sessionfanout scheduler")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        await self.aclose()
        self._tg.cancel_scope.cancel()
        return await self._tg.__aexit__(exc_type, exc, tb)

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
            self._end_permissions()
            self._flush_all_deltas()
            await self.broker.flush()
            self._drained = anyio.Event()
            for connection in list(self._registry.sinks()):
                connection.closing = True
                self._wake_writer(connection)
            if self._registry.sink_count:
                with anyio.move_on_after(self.config.close_timeout):
                    await self._drained.wait()
            stragglers = list(self._registry.sinks())
            for connection in stragglers:
                self._forget(connection)
            async with anyio.create_task_group() as tg:
                for connection in stragglers:
                    tg.start_soon(self._close_sink, connection.sink, CLOSE_GOING_AWAY, SHUTDOWN)
            if self._writer_tasks:  # forgotten above, so cancelled: they end at once
                await asyncio.wait(self._writer_tasks)
            await self.broker.aclose()
        self._closed.set()

    @property
    def running(self) -> bool:
        return self._running

    def _check_running(self) -> anyio.abc.TaskGroup:
        if not self._running or self._tg is None:
            raise HubClosed("the hub is not running; use it inside 'async with Hub(...)'")
        return self._tg

    def _check_tg(self) -> anyio.abc.TaskGroup:
        assert self._tg is not None, "the hub was never entered"
        return self._tg

    # -- adapter side ------------------------------------------------------

    async def connect(self, sink: Sink, context: Any = None) -> Connection:
        """Accept a connection: send it ``connected`` and start its writer."""
        self._check_running()
        for method in ("send", "close"):
            if not callable(getattr(sink, method, None)):
                raise InvalidArgument(f"sink must have an async {method}(), got {describe(sink)}")
        try_send = getattr(sink, "try_send", None)
        if try_send is not None and not callable(try_send):
            raise InvalidArgument(f"sink.try_send must be callable, got {describe(try_send)}")
        connection = Connection(secrets.token_urlsafe(9), sink, context)
        if self.config.client_rate is not None:
            connection.rate = TokenBucket(
                self.config.client_rate, self.config.client_burst, self._clock()
            )
        self._registry.connect(connection)
        self._reply(connection, Connected(int(time.time() * 1000), connection.id))
        return connection

    async def disconnect(self, connection: Connection) -> None:
        """The client went away: forget the connection and discard its queue. Idempotent."""
        self._forget(_check_connection(connection))

    async def serve(
        self, sink: Sink, incoming: AsyncIterable[str | bytes], context: Any = None
    ) -> None:
        """Connect, handle every incoming frame, disconnect when ``incoming`` ends."""
        if not hasattr(incoming, "__aiter__"):
            raise InvalidArgument(f"incoming must be an async iterable, got {describe(incoming)}")
        connection = await self.connect(sink, context)
        try:
            async for raw in incoming:
                if not self._registry.is_connected(connection):
                    break
                await self.handle_message(connection, raw)
        finally:
            self._forget(connection)

    def register_client_frame(self, frame_type: str, handler: CustomFrameHandler) -> None:
        """Accept client frames of an application-defined ``type``."""
        if not isinstance(frame_type, str) or not frame_type:
            raise InvalidArgument("frame_type must be a non-empty string")
        if frame_type in ("subscribe", "unsubscribe", "permission_response"):
            raise InvalidArgument(f"{frame_type!r} is a protocol frame type")
        if not callable(handler):
            raise InvalidArgument(f"handler must be callable, got {describe(handler)}")
        self._custom[frame_type] = handler

    async def handle_message(self, connection: Connection, raw: str | bytes) -> None:
        """Act on one client frame. A bad frame is answered with ``client_error``
        and changes nothing; no ``ProtocolError`` escapes. ``raw`` that is not
        text or bytes is the adapter's mistake: ``InvalidArgument``."""
        self._check_connected(connection)
        if not isinstance(raw, str | bytes | bytearray):
            raise InvalidArgument(f"raw must be str or bytes, got {describe(raw)}")
        try:
            if connection.rate is not None and not connection.rate.take(self._clock()):
                raise ProtocolError("rate_limited", "too many frames; slow down")
            message = decode_client(
                raw, max_bytes=self.config.max_frame_bytes, custom_types=self._custom
            )
            if type(message) is Subscribe:
                await self._subscribe(connection, message, authorize=True)
            elif type(message) is Unsubscribe:
                self._end_subscription(connection, message.session_id)
                self._reply(connection, Unsubscribed(message.session_id))
            elif type(message) is PermissionResponse:
                await self._answer_permission(connection, message)
            else:
                assert isinstance(message, CustomFrame)
                await self._custom[message.type](connection, message)
        except ProtocolError as exc:
            self._counters["client_errors"] += 1
            if self._registry.is_connected(connection):
                self._reply(connection, ClientError(exc.code, exc.message, exc.request_type))

    async def send(self, connection: Connection, event: ServerEvent) -> None:
        """Send one frame to one connection (replies of custom frame handlers)."""
        self._check_running()
        self._check_connected(connection)
        if type(event) not in SERVER_CLASSES:
            raise InvalidArgument(f"event must be a server frame, got {describe(event)}")
        self._reply(connection, event)

    def sessions_of(self, connection: Connection) -> frozenset[str]:
        return frozenset(self._registry.sessions_of(_check_connection(connection)))

    async def subscribe(
        self,
        connection: Connection,
        session_id: str,
        last_seq: int | None = None,
        epoch: str | None = None,
    ) -> Subscribed:
        """Subscribe a connection on the server's own authority (the ``authorize``
        hook is not asked): exactly what a client's ``subscribe`` frame does,
        replay included. Returns the ``subscribed`` reply the client was sent."""
        self._check_running()
        self._check_connected(connection)
        subscribed = await self._subscribe(connection, Subscribe(session_id, last_seq, epoch))
        if subscribed is None:
            raise UnknownConnection(f"{connection!r} went away while subscribing")
        return subscribed

    async def unsubscribe(
        self, connection: Connection, session_id: str, *, reason: str = "ended by the server"
    ) -> bool:
        """End a subscription at once (access withdrawn): the client gets
        ``unsubscribed`` with ``reason``. False when it was not subscribed."""
        self._check_running()
        self._check_connected(connection)
        notice = Unsubscribed(session_id, reason)
        if not self._end_subscription(connection, session_id):
            return False
        self._reply(connection, notice)
        return True

    def _check_connected(self, connection: Connection) -> None:
        if not self._registry.is_connected(_check_connection(connection)):
            raise UnknownConnection(f"{connection!r} is not connected to this hub")

    async def _subscribe(
        self, connection: Connection, message: Subscribe, *, authorize: bool = False
    ) -> Subscribed | None:
        """Subscribe with replay; None when the connection went away meanwhile.
        A subscribe the ``authorize`` hook refuses also ends an existing
        subscription to that session: access withdrawn takes effect at once."""
        session_id = message.session_id
        if authorize and not await self._authorized(connection, session_id):
            if self._end_subscription(connection, session_id):
                self._reply(connection, Unsubscribed(session_id, "forbidden"))
            raise ProtocolError(
                "forbidden", f"not allowed to subscribe to {session_id!r:.80}", "subscribe"
            )
        if not self._registry.is_subscribed(connection, session_id):
            await self.broker.watch(session_id)
            if not self._registry.is_connected(connection) or self._registry.is_subscribed(
                connection, session_id
            ):
                self.broker.unwatch(session_id)  # went away, or subscribed meanwhile
        if not self._registry.is_connected(connection):
            return None
        # No await from here on: the replay and live events cannot interleave.
        state = self._history.state(session_id, self._clock())
        replay = None
        if message.last_seq is not None:
            replay = self._history.replay(session_id, message.last_seq, message.epoch)
        self._registry.subscribe(connection, session_id)
        subscribed = Subscribed(session_id, state.seq, state.epoch, replay is not None)
        self._reply(connection, subscribed)
        for text in replay or ():
            self._fan_out((connection,), text)
        return subscribed

    async def _authorized(self, connection: Connection, session_id: str) -> bool:
        hook = self.config.authorize
        if hook is None:
            return True
        try:
            verdict = hook(connection, session_id)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception:
            logger.exception("authorize hook failed; refusing %r", session_id)
            return False
        return verdict is True

    def _end_subscription(self, connection: Connection, session_id: str) -> bool:
        """Unsubscribe; False when the connection was not subscribed."""
        if not self._registry.is_subscribed(connection, session_id):
            return False
        if self._registry.unsubscribe(connection, session_id):
            self._history.release(session_id)
        self.broker.unwatch(session_id)
        return True

    # -- producer side -----------------------------------------------------

    async def broadcast_to_session(self, session_id: str, event: SessionEvent) -> None:
        """Publish a session event to the session's subscribers, after its pending deltas."""
        # The checks inline, their errors out of line: this runs for every event.
        if not self._running:
            self._check_running()
        if type(session_id) is not str or not 0 < len(session_id) <= MAX_ID_LENGTH:
            _check_session_id(session_id)
        _check_session_event(session_id, event)
        ack = self._sequence_in_order(event)
        if ack is not None:
            await ack

    async def broadcast_global(self, event: GlobalEvent) -> None:
        """Send an event to every connected client exactly once, subscribed or not."""
        self._check_running()
        if not isinstance(event, ConfigChanged):
            raise InvalidArgument(f"not a global event: {event!r:.80}")
        ack = self.broker.publish_global(encode(event))
        if ack is not None:
            await ack

    async def queue_delta(self, session_id: str, text: str, turn_id: str | None = None) -> None:
        """Queue streamed text; it goes out coalesced within ``batch_interval``."""
        if not self._running:
            self._check_running()
        if type(session_id) is not str or not 0 < len(session_id) <= MAX_ID_LENGTH:
            _check_session_id(session_id)
        if type(text) is not str or (turn_id is not None and type(turn_id) is not str):
            _check_text("text", text)
            _check_text("turn_id", turn_id, optional=True)
        if not self.broker.available:
            raise BrokerUnavailable("the backplane is unavailable; the delta was not accepted")
        now = self._clock()
        for batch in self._batcher.add(session_id, text, turn_id, now):
            self._publish_batch(batch)
        if now + self._batch_wait < self._wake_at:
            self._wake_scheduler()

    async def flush_delta(self, session_id: str) -> None:
        """Send the session's pending delta text now."""
        self._check_running()
        batch = self._batcher.flush(_check_session_id(session_id))
        if batch is not None:
            self._publish_batch(batch)

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
        self._check_running()
        _check_session_id(session_id)
        for name, value in (
            ("tool_name", tool_name),
            ("command", command),
            ("description", description),
        ):
            _check_text(name, value)
        if request_id is not None:
            check_id("request_id", request_id)
        timeout = self.config.permission_timeout if deny_after is None else deny_after
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout < math.inf
        ):
            raise InvalidArgument(f"deny_after must be a positive number, got {describe(timeout)}")
        pending = self._permissions.open(session_id, self._clock(), timeout, request_id)
        waiter = self._waiters[pending.request_id] = _Waiter()
        if pending.deadline < self._wake_at:
            self._wake_scheduler()
        try:
            ttl = pending.deadline - self._clock()
            await self.broker.open_permission(pending.request_id, session_id, ttl)
            info = PermissionRequestInfo(pending.request_id, tool_name, command, description)
            await self._publish_in_order(PermissionRequest(session_id, info))
            await waiter.event.wait()
        finally:
            del self._waiters[pending.request_id]
            self._permissions.resolve(pending.request_id)
        assert waiter.decision is not None
        return waiter.decision

    async def run_agent(self, session_id: str, events: AsyncIterable[Any]) -> None:
        """Publish an agent's events through the transformer until it ends.

        An agent written as an async generator receives each permission
        decision as the value of its ``yield AgentPermissionRequest(...)``.
        Cancelled (an abort), it flushes pending deltas, then sends ``error``
        ("aborted") and ``complete``; if the agent raises, ``error`` with the
        message and ``complete`` are sent and the exception propagates.
        """
        self._check_running()
        _check_session_id(session_id)
        if not hasattr(events, "__aiter__"):
            raise InvalidArgument(f"events must be an async iterable, got {describe(events)}")
        iterator = aiter(events)
        asend = getattr(iterator, "asend", None)
        try:
            decision: PermissionDecision | None = None
            while True:
                try:
                    agent_event = await (asend(decision) if asend else anext(iterator))
                except StopAsyncIteration:
                    break
                decision = None
                for event in self.transformer.transform(session_id, agent_event):
                    # Checked as it arrives: a bad event ends the run like an agent's exception.
                    _check_session_event(session_id, event)
                    decision = await self._publish_agent_output(session_id, event) or decision
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._end_run(session_id, ABORTED)
            raise
        except Exception as exc:
            await self._end_run(session_id, str(exc) or type(exc).__name__)
            raise
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()

    async def _publish_agent_output(
        self, session_id: str, event: SessionEvent
    ) -> PermissionDecision | None:
        if type(event) is TextDelta:
            await self.queue_delta(session_id, event.delta, event.turn_id)
            return None
        if type(event) is PermissionRequest:
            request = event.request
            return await self.request_permission(
                session_id,
                request.tool_name,
                request.command,
                request.description,
                request_id=request.request_id,
            )
        await self.broadcast_to_session(session_id, event)
        return None

    async def _end_run(self, session_id: str, message: str) -> None:
        self.transformer.forget(session_id)
        if self._running:
            try:
                await self._publish_in_order(Error(session_id, message))
                await self._publish_in_order(Complete(session_id))
            except (HubClosed, BrokerUnavailable) as exc:
                logger.warning("could not report the end of %s's run: %s", session_id, exc)

    # -- publishing --------------------------------------------------------

    async def _publish_in_order(self, event: SessionEvent) -> None:
        ack = self._sequence_in_order(event)
        if ack is not None:
            await ack

    def _sequence_in_order(self, event: SessionEvent) -> Awaitable[None] | None:
        """The ordering barrier: a session's pending deltas go before any other event of it.

        Both are handed to the broker here, with no await between, so they are
        sequenced in this order whatever else runs; the broker's acknowledgement
        (if any) is returned for the caller to await.
        """
        body = encode(event)  # first: an event that cannot be encoded changes nothing
        batch = self._batcher.flush(event.session_id)
        if batch is not None:
            self._publish_batch(batch)
        try:
            return self.broker.publish(event.session_id, body, False)
        except SessionFanoutError:
            raise
        except Exception as exc:  # a bug: counted and logged, and the producer learns of it
            self._contain(event.session_id, "publishing an event", exc)
            raise

    def _publish_batch(self, batch: Batch) -> None:
        self._counters["batches"] += 1
        try:
            body = encode_delta(batch.session_id, batch.text, batch.turn_id)
            # Nobody waits for a batch; a backplane that fails it logs and counts it.
            self.broker.publish(batch.session_id, body, True)
        except BrokerUnavailable as exc:
            self._counters["lost_batches"] += 1
            logger.warning("delta batch for %s not published: %s", batch.session_id, exc)
        except Exception as exc:
            self._counters["lost_batches"] += 1
            self._contain(batch.session_id, "publishing a delta batch", exc)

    def _flush_all_deltas(self) -> None:
        for batch in self._batcher.flush_all():
            self._publish_batch(batch)

    # -- receiving from the broker ------------------------------------------

    def deliver(self, session_id: str, seq: int, text: str, is_delta: bool) -> None:
        """Receiver: enqueue a numbered session event for the session's subscribers."""
        try:
            # A copy: the overflow policy may drop a connection mid-loop.
            self._fan_out(tuple(self._registry.sinks_of(session_id)), text, session_id, is_delta)
        except Exception as exc:
            self._contain(session_id, "delivering an event", exc)

    def deliver_global(self, text: str) -> None:
        """Receiver: enqueue a global event for every connection."""
        try:
            self._fan_out(tuple(self._registry.sinks()), text)
        except Exception as exc:
            self._contain(None, "delivering a global event", exc)

    def resync(self, session_id: str) -> None:
        """Receiver: events were lost; ``subscribed`` with ``resumed: false`` tells
        each subscriber to reload the session and carry on from the new seq."""
        self._counters["resyncs"] += 1
        try:
            state = self._history.state(session_id, self._clock())
            text = encode(Subscribed(session_id, state.seq, state.epoch, False))
            self._fan_out(tuple(self._registry.sinks_of(session_id)), text)
        except Exception as exc:
            self._contain(session_id, "telling subscribers to reload", exc)

    def decided(self, request_id: str, decision: PermissionDecision) -> None:
        """Receiver: a permission request was decided."""
        self._permissions.resolve(request_id)
        waiter = self._waiters.get(request_id)
        if waiter is not None and waiter.decision is None:
            waiter.decision = decision
            waiter.event.set()

    # -- delivery ----------------------------------------------------------

    def _reply(self, connection: Connection, event: ServerEvent) -> None:
        self._fan_out((connection,), encode(event))

    def _fan_out(
        self,
        connections: Iterable[Connection],
        text: str,
        session_id: str | None = None,
        is_delta: bool = False,
    ) -> None:
        """Send ``text`` to each connection: straight to an idle sink that takes
        frames directly (no queue, no wake-up), else through its outbox. A
        session event is queued as one ``Frame`` shared by every outbox (the
        slow-consumer policy may merge its deltas); other frames as the text."""
        item: Queued | None = text if session_id is None else None
        for connection in connections:
            # Whatever goes wrong here is this connection's: it is closed, the loop goes on.
            try:
                try_send = connection.try_send
                if (
                    try_send is not None
                    and not connection.sending
                    and not connection.outbox
                    and try_send(text)
                ):
                    connection.frames_sent += 1
                    connection.bytes_sent += len(text)
                    continue
                if item is None:
                    assert session_id is not None
                    item = Frame(text, session_id, is_delta)
                self._queue(connection, item, len(text))
            except Exception as exc:
                self._broken(connection, exc)

    def _queue(self, connection: Connection, item: Queued, size: int) -> None:
        connection.enqueue(item, size)
        if connection.writer is None and not connection.sending:
            self._start_writer(connection)
        config = self.config
        if connection.over_limits(config.outbox_max_messages, config.outbox_max_bytes):
            self._handle_overflow(connection)

    def _broken(self, connection: Connection, exc: Exception) -> None:
        self._counters["closed_broken"] += 1
        logger.info("dropping connection %s: send failed: %r", connection.id, exc)
        self._close(connection, CLOSE_INTERNAL, "send failed")

    def _handle_overflow(self, connection: Connection) -> None:
        """The slow-consumer policy, applied when an outbox goes over its limits."""
        config = self.config
        if config.slow_consumer is SlowConsumerPolicy.COALESCE_THEN_CLOSE:
            outbox = connection.outbox
            merged = coalesce(outbox) if outbox else 0
            if merged and outbox:
                self._counters["coalesced"] += merged
                connection.queued_bytes = sum(len(text_of(i)) for i in outbox)
                if not connection.over_limits(config.outbox_max_messages, config.outbox_max_bytes):
                    return
        self._counters["closed_slow"] += 1
        logger.warning("closing slow connection %s: outbox over its limits", connection.id)
        self._close(connection, CLOSE_POLICY, "slow consumer: outbox limit exceeded")

    def _start_writer(self, connection: Connection) -> None:
        connection.sending = True
        connection.parked_at = 0.0
        self._writers += 1
        if self._writers == 1 and self._next_sweep < self._wake_at:
            self._wake_scheduler()  # it sweeps idle writers only while there are some
        if self._loop is None:
            self._check_tg().start_soon(self._shielded_writer, connection)
            return
        # On asyncio a writer is a plain task: a task-group task costs several
        # times more to start, and writers start in bursts (a batch flush that
        # finds many retired writers). Nothing outside cancels a plain task, so
        # it needs no shield; the hub ends it with cancel() and joins it in aclose().
        task = self._loop.create_task(self._writer(connection))
        connection.writer = task
        self._writer_tasks.add(task)
        task.add_done_callback(self._on_writer_done)

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        self._writers -= 1
        self._writer_tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:  # pragma: no cover
            self._contain(None, "a writer task", exc)

    async def _shielded_writer(self, connection: Connection) -> None:
        # Shielded from the surrounding scope so that a cancelled server still
        # drains what it accepted; the hub ends a writer by cancelling this scope.
        try:
            with anyio.CancelScope(shield=True) as scope:
                connection.writer = scope
                await self._writer(connection)
        except Exception as exc:  # a bug: this connection's, not the task group's
            self._contain(None, f"connection {connection.id}'s writer", exc)
        finally:
            self._writers -= 1

    async def _writer(self, connection: Connection) -> None:
        """Send from the outbox until the hub closes or the sweep retires this
        writer idle. One coroutine, not a loop in a helper: a parked writer is
        one frame, and a wake-up resumes one."""
        if not self._registry.is_connected(connection):
            return
        sink = connection.sink
        try:
            while True:
                outbox = connection.outbox
                if outbox:
                    text = text_of(outbox.popleft())
                    connection.queued_bytes -= len(text)
                    await sink.send(text)
                    connection.frames_sent += 1
                    connection.bytes_sent += len(text)
                    del text  # a waiting writer holds no frame
                    continue
                # Nothing to send: a waiting connection keeps no queue (a
                # deque is most of its size); the next frame makes one.
                outbox = connection.outbox = None
                connection.sending = False
                if connection.closing:
                    break
                if connection.parked_at < 0:  # the sweep retired this writer
                    connection.writer = None
                    return
                connection.parked_at = self._clock()
                wakeup = connection.wakeup = self._new_event()
                await wakeup.wait()
        except Exception as exc:
            self._broken(connection, exc)
            return
        await self._close_drained(connection)

    async def _close_drained(self, connection: Connection) -> None:
        """Hub shutdown, the outbox drained: close the sink, then forget it (in
        this order, so that aclose() returns once every drained sink is closed)."""
        await self._close_sink(connection.sink, CLOSE_GOING_AWAY, SHUTDOWN)
        self._forget(connection)

    def _retire_idle_writers(self, now: float) -> None:
        """End the writers parked for ``writer_idle_seconds``: an idle connection
        costs no task; the next frame that has to wait starts one again."""
        horizon = now - self.config.writer_idle_seconds
        for connection in self._registry.sinks():
            wakeup = connection.wakeup
            if wakeup is not None and 0 <= connection.parked_at <= horizon:
                connection.parked_at = -1.0
                connection.wakeup = None
                wakeup.set()

    def _wake_writer(self, connection: Connection) -> None:
        wakeup = connection.wakeup
        if wakeup is not None:
            connection.wakeup = None
            wakeup.set()
        elif connection.writer is None and not connection.sending:
            self._start_writer(connection)  # none running: it has nothing to drain, just closes

    def _close(self, connection: Connection, code: int, reason: str) -> None:
        """Forget the connection now and close its sink in the background."""
        if not self._forget(connection):
            return
        if self._tg is not None:
            self._tg.start_soon(self._close_sink, connection.sink, code, reason)

    async def _close_sink(self, sink: Sink, code: int, reason: str) -> None:
        with anyio.move_on_after(self.config.close_timeout, shield=True):
            try:
                await sink.close(code, reason)
            except Exception as exc:
                logger.debug("closing a sink failed: %r", exc)

    def _forget(self, connection: Connection) -> bool:
        """Remove every trace of the connection; False if it was already gone."""
        if not self._registry.is_connected(connection):
            return False
        sessions = list(self._registry.sessions_of(connection))
        for session_id in self._registry.drop(connection):
            self._history.release(session_id)
        for session_id in sessions:
            self.broker.unwatch(session_id)
        self._counters["dropped"] += connection.discard_outbox()
        self._counters["frames_sent"] += connection.frames_sent
        self._counters["bytes_sent"] += connection.bytes_sent
        connection.frames_sent = connection.bytes_sent = 0
        connection.closing = True
        if connection.writer is not None:
            connection.writer.cancel()
        if self._drained is not None and not self._registry.sink_count:
            self._drained.set()
        return True

    def _contain(self, session_id: str | None, work: str, exc: BaseException) -> None:
        """The containment rule: an unexpected error in the hub's work for one
        session is logged with the session id, counted (``session_faults``)
        and goes no further. The scheduler, the other sessions and every
        connection keep running; one session's fault never ends the task group.
        """
        self._counters["session_faults"] += 1
        logger.error(
            "%s failed for session %s; other sessions are not affected",
            work,
            session_id,
            exc_info=exc,
            extra={"session_id": session_id},
        )

    # -- deadlines ---------------------------------------------------------

    async def _scheduler(self) -> None:
        """The one task that drives every deadline of the hub."""
        while True:
            now = self._clock()
            try:
                await self._run_due(now)
            except Exception as exc:  # each step takes its work before doing it: no loop
                self._contain(None, "the scheduler's work", exc)
            deadlines: tuple[float | None, ...] = (
                self._batcher.next_deadline(),
                self._permissions.next_deadline(),
                self._history.next_deadline(),
            )
            if self._writers:
                deadlines += (self._next_sweep,)
            self._wake_at = min((d for d in deadlines if d is not None), default=math.inf)
            wakeup = self._wakeup = self._new_event()
            with anyio.move_on_after(self._wake_at - now):
                await wakeup.wait()

    def _wake_scheduler(self) -> None:
        self._wake_at = -math.inf
        if self._wakeup is not None:
            self._wakeup.set()

    async def _run_due(self, now: float) -> None:
        for batch in self._batcher.due(now):
            self._publish_batch(batch)
        for pending in self._permissions.expired(now):
            if not self._running:
                break
            await self._expire_permission(pending)
        for session_id in self._history.evict_idle(now, self._registry.has_subscribers):
            logger.debug("forgot idle session %s", session_id)
        if now >= self._next_sweep:
            self._retire_idle_writers(now)
            self._next_sweep = now + self.config.writer_idle_seconds

    # -- permissions -------------------------------------------------------

    async def _expire_permission(self, pending: PendingPermission) -> None:
        denial = PermissionDecision(pending.request_id, allowed=False, timed_out=True)
        try:
            if not await self.broker.expire_permission(pending.request_id):
                return  # answered elsewhere just in time; the decision is on its way
            self.decided(pending.request_id, denial)
            await self._publish_in_order(PermissionTimeout(pending.session_id, pending.request_id))
        except BrokerUnavailable as exc:
            logger.warning("permission %s timed out unannounced: %s", pending.request_id, exc)
        except Exception as exc:
            self._contain(pending.session_id, "timing out a permission request", exc)
        # The agent waiting for it is never left waiting: denied here at the latest.
        self.decided(pending.request_id, denial)

    async def _answer_permission(self, connection: Connection, message: PermissionResponse) -> None:
        decision = PermissionDecision(
            message.request_id, message.allowed, bool(message.always_allow)
        )
        subscribed = self._registry.sessions_of(connection)
        if not await self.broker.answer_permission(message.request_id, decision, subscribed):
            raise ProtocolError(
                "unknown_request",
                f"no pending permission request {message.request_id!r:.80} for this connection",
                PermissionResponse.TYPE,
            )

    def _end_permissions(self) -> None:
        for pending in self._permissions.close_all():
            self.decided(pending.request_id, PermissionDecision(pending.request_id, False))

    # -- introspection -----------------------------------------------------

    def statistics(self) -> HubStatistics:
        connections = tuple(
            ConnectionStatistics(c.id, c.queued, c.queued_bytes, c.frames_sent, c.bytes_sent)
            for c in self._registry.sinks()
        )
        counters = self._counters
        return HubStatistics(
            connections=self._registry.sink_count,
            subscriptions=self._registry.subscription_count,
            sessions=self._registry.session_count,
            known_sessions=len(self._history),
            pending_deltas=len(self._batcher),
            pending_permissions=len(self._permissions),
            writers=self._writers,
            frames_sent=counters["frames_sent"] + sum(c.frames_sent for c in connections),
            bytes_sent=counters["bytes_sent"] + sum(c.bytes_sent for c in connections),
            batches=counters["batches"],
            coalesced=counters["coalesced"],
            dropped=counters["dropped"],
            closed_slow=counters["closed_slow"],
            closed_broken=counters["closed_broken"],
            client_errors=counters["client_errors"],
            unknown_agent_events=self.transformer.unknown_events,
            lost_batches=counters["lost_batches"],
            resyncs=counters["resyncs"],
            session_faults=counters["session_faults"],
            broker=dict(self.broker.statistics()),
            outboxes=connections,
        )

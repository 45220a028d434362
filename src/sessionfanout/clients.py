"""The client side of a hub: connections, their frames, their subscriptions.

A client frame is decoded here and acted on: ``subscribe`` (asking the
``authorize`` hook, then replaying from the broker's history), ``unsubscribe``,
``permission_response`` and the application's own frame types. A bad frame
becomes a ``client_error`` reply and changes nothing (wsproto's rule: a
peer's bad input is a value, not a crash). The server's own ``subscribe``
and ``unsubscribe`` take the same paths, without the hook.
"""

from __future__ import annotations

import inspect
import logging
import secrets
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from typing import Any

from .agent import PermissionDecision
from .agent_runner import ABORTED
from .broker import Broker
from .checks import describe
from .codec import decode_client
from .config import AuthorizeHook, HubConfig, subscribers_may_abort
from .connection import Connection, Sink
from .delivery import Delivery
from .errors import InvalidArgument, ProtocolError, UnknownConnection
from .events import (
    Abort,
    ClientError,
    Connected,
    CustomFrame,
    PermissionResponse,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)
from .presence import PresenceKeeper
from .ratelimit import TokenBucket
from .registry import SubscriptionRegistry
from .stats import Counters

__all__ = ("CustomFrameHandler",)

logger = logging.getLogger("sessionfanout")

CustomFrameHandler = Callable[[Connection, CustomFrame], Awaitable[None]]
"""Handles an application-defined client frame; raise ``ProtocolError`` to refuse it."""

LOG_BURST = 5
LOG_RATE = 0.1
"""Records a second about one connection, after its first ``LOG_BURST``."""

PROTOCOL_FRAMES = frozenset({Subscribe.TYPE, Unsubscribe.TYPE, PermissionResponse.TYPE, Abort.TYPE})


async def _no_abort(session_id: str, reason: str) -> bool:
    return False


def check_connection(connection: object) -> Connection:
    if not isinstance(connection, Connection):
        raise InvalidArgument(f"connection must be a Connection, got {describe(connection)}")
    return connection


class Clients:
    """Connections and what their frames ask for."""

    def __init__(
        self,
        config: HubConfig,
        registry: SubscriptionRegistry[Connection],
        delivery: Delivery,
        broker: Broker,
        counters: Counters,
        presence: PresenceKeeper,
    ) -> None:
        self._config = config
        self._registry = registry
        self._delivery = delivery
        self._broker = broker
        self._counters = counters
        self._presence = presence
        self.custom: dict[str, CustomFrameHandler] = {}
        self.clock: Callable[[], float] = time.monotonic
        """The hub's clock, once it runs (for rate limits)."""
        self.abort: Callable[[str, str], Awaitable[bool]] = _no_abort
        """``Hub.abort``, once the hub runs."""

    def check_connected(self, connection: Connection) -> None:
        if not self._registry.is_connected(check_connection(connection)):
            raise UnknownConnection(f"{connection!r} is not connected to this hub")

    def register(self, frame_type: str, handler: CustomFrameHandler) -> None:
        if not isinstance(frame_type, str) or not frame_type:
            raise InvalidArgument("frame_type must be a non-empty string")
        if frame_type in PROTOCOL_FRAMES:
            raise InvalidArgument(f"{frame_type!r} is a protocol frame type")
        if not callable(handler):
            raise InvalidArgument(f"handler must be callable, got {describe(handler)}")
        self.custom[frame_type] = handler

    def connect(self, sink: Sink, context: Any) -> Connection:
        for method in ("send", "close"):
            if not callable(getattr(sink, method, None)):
                raise InvalidArgument(f"sink must have an async {method}(), got {describe(sink)}")
        try_send = getattr(sink, "try_send", None)
        if try_send is not None and not callable(try_send):
            raise InvalidArgument(f"sink.try_send must be callable, got {describe(try_send)}")
        connection = Connection(secrets.token_urlsafe(9), sink, context)
        connection.presence_info = self._presence.info_of(connection)
        config = self._config
        if config.client_rate is not None:
            connection.rate = TokenBucket(config.client_rate, config.client_burst, self.clock())
        self._registry.connect(connection)
        self._delivery.reply(connection, Connected(int(time.time() * 1000), connection.id))
        return connection

    async def serve(self, connection: Connection, incoming: AsyncIterable[str | bytes]) -> None:
        try:
            async for raw in incoming:
                if not self._registry.is_connected(connection):
                    break
                await self.handle(connection, raw)
        finally:
            self._delivery.forget(connection)

    async def handle(self, connection: Connection, raw: str | bytes) -> None:
        """Act on one client frame; a bad one is answered with ``client_error``.
        ``raw`` that is not text or bytes is the adapter's mistake."""
        if not isinstance(raw, str | bytes | bytearray):
            raise InvalidArgument(f"raw must be str or bytes, got {describe(raw)}")
        try:
            if connection.rate is not None and not connection.rate.take(self.clock()):
                raise ProtocolError("rate_limited", "too many frames; slow down")
            message = decode_client(
                raw, max_bytes=self._config.max_frame_bytes, custom_types=self.custom
            )
            if type(message) is Subscribe:
                await self.subscribe(connection, message, authorize=True)
            elif type(message) is Unsubscribe:
                self.end_subscription(connection, message.session_id)
                self._delivery.reply(connection, Unsubscribed(message.session_id))
            elif type(message) is PermissionResponse:
                await self.answer(connection, message)
            elif type(message) is Abort:
                await self._abort(connection, message.session_id)
            else:
                assert isinstance(message, CustomFrame)
                await self.custom[message.type](connection, message)
        except ProtocolError as exc:
            counters = self._counters
            counters.client_errors += 1
            by_code = counters.client_errors_by_code
            by_code[exc.code] = by_code.get(exc.code, 0) + 1
            if self._registry.is_connected(connection):
                reply = ClientError(exc.code, exc.message, exc.request_type)
                self._delivery.reply(connection, reply)

    async def subscribe(
        self, connection: Connection, message: Subscribe, *, authorize: bool
    ) -> Subscribed | None:
        """Subscribe with replay; None when the connection went away meanwhile.
        A subscribe the ``authorize`` hook refuses also ends an existing
        subscription to that session: access withdrawn takes effect at once."""
        session_id = message.session_id
        if message.from_ is not None and message.last_seq is not None:
            raise ProtocolError(
                "invalid_message", "fields 'from' and 'lastSeq' exclude each other", Subscribe.TYPE
            )
        if authorize and not await self._authorized(connection, session_id):
            if self.end_subscription(connection, session_id):
                self._delivery.reply(connection, Unsubscribed(session_id, "forbidden"))
            raise ProtocolError(
                "forbidden", f"not allowed to subscribe to {session_id!r:.80}", Subscribe.TYPE
            )
        registry = self._registry
        if not registry.is_subscribed(connection, session_id):
            await self._broker.watch(session_id)
            if not registry.is_connected(connection) or registry.is_subscribed(
                connection, session_id
            ):
                self._broker.unwatch(session_id)  # went away, or subscribed meanwhile
        if not registry.is_connected(connection):
            return None
        # No await until the replay is queued: replay and live events cannot interleave.
        state = self._broker.state(session_id)
        replay: Sequence[str] | None = None
        if message.from_ == "start":  # a late joiner: all the history holds
            replay = self._broker.replay(session_id, state.first_kept - 1, state.epoch) or ()
            resumed, first_seq = state.first_kept == 1, state.first_kept
        elif message.last_seq is not None:
            replay = self._broker.replay(session_id, message.last_seq, message.epoch)
            resumed, first_seq = replay is not None, message.last_seq + 1
        else:
            resumed = False
        joins = not registry.is_subscribed(connection, session_id)
        registry.subscribe(connection, session_id)
        first = first_seq if replay else None
        subscribed = Subscribed(session_id, state.seq, state.epoch, resumed, first)
        self._delivery.reply(connection, subscribed)
        for text in replay or ():
            self._delivery.fan_out((connection,), text, session_id)
        watches = bool(message.presence)
        await self._presence.subscribed(connection, session_id, joins=joins, watches=watches)
        return subscribed

    def end_subscription(self, connection: Connection, session_id: str) -> bool:
        """Unsubscribe; False when the connection was not subscribed."""
        if not self._registry.is_subscribed(connection, session_id):
            return False
        self._registry.unsubscribe(connection, session_id)
        self.subscription_ended(connection, session_id)
        return True

    def subscription_ended(self, connection: Connection, session_id: str) -> None:
        """A subscription ended (by ``end_subscription``, or with its connection)."""
        self._broker.unwatch(session_id)
        self._presence.left(connection, session_id)

    def _may_log(self, connection: Connection) -> bool:
        """A connection may cause a few log records, then one every so often: a
        client that floods the server does not flood its log. The rest are
        counted (``suppressed_logs``)."""
        now = self.clock()
        if connection.log_budget is None:
            connection.log_budget = TokenBucket(LOG_RATE, LOG_BURST, now)
        if connection.log_budget.take(now):
            return True
        self._counters.suppressed_logs += 1
        return False

    async def _abort(self, connection: Connection, session_id: str) -> None:
        hook = self._config.may_abort
        if hook is subscribers_may_abort:
            allowed = self._registry.is_subscribed(connection, session_id)
        else:
            allowed = hook is not None and await self._asks(hook, connection, session_id)
        if not allowed:
            raise ProtocolError(
                "forbidden", f"not allowed to stop the agent of {session_id!r:.80}", Abort.TYPE
            )
        await self.abort(session_id, ABORTED)

    async def _authorized(self, connection: Connection, session_id: str) -> bool:
        hook = self._config.authorize
        if hook is None:
            return True
        return await self._asks(hook, connection, session_id)

    async def _asks(self, hook: AuthorizeHook, connection: Connection, session_id: str) -> bool:
        """What a hook says; a hook that fails says no (and is logged)."""
        try:
            verdict = hook(connection, session_id)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception:
            if self._may_log(connection):
                logger.exception(
                    "a hook failed; refusing %r",
                    session_id,
                    extra={"session_id": session_id, "connection_id": connection.id},
                )
            return False
        return verdict is True

    async def answer(self, connection: Connection, message: PermissionResponse) -> None:
        """The first valid answer decides; any other raises ``unknown_request``."""
        decision = PermissionDecision(
            message.request_id, message.allowed, bool(message.always_allow)
        )
        subscribed = self._registry.sessions_of(connection)
        if not await self._broker.answer_permission(message.request_id, decision, subscribed):
            raise ProtocolError(
                "unknown_request",
                f"no pending permission request {message.request_id!r:.80} for this connection",
                PermissionResponse.TYPE,
            )

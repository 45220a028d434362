"""The backplane seam: who numbers a session's events, keeps their history, carries them.

A ``Broker`` owns every session's sequence and history: the hub hands it
events to publish, asks it for a session's state and replay, and gets
deliveries back through its ``Receiver``. The hub never keeps a history of
its own. ``LocalBroker``, the embedded default, numbers and delivers in this
process before ``publish`` returns. A backplane such as ``RedisBroker``
numbers events in a shared store and delivers them when they come back from
it, to every process, in the same order.

Rules every broker keeps:

1. ``publish`` calls are sequenced in the order they are made (the hub's
   ordering barrier relies on it), and every process delivers a session's
   events in seq order with no gap and no duplicate; when it cannot, it calls
   ``Receiver.resync`` so that clients are told to reload.
2. ``state`` and ``replay`` answer from what this process has delivered:
   a subscriber is told the seq of the last event it will not get live, and
   replayed exactly the events after the seq it names.
3. A permission request is decided exactly once, by the first valid answer
   or by its timeout, wherever the answer arrives.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence, Set
from typing import Any, Protocol

import anyio
import anyio.abc
import attrs

from .agent import PermissionDecision
from .history import History, HistoryLimits, SessionState
from .permissions import PendingPermissions

__all__ = ("Broker", "BrokerContext", "LocalBroker", "Receiver")

JsonObject = dict[str, Any]


class Receiver(Protocol):
    """What a broker calls back into (the hub gives it one)."""

    def deliver(self, session_id: str, seq: int, text: str, *, is_delta: bool) -> None:
        """A session event, numbered (``text`` has its seq), to the local subscribers."""

    def deliver_global(self, text: str) -> None:
        """A global event to every local connection."""

    def resync(self, session_id: str) -> None:
        """Events of the session were lost; tell its subscribers to reload
        (the hub asks ``Broker.state`` for the seq they resume from)."""

    def decided(self, request_id: str, decision: PermissionDecision) -> None:
        """A permission request was decided (here or in another process)."""

    def abort(self, session_id: str, reason: str) -> bool:
        """Another process asks to stop the session's agent if it runs here."""

    def remote_members_changed(self, session_id: str) -> None:
        """Another process's subscribers of the session changed (presence)."""


@attrs.frozen
class BrokerContext:
    """What the hub hands a broker in ``Broker.start``."""

    receiver: Receiver
    permissions: PendingPermissions
    """The hub's pending permission requests (the hub owns them)."""
    task_group: anyio.abc.TaskGroup
    clock: Callable[[], float] = anyio.current_time
    """The hub's clock (the backend's, looked up once)."""
    history_limits: HistoryLimits = attrs.field(factory=HistoryLimits)
    """How much history to keep per session, and how long an idle one lives."""


class Broker(Protocol):
    """A backplane; see the module docstring for the rules it keeps."""

    @property
    def available(self) -> bool:
        """False while publishing would fail (the backplane cannot be reached)."""

    def available_for(self, session_id: str) -> bool:
        """False while publishing the session's events would fail: the
        backplane, or the part of it that holds the session, is unreachable."""

    async def start(self, context: BrokerContext) -> None: ...

    async def flush(self) -> None:
        """Wait until everything published so far is delivered (or failed)."""

    async def aclose(self) -> None: ...

    def publish(self, session_id: str, body: str, *, is_delta: bool) -> Awaitable[None] | None:
        """Sequence a session event (``body`` is encoded without seq), in call order.

        Returns None when the event is already sequenced and delivered, or an
        awaitable that completes when it is; either may raise
        ``BrokerUnavailable``.
        """

    def publish_global(self, text: str) -> Awaitable[None] | None: ...

    async def watch(self, session_id: str) -> None:
        """A local connection is about to subscribe: deliver the session's events
        here from now on, and have its history at hand for ``replay``."""

    def unwatch(self, session_id: str) -> None:
        """A local subscription to the session ended (one call per ``watch``)."""

    def state(self, session_id: str) -> SessionState:
        """The session's epoch and the seq of its last delivered event; a
        session never seen starts (with a new epoch, seq 0)."""

    def replay(self, session_id: str, last_seq: int, epoch: str | None) -> Sequence[str] | None:
        """Every kept frame after ``last_seq``, or None when that cannot be
        complete (other epoch, or the history no longer reaches back)."""

    def next_deadline(self) -> float | None:
        """When ``run_due`` next has work (forgetting idle sessions), if ever."""

    def run_due(self, now: float) -> None: ...

    def known_sessions(self) -> int:
        """Sessions with a sequence and history in this process."""

    async def open_permission(self, request_id: str, session_id: str, ttl: float) -> None: ...

    async def answer_permission(
        self, request_id: str, decision: PermissionDecision, subscribed: Set[str]
    ) -> bool:
        """Decide the request if it is pending and its session is in
        ``subscribed``; True when this answer decided it."""

    async def expire_permission(self, request_id: str) -> bool:
        """The request's local deadline passed: True when the timeout decides it."""

    async def run_started(self, session_id: str) -> None:
        """An agent for the session started running here (one call per run)."""

    async def run_ended(self, session_id: str) -> None:
        """An agent for the session stopped running here."""

    async def is_running(self, session_id: str) -> bool:
        """Whether an agent runs for the session in another process."""

    async def abort(self, session_id: str, reason: str) -> bool:
        """Ask the processes running the session's agent to stop it (through
        their ``Receiver.abort``); False when none runs it."""

    def share_member(
        self, session_id: str, connection_id: str, info: JsonObject | None, *, present: bool
    ) -> None:
        """A local subscription began (``present``) or ended: tell the other
        processes, soon and in batches (their ``Receiver.remote_members_changed``)."""

    async def remote_members(self, session_id: str) -> Mapping[str, JsonObject | None]:
        """The session's subscribers on other live processes: connection id ->
        info. A process that dies drops out after a while by itself."""

    def statistics(self) -> Mapping[str, int]: ...


def _not_started(*args: object, **kwargs: object) -> None:
    raise AssertionError("LocalBroker used before start()")


class LocalBroker:
    """One process, no server: numbering and delivery happen in ``publish``."""

    def __init__(self) -> None:
        self._context: BrokerContext | None = None
        self._history = History()
        self._watching: dict[str, int] = {}
        self._clock: Callable[[], float] = anyio.current_time
        self._deliver: Callable[..., None] = _not_started

    @property
    def available(self) -> bool:
        return True

    def available_for(self, session_id: str) -> bool:
        return True

    async def start(self, context: BrokerContext) -> None:
        self._context = context
        self._history = History.with_limits(context.history_limits)
        self._clock = context.clock
        self._deliver = context.receiver.deliver

    async def flush(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def _ctx(self) -> BrokerContext:
        assert self._context is not None, "LocalBroker used before start()"
        return self._context

    def publish(self, session_id: str, body: str, *, is_delta: bool) -> None:
        seq, text = self._history.append(session_id, body, self._clock(), is_delta)
        self._deliver(session_id, seq, text, is_delta=is_delta)

    def publish_global(self, text: str) -> None:
        self._ctx().receiver.deliver_global(text)

    async def watch(self, session_id: str) -> None:
        self._watching[session_id] = self._watching.get(session_id, 0) + 1

    def unwatch(self, session_id: str) -> None:
        count = self._watching.pop(session_id, 0) - 1
        if count > 0:
            self._watching[session_id] = count
        else:
            self._history.release(session_id)

    def state(self, session_id: str) -> SessionState:
        return self._history.state(session_id, self._clock())

    def replay(self, session_id: str, last_seq: int, epoch: str | None) -> Sequence[str] | None:
        return self._history.replay(session_id, last_seq, epoch)

    def next_deadline(self) -> float | None:
        return self._history.next_deadline()

    def run_due(self, now: float) -> None:
        self._history.evict_idle(now, self._watching.__contains__)

    def known_sessions(self) -> int:
        return len(self._history)

    async def open_permission(self, request_id: str, session_id: str, ttl: float) -> None:
        pass

    async def answer_permission(
        self, request_id: str, decision: PermissionDecision, subscribed: Set[str]
    ) -> bool:
        context = self._ctx()
        if context.permissions.answer(request_id, subscribed) is None:
            return False
        context.receiver.decided(request_id, decision)
        return True

    async def expire_permission(self, request_id: str) -> bool:
        # The hub's table already removed it: the timeout decides.
        return True

    async def run_started(self, session_id: str) -> None:
        pass

    async def run_ended(self, session_id: str) -> None:
        pass

    async def is_running(self, session_id: str) -> bool:
        return False  # one process: the hub knows its own runs

    async def abort(self, session_id: str, reason: str) -> bool:
        return False

    def share_member(
        self, session_id: str, connection_id: str, info: JsonObject | None, *, present: bool
    ) -> None:
        pass  # one process: the hub knows its own subscribers

    async def remote_members(self, session_id: str) -> Mapping[str, JsonObject | None]:
        return {}

    def statistics(self) -> Mapping[str, int]:
        return {}

"""The backplane seam: who assigns sequence numbers and carries events between processes.

A ``Broker`` takes the hub's publications and hands deliveries back through
the hub's ``Receiver`` interface. ``LocalBroker``, the embedded default, does
both at once in this process: it numbers the event in the hub's ``History``
and delivers it before ``publish`` returns. A backplane such as
``RedisBroker`` numbers events in a shared store and delivers them when they
come back from it, to every process, in the same order.

Rules every broker keeps:

1. ``publish`` calls are sequenced in the order they are made (the hub's
   ordering barrier relies on it), and every process delivers a session's
   events in seq order with no gap and no duplicate; when it cannot, it calls
   ``Receiver.resync`` so that clients are told to reload.
2. A permission request is decided exactly once, by the first valid answer
   or by its timeout, wherever the answer arrives.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Set
from typing import NoReturn, Protocol

import anyio
import anyio.abc
import attrs

from .agent import PermissionDecision
from .history import History
from .permissions import PermissionBroker

__all__ = ("Broker", "BrokerContext", "LocalBroker", "Receiver")


class Receiver(Protocol):
    """What a broker calls back into (the hub implements it)."""

    def deliver(self, session_id: str, seq: int, text: str, is_delta: bool) -> None:
        """A session event, numbered, to the session's local subscribers."""

    def deliver_global(self, text: str) -> None:
        """A global event to every local connection."""

    def resync(self, session_id: str) -> None:
        """Events of the session were lost; tell its subscribers to reload."""

    def decided(self, request_id: str, decision: PermissionDecision) -> None:
        """A permission request was decided (here or in another process)."""


@attrs.frozen
class BrokerContext:
    """The hub's pieces a broker works with, handed over by ``Broker.start``."""

    receiver: Receiver
    history: History
    permissions: PermissionBroker
    task_group: anyio.abc.TaskGroup
    clock: Callable[[], float] = anyio.current_time
    """The hub's clock (the backend's, looked up once)."""


class Broker(Protocol):
    """A backplane; see the module docstring for the rules it keeps."""

    @property
    def available(self) -> bool:
        """False while the backplane cannot be reached (publishing would fail)."""

    async def start(self, context: BrokerContext) -> None: ...

    async def flush(self) -> None:
        """Wait until everything published so far is delivered (or failed)."""

    async def aclose(self) -> None: ...

    def publish(self, session_id: str, body: str, is_delta: bool) -> Awaitable[None] | None:
        """Sequence a session event (``body`` is encoded without seq), in call order.

        Returns None when the event is already sequenced and delivered, or an
        awaitable that completes when it is; either may raise
        ``BrokerUnavailable``.
        """

    def publish_global(self, text: str) -> Awaitable[None] | None: ...

    async def watch(self, session_id: str) -> None:
        """A local connection is about to subscribe: receive the session's events
        from now on, and have its history in the hub's ``History`` for resume."""

    def unwatch(self, session_id: str) -> None:
        """A local subscription to the session ended (one call per ``watch``)."""

    async def open_permission(self, request_id: str, session_id: str, ttl: float) -> None: ...

    async def answer_permission(
        self, request_id: str, decision: PermissionDecision, subscribed: Set[str]
    ) -> bool:
        """Decide the request if it is pending and its session is in
        ``subscribed``; True when this answer decided it."""

    async def expire_permission(self, request_id: str) -> bool:
        """The request's local deadline passed: True when the timeout decides it."""

    def statistics(self) -> Mapping[str, int]: ...


def _not_started(*args: object) -> NoReturn:
    raise AssertionError("LocalBroker used before start()")


class LocalBroker:
    """One process, no server: numbering and delivery happen in ``publish``."""

    def __init__(self) -> None:
        self._context: BrokerContext | None = None
        self._append: Callable[[str, str, float], tuple[int, str]] = _not_started
        self._deliver: Callable[[str, int, str, bool], None] = _not_started
        self._clock: Callable[[], float] = anyio.current_time

    @property
    def available(self) -> bool:
        return True

    async def start(self, context: BrokerContext) -> None:
        self._context = context
        # Bound once: publish runs for every event and every batch.
        self._append = context.history.append
        self._deliver = context.receiver.deliver
        self._clock = context.clock

    async def flush(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def _ctx(self) -> BrokerContext:
        assert self._context is not None, "LocalBroker used before start()"
        return self._context

    def publish(self, session_id: str, body: str, is_delta: bool) -> None:
        seq, text = self._append(session_id, body, self._clock())
        self._deliver(session_id, seq, text, is_delta)

    def publish_global(self, text: str) -> None:
        self._ctx().receiver.deliver_global(text)

    async def watch(self, session_id: str) -> None:
        pass

    def unwatch(self, session_id: str) -> None:
        pass

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
        # The hub's PermissionBroker already removed it: the timeout decides.
        return True

    def statistics(self) -> Mapping[str, int]:
        return {}

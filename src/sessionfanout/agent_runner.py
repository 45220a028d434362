"""Running an agent: its events through the transformer into the producer API.

``run`` is what ``Hub.run_agent`` does; it uses only the hub's public
producer calls (``queue_delta``, ``broadcast_to_session``,
``request_permission``), so an agent's events are checked like any
producer's. How a run ends is decided here: an agent that finishes ends it; one that raises,
or yields an event that is refused, gets ``error`` (the message) and
``complete`` sent to its session and the exception re-raised; a cancelled one
(an abort) gets its pending deltas flushed, then ``error`` ("aborted") and
``complete``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from .agent import PermissionDecision
from .checks import MAX_ID_LENGTH, check_id
from .errors import BrokerUnavailable, HubClosed, InvalidArgument, SessionMismatch
from .events import (
    SESSION_EVENT_TYPES,
    Complete,
    Error,
    PermissionRequest,
    SessionEvent,
    TextDelta,
)
from .transformer import EventTransformer

if TYPE_CHECKING:
    from .broker import Broker
    from .hub import Hub

__all__ = ()

logger = logging.getLogger("sessionfanout")

ABORTED = "aborted"


def check_session_event(session_id: object, event: object) -> SessionEvent:
    """A session event a producer may publish: for a valid ``session_id``, of a
    session event class, for that session, and not yet numbered (the hub
    assigns ``seq``). One call per event: the common case is tested inline."""
    if type(session_id) is not str or not 0 < len(session_id) <= MAX_ID_LENGTH:
        check_id("session_id", session_id)
    if type(event) not in SESSION_EVENT_TYPES:
        raise InvalidArgument(f"event must be a session event, got {type(event).__name__}")
    if TYPE_CHECKING:  # narrowing for the type checker; the line above checked it
        assert isinstance(event, SessionEvent)
    if event.session_id != session_id:
        raise SessionMismatch(
            f"event for session {event.session_id!r:.80} passed for session {session_id!r:.80}"
        )
    if event.seq is not None or getattr(event, "first_seq", None) is not None:
        raise InvalidArgument("seq and firstSeq are assigned by the hub; leave them None")
    return event


@attrs.define(eq=False)
class Run:
    """One running agent: its cancel scope, and why it was aborted."""

    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    reason: str = ABORTED


class Runs:
    """The agents running in this process, by session, for ``Hub.abort``; the
    broker is told of each, so that other processes can find and stop it."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._by_session: dict[str, set[Run]] = {}

    async def run(
        self,
        hub: Hub,
        transformer: EventTransformer,
        session_id: str,
        events: AsyncIterable[Any],
    ) -> None:
        """``run`` the agent, known as running here until it ends."""
        current = Run()
        self._by_session.setdefault(session_id, set()).add(current)
        try:
            await self._broker.run_started(session_id)
            with current.scope:  # abort cancels it: the run ends, its caller goes on
                await run(hub, transformer, session_id, events, lambda: current.reason)
        finally:
            runs = self._by_session[session_id]
            runs.discard(current)
            if not runs:
                del self._by_session[session_id]
            with anyio.CancelScope(shield=True):
                await self._broker.run_ended(session_id)

    def abort(self, session_id: str, reason: str) -> bool:
        """Cancel the session's runs here; False when none runs here."""
        runs = self._by_session.get(session_id, set())
        for run in runs:
            run.reason = reason
            run.scope.cancel()
        return bool(runs)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._by_session

    def sessions(self) -> frozenset[str]:
        return frozenset(self._by_session)


async def run(
    hub: Hub,
    transformer: EventTransformer,
    session_id: str,
    events: AsyncIterable[Any],
    aborted: Callable[[], str] = lambda: ABORTED,
) -> None:
    iterator = aiter(events)
    asend: Callable[[Any], Awaitable[Any]] | None = getattr(iterator, "asend", None)
    try:
        decision: PermissionDecision | None = None
        while True:
            try:
                agent_event = await (asend(decision) if asend else anext(iterator))
            except StopAsyncIteration:
                break
            decision = None
            for event in transformer.transform(session_id, agent_event):
                # Checked as it arrives: a bad event ends the run like an agent's exception.
                check_session_event(session_id, event)
                decision = await _publish(hub, session_id, event) or decision
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            await _end(hub, transformer, session_id, aborted())
        raise
    except Exception as exc:
        await _end(hub, transformer, session_id, str(exc) or type(exc).__name__)
        raise
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            with anyio.CancelScope(shield=True):
                await aclose()


async def _publish(hub: Hub, session_id: str, event: SessionEvent) -> PermissionDecision | None:
    if type(event) is TextDelta:
        await hub.queue_delta(session_id, event.delta, event.turn_id)
        return None
    if type(event) is PermissionRequest:
        request = event.request
        return await hub.request_permission(
            session_id,
            request.tool_name,
            request.command,
            request.description,
            request_id=request.request_id,
        )
    await hub.broadcast_to_session(session_id, event)
    return None


async def _end(hub: Hub, transformer: EventTransformer, session_id: str, message: str) -> None:
    transformer.forget(session_id)
    if hub.running:
        try:
            await hub.broadcast_to_session(session_id, Error(session_id, message))
            await hub.broadcast_to_session(session_id, Complete(session_id))
        except (HubClosed, BrokerUnavailable) as exc:
            logger.warning(
                "could not report the end of %s's run: %s",
                session_id,
                exc,
                extra={"session_id": session_id},
            )

"""Permission requests in flight: the agent's side of the round trip.

``ask`` opens a request (in ``PendingPermissions``, the sans-IO table, and
with the broker, so that any process may answer it), publishes
``permission_request`` and waits for the decision: the first valid answer
(``decided``, from the broker's receiver) or the timeout (``expire``, driven
by the hub's scheduler). Whatever happens, the waiting agent gets a decision.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
import attrs

from .agent import PermissionDecision
from .broker import Broker
from .checks import check_id, check_text
from .errors import BrokerUnavailable
from .events import PermissionRequest, PermissionRequestInfo, PermissionTimeout, SessionEvent
from .permissions import PendingPermission, PendingPermissions

__all__ = ()


logger = logging.getLogger("sessionfanout")

Publish = Callable[[SessionEvent], Awaitable[None]]


class Contain(Protocol):
    """The hub's containment rule (``hub.Containment``): log, count, go on."""

    def __call__(
        self,
        session_id: str | None,
        work: str,
        exc: BaseException,
        connection_id: str | None = None,
    ) -> None: ...


@attrs.define
class _Waiter:
    event: anyio.Event = attrs.field(factory=anyio.Event)
    decision: PermissionDecision | None = None


class Approvals:
    """Open permission requests and the agents waiting on them."""

    def __init__(self, broker: Broker, publish: Publish, contain: Contain) -> None:
        self.table = PendingPermissions()
        self._broker = broker
        self._publish = publish
        self._contain = contain
        self._waiters: dict[str, _Waiter] = {}

    def open(
        self,
        session_id: str,
        tool_name: str,
        command: str,
        description: str,
        request_id: str | None,
        now: float,
        timeout: float,
    ) -> tuple[PendingPermission, PermissionRequestInfo]:
        """Check the request's arguments and open it; ``ask`` announces it."""
        for name, value in (
            ("tool_name", tool_name),
            ("command", command),
            ("description", description),
        ):
            check_text(name, value)
        if request_id is not None:
            check_id("request_id", request_id)
        pending = self.table.open(session_id, now, timeout, request_id)
        info = PermissionRequestInfo(pending.request_id, tool_name, command, description)
        return pending, info

    async def ask(
        self,
        pending: PendingPermission,
        info: PermissionRequestInfo,
        now: float,
    ) -> PermissionDecision:
        """Announce an opened request and wait for its decision."""
        waiter = self._waiters[pending.request_id] = _Waiter()
        try:
            await self._broker.open_permission(
                pending.request_id, pending.session_id, pending.deadline - now
            )
            await self._publish(PermissionRequest(pending.session_id, info))
            await waiter.event.wait()
        finally:
            del self._waiters[pending.request_id]
            self.table.resolve(pending.request_id)
        assert waiter.decision is not None
        return waiter.decision

    def decided(self, request_id: str, decision: PermissionDecision) -> None:
        """The first decision of a request counts; later ones change nothing."""
        self.table.resolve(request_id)
        waiter = self._waiters.get(request_id)
        if waiter is not None and waiter.decision is None:
            waiter.decision = decision
            waiter.event.set()

    async def expire(self, pending: PendingPermission) -> None:
        """Its deadline passed: deny it, and announce that unless it was
        answered elsewhere just in time (then the decision is on its way)."""
        denial = PermissionDecision(pending.request_id, allowed=False, timed_out=True)
        try:
            if not await self._broker.expire_permission(pending.request_id):
                return
            self.decided(pending.request_id, denial)
            await self._publish(PermissionTimeout(pending.session_id, pending.request_id))
        except BrokerUnavailable as exc:
            logger.warning(
                "permission %s timed out unannounced: %s",
                pending.request_id,
                exc,
                extra={"session_id": pending.session_id},
            )
        except Exception as exc:
            self._contain(pending.session_id, "timing out a permission request", exc)
        # The agent waiting for it is never left waiting: denied here at the latest.
        self.decided(pending.request_id, denial)

    def close_all(self) -> None:
        """The hub is closing: every open request is denied."""
        for pending in self.table.close_all():
            self.decided(pending.request_id, PermissionDecision(pending.request_id, False))

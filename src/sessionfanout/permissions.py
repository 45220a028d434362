"""Pending permission requests, who may answer them, and their timeouts; sans-IO.

The first answer from a connection subscribed to the request's session
decides; any other answer (unknown id, already decided, timed out, or from a
connection not subscribed to that session) is refused without changing
anything. A request nobody answers in time is denied.
"""

from __future__ import annotations

import heapq
import secrets
import warnings
from collections.abc import Set

import attrs

from .errors import InvalidArgument

__all__ = ("PendingPermission", "PendingPermissions", "PermissionBroker")


@attrs.frozen
class PendingPermission:
    request_id: str
    session_id: str
    deadline: float


class PendingPermissions:
    """Open requests by id, with one heap of deadlines for all of them."""

    def __init__(self) -> None:
        self._pending: dict[str, PendingPermission] = {}
        self._deadlines: list[tuple[float, str]] = []

    @staticmethod
    def new_request_id() -> str:
        """128 random bits: unguessable, so only a client that saw the request can answer."""
        return secrets.token_urlsafe(16)

    def open(
        self, session_id: str, now: float, timeout: float, request_id: str | None = None
    ) -> PendingPermission:
        if not timeout > 0:
            raise InvalidArgument(f"timeout must be > 0, got {timeout!r}")
        request_id = request_id or self.new_request_id()
        if request_id in self._pending:
            raise InvalidArgument(f"permission request {request_id!r} is already pending")
        pending = PendingPermission(request_id, session_id, now + timeout)
        self._pending[request_id] = pending
        heapq.heappush(self._deadlines, (pending.deadline, request_id))
        return pending

    def answer(self, request_id: str, subscribed: Set[str]) -> PendingPermission | None:
        """Decide the request if the answering connection (subscribed to
        ``subscribed``) may; return it, or None when the answer is refused."""
        pending = self._pending.get(request_id)
        if pending is None or pending.session_id not in subscribed:
            return None
        return self.resolve(request_id)

    def resolve(self, request_id: str) -> PendingPermission | None:
        """End the request without asking who answers (cancellation, shutdown)."""
        return self._pending.pop(request_id, None)

    def expired(self, now: float) -> list[PendingPermission]:
        """Requests whose deadline is ``<= now``; they are no longer pending."""
        out: list[PendingPermission] = []
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, request_id = heapq.heappop(deadlines)
            pending = self._pending.get(request_id)
            if pending is not None and pending.deadline <= now:
                del self._pending[request_id]
                out.append(pending)
        return out

    def next_deadline(self) -> float | None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][1] not in self._pending:
            heapq.heappop(deadlines)
        return deadlines[0][0] if deadlines else None

    def close_all(self) -> list[PendingPermission]:
        out = list(self._pending.values())
        self._pending.clear()
        self._deadlines.clear()
        return out

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._pending

    def __len__(self) -> int:
        return len(self._pending)


class PermissionBroker(PendingPermissions):
    """Deprecated: the old name of ``PendingPermissions`` (it is not a ``Broker``)."""

    def __init__(self) -> None:
        warnings.warn(
            "PermissionBroker is now PendingPermissions", DeprecationWarning, stacklevel=2
        )
        super().__init__()

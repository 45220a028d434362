"""Permission requests across processes.

A request is a key holding its session id. An answer arriving at any
process is checked (is the answering connection subscribed to that
session?) and claimed by one script, which marks the key decided and publishes the
decision to every process: the first valid answer decides, exactly once,
wherever it arrives. The timeout claims the key the same way (``DEL``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Set

from ..agent import PermissionDecision
from ..envelope import Signer
from ..errors import BrokerUnavailable
from .scripts import CONNECTION_ERRORS, Client, Names, Scripts

__all__ = ()

logger = logging.getLogger("sessionfanout.redis")

CLAIM_MARGIN_MS = 60_000
"""A request's key outlives its deadline by this much: the timeout claims it."""


class Permissions:
    def __init__(
        self,
        client: Client,
        scripts: Scripts,
        names: Names,
        signer: Signer,
        decided: Callable[[str], None],
    ) -> None:
        self._client = client
        self._scripts = scripts
        self._names = names
        self._signer = signer
        self._decided = decided
        """Takes a signed decision, as published (``Listener.on_decision``)."""

    async def open(self, request_id: str, session_id: str, ttl: float) -> None:
        key = self._names.permission_key(request_id)
        try:
            await self._client.set(key, f"p|{session_id}", px=int(ttl * 1000) + CLAIM_MARGIN_MS)
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot open the permission request: {exc}") from exc

    async def answer(
        self, request_id: str, decision: PermissionDecision, subscribed: Set[str]
    ) -> bool:
        if not subscribed:
            return False
        body = json.dumps(
            {"r": request_id, "a": decision.allowed, "w": decision.always_allow},
            separators=(",", ":"),
        )
        try:
            won = await self._scripts.answer.run(
                self._client,
                [self._names.permission_key(request_id)],
                self._names.permission_channel,
                self._signer.pack("permission", body),
                *subscribed,
            )
        except CONNECTION_ERRORS as exc:
            logger.warning("could not answer permission %s: %s", request_id, exc)
            return False
        return bool(won)

    async def expire(self, request_id: str) -> bool:
        """True when the timeout decides: the request was still pending, or its
        key is gone (Redis lost it). An answer that won is decided here too,
        in case its published decision never arrived."""
        try:
            value = await self._client.getdel(self._names.permission_key(request_id))
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot expire permission {request_id}: {exc}") from exc
        if value is not None and str(value).startswith("d|"):
            self._decided(str(value)[2:])
            return False
        return True

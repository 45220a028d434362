"""Presence across processes: every process's subscribers of a session, in Redis.

Each process keeps its subscribers of a session in the session's
``presence`` sorted set, one member per connection (a signed entry holding
the process, the connection id and its info), scored by an expiry that it
refreshes every third of ``ttl`` to two thirds of ``ttl`` ahead. So the
entries of a process that died go stale by themselves.

- Joins and leaves are written in batches, a moment after the first of
  them, and each batch is announced on the ``presence`` channel (the ids of
  the sessions it changed): processes with subscribers of those sessions
  read them again (``Receiver.remote_members_changed``).
- Each refresh also removes the stale entries of the sessions this process
  has subscribers of, and announces the sessions where it removed some, or
  had to add its own again (Redis lost them). That is how the members of a
  process that died are seen to leave: within ``ttl`` of its death, as long
  as one process with a subscriber lives.

Expiry scores are wall-clock milliseconds: the processes' clocks must agree
to well within ``ttl`` (as NTP keeps them).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import anyio

from ..envelope import Signer
from ..errors import BrokerUnavailable, ForgedEnvelope
from .scripts import CONNECTION_ERRORS, Client, Names
from .stats import Counters

__all__ = ()

logger = logging.getLogger("sessionfanout.redis")

PRESENCE_TTL = 30.0
"""Seconds within which a dead process's subscribers drop out of presence."""
GATHER = 0.05
"""Seconds joins and leaves are gathered for before one write."""

Info = dict[str, Any] | None
_Change = tuple[str, bool]
"""An entry, and whether it is added (True) or removed."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class SharedPresence:
    def __init__(
        self,
        client: Client,
        names: Names,
        signer: Signer,
        counters: Counters,
        ttl: float = PRESENCE_TTL,
    ) -> None:
        self._client = client
        self._names = names
        self._signer = signer
        self._counters = counters
        self._ttl_ms = int(ttl * 1000)
        self._local: dict[str, dict[str, str]] = {}
        """Session -> connection id -> entry, of this process's subscribers."""
        self._pending: dict[str, dict[str, _Change]] = {}
        self._unannounced: set[str] = set()
        """Sessions whose members changed in Redis but no announcement went out yet."""
        self._refresh_at = anyio.current_time() + ttl / 3
        self._wake = anyio.Event()

    # -- this process's subscribers -----------------------------------------------

    def share(self, session_id: str, connection_id: str, info: Info, *, present: bool) -> None:
        local = self._local.setdefault(session_id, {})
        if present:
            body = json.dumps([self._names.process_id, connection_id, info], separators=(",", ":"))
            entry = local[connection_id] = self._signer.pack(f"presence:{session_id}", body)
        else:  # remove exactly what was added
            entry = local.pop(connection_id, "")
            if not local:
                del self._local[session_id]
        if entry:
            self._pending.setdefault(session_id, {})[connection_id] = (entry, present)
            self._wake.set()

    def refresh_soon(self) -> None:
        """Redis may have lost every entry (a restart): write ours again now."""
        self._refresh_at = -math.inf
        self._wake.set()

    async def run(self) -> None:
        """Write joins and leaves as they come; refresh and clean up on time."""
        delay = GATHER
        while True:
            with anyio.move_on_after(self._refresh_at - anyio.current_time()):
                await self._wake.wait()
                await anyio.sleep(GATHER)
            self._wake = anyio.Event()
            try:
                if anyio.current_time() >= self._refresh_at:
                    self._refresh_at = anyio.current_time() + self._ttl_ms / 3000
                    await self._refresh()
                if self._pending or self._unannounced:
                    await self.write_pending()
                delay = GATHER
            except Exception as exc:  # never ends the broker; tried again soon
                if isinstance(exc, BrokerUnavailable):
                    logger.info("presence not shared for now: %s", exc)
                else:
                    logger.error("sharing presence failed", exc_info=exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, self._ttl_ms / 6000)
                self._wake.set()

    async def close(self) -> None:
        """Shutting down: write the last leaves now, so that this process's
        members leave at once, not by expiry (a write that the shutdown
        interrupted puts its changes back, and they go again here)."""
        for _ in range(3):
            if not self._pending and not self._unannounced:
                return
            await self.write_pending()

    async def write_pending(self) -> None:
        pending, self._pending = self._pending, {}
        expires = _now_ms() + self._ttl_ms * 2 // 3
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for session_id, changes in pending.items():
                    key = self._names.presence_key(session_id)
                    removed = [entry for entry, present in changes.values() if not present]
                    if removed:
                        pipe.zrem(key, *removed)
                    added = {entry: expires for entry, present in changes.values() if present}
                    if added:
                        pipe.zadd(key, added)
                        pipe.pexpire(key, self._ttl_ms)
                self._announce(pipe, self._unannounced.union(pending))
                await pipe.execute()
            self._unannounced.clear()
        except BaseException as exc:
            for session_id, changes in pending.items():  # again, unless superseded
                newer = self._pending.setdefault(session_id, {})
                for connection_id, change in changes.items():
                    newer.setdefault(connection_id, change)
            if isinstance(exc, CONNECTION_ERRORS):
                raise BrokerUnavailable(f"cannot share presence: {exc}") from exc
            raise

    async def _refresh(self) -> None:
        """Keep this process's entries alive (writing them again if Redis lost
        them), and remove the entries of processes that died, in the sessions
        this process has subscribers of; announce the sessions that changed."""
        now = _now_ms()
        expires = now + self._ttl_ms * 2 // 3
        sessions = list(self._local)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for session_id in sessions:
                    key = self._names.presence_key(session_id)
                    pipe.zadd(key, dict.fromkeys(self._local[session_id].values(), expires))
                    pipe.pexpire(key, self._ttl_ms)
                    pipe.zremrangebyscore(key, "-inf", now)  # processes that died
                results = await pipe.execute()
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot refresh presence: {exc}") from exc
        for index, session_id in enumerate(sessions):
            added, removed = results[3 * index], results[3 * index + 2]
            if added or removed:
                self._unannounced.add(session_id)

    def _announce(self, pipe: Any, sessions: set[str]) -> None:
        if sessions:
            body = json.dumps(sorted(sessions), separators=(",", ":"))
            message = self._signer.pack("presence", body)
            # Not ``pipe.publish``: a cluster's pipeline refuses that method.
            pipe.execute_command("PUBLISH", self._names.presence_channel, message)

    # -- other processes' subscribers -----------------------------------------------

    async def remote(self, session_id: str) -> dict[str, Info]:
        """Connection id -> info of the session's subscribers on other live processes."""
        try:
            entries = await self._client.zrangebyscore(
                self._names.presence_key(session_id), _now_ms(), "+inf"
            )
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot read presence: {exc}") from exc
        members: dict[str, Info] = {}
        for entry in entries:
            try:
                process, connection_id, info = self._unpack(session_id, str(entry))
            except ForgedEnvelope as exc:
                self._counters.forged += 1
                logger.warning("dropped a forged presence entry: %s", exc)
                continue
            if process != self._names.process_id:
                members[connection_id] = info
        return members

    def _unpack(self, session_id: str, entry: str) -> tuple[str, str, Info]:
        try:
            data = json.loads(self._signer.unpack(f"presence:{session_id}", entry))
            process, connection_id, info = data
            strings = isinstance(process, str) and isinstance(connection_id, str)
            if strings and (info is None or isinstance(info, dict)):
                return process, connection_id, info
        except (ValueError, TypeError):
            pass
        raise ForgedEnvelope(f"malformed presence entry {entry!r:.80}")

    def on_announcement(self, message: str, changed: Callable[[str], None]) -> None:
        """Another process (or this one) changed the members of these sessions."""
        try:
            sessions = json.loads(self._signer.unpack("presence", message))
            if not isinstance(sessions, list):
                raise TypeError("not a list")
        except (ValueError, TypeError) as exc:
            raise ForgedEnvelope(f"malformed presence announcement {message!r:.80}") from exc
        for session_id in sessions:
            if isinstance(session_id, str):
                changed(session_id)

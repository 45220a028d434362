"""Which process runs a session's agent, and stopping it from any process.

Each process records the sessions whose agent it runs in the session's
``runs`` sorted set, scored by an expiry it refreshes while the run lasts, so
the entry of a process that died goes stale by itself. ``abort`` finds the
processes running the session and asks each, on its own control channel,
to stop it; the message is signed like every other.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import anyio

from ..envelope import Signer
from ..errors import BrokerUnavailable, ForgedEnvelope
from .scripts import CONNECTION_ERRORS, Client, Names

__all__ = ()

logger = logging.getLogger("sessionfanout.redis")

RUN_TTL = 30.0
"""Seconds a process's run entry lives unless refreshed (a third of it)."""


UNMARK_RETRY = 0.5
"""Seconds between two attempts to remove the entry of a run that ended."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class Runs:
    def __init__(self, client: Client, names: Names, signer: Signer) -> None:
        self._client = client
        self._names = names
        self._signer = signer
        self._local: dict[str, int] = {}
        self._ended: set[str] = set()
        """Runs that ended here whose entries are still to be removed."""

    async def started(self, session_id: str) -> None:
        self._local[session_id] = self._local.get(session_id, 0) + 1
        await self._mark([session_id])

    async def ended(self, session_id: str) -> None:
        count = self._local.pop(session_id, 0) - 1
        if count > 0:
            self._local[session_id] = count
            return
        self._ended.add(session_id)
        await self._unmark()

    async def _unmark(self) -> None:
        """Remove the entries of runs that ended here. One that Redis could not
        take (it was away) is removed later: else another process would find
        the session busy until the entry expires."""
        for session_id in list(self._ended):
            if session_id in self._local:  # it runs here again
                self._ended.discard(session_id)
                continue
            try:
                await self._client.zrem(self._names.runs_key(session_id), self._names.process_id)
            except CONNECTION_ERRORS as exc:
                logger.info("could not unmark the run of %s yet: %s", session_id, exc)
                return
            self._ended.discard(session_id)

    async def refresh(self) -> None:
        """Keep this process's entries alive while its runs last; retry removals."""
        marked = anyio.current_time()
        while True:
            await anyio.sleep(UNMARK_RETRY)
            try:
                if self._ended:
                    await self._unmark()
                if self._local and anyio.current_time() - marked >= RUN_TTL / 3:
                    marked = anyio.current_time()
                    await self._mark(list(self._local))
            except BrokerUnavailable as exc:
                logger.info("could not refresh runs: %s", exc)
            except Exception as exc:  # never ends the broker; tried again next time
                logger.error("refreshing runs failed", exc_info=exc)

    async def _mark(self, sessions: list[str]) -> None:
        expires = _now_ms() + int(RUN_TTL * 1000)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for session_id in sessions:
                    key = self._names.runs_key(session_id)
                    pipe.zadd(key, {self._names.process_id: expires})
                    pipe.zremrangebyscore(key, "-inf", _now_ms())  # processes that died
                    pipe.pexpire(key, int(RUN_TTL * 1000))
                await pipe.execute()
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot record the run: {exc}") from exc

    async def _processes(self, session_id: str) -> list[str]:
        try:
            found = await self._client.zrangebyscore(
                self._names.runs_key(session_id), _now_ms(), "+inf"
            )
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot look up the run: {exc}") from exc
        return [str(process) for process in found]

    async def is_running(self, session_id: str) -> bool:
        return bool(await self._processes(session_id))

    async def abort(self, session_id: str, reason: str) -> bool:
        processes = await self._processes(session_id)
        body = json.dumps({"s": session_id, "r": reason}, separators=(",", ":"))
        message = self._signer.pack("abort", body)
        try:
            for process in processes:
                await self._client.publish(self._names.control_channel_of(process), message)
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot ask for the abort: {exc}") from exc
        return bool(processes)

    def on_abort(self, message: str, abort: Callable[[str, str], bool]) -> None:
        """An abort request from another process (or this one) arrived."""
        try:
            data = json.loads(self._signer.unpack("abort", message))
            session_id, reason = data["s"], data["r"]
        except (ValueError, LookupError, TypeError) as exc:
            raise ForgedEnvelope(f"malformed abort request {message!r:.80}") from exc
        abort(session_id, reason)

"""Runs mock agents in the background, one per session at most (on every
process, with the Redis backplane); aborts them wherever they run."""

from __future__ import annotations

import logging

import anyio
import anyio.abc
from mock_agent import MockOptions, echo_agent

from sessionfanout import Hub, HubClosed

logger = logging.getLogger("sessionfanout.examples")


class AgentRunner:
    """Owns the agents' task group; ``start`` and ``abort`` by session id."""

    def __init__(self, hub: Hub, task_group: anyio.abc.TaskGroup) -> None:
        self.hub = hub
        self.task_group = task_group
        self.running: dict[str, anyio.CancelScope] = {}

    async def start(self, session_id: str, options: MockOptions) -> bool:
        """Start the mock agent for ``session_id``; False if one is already
        running for it, here or on another process."""
        if session_id in self.running:
            return False
        scope = self.running[session_id] = anyio.CancelScope()  # before the await: one start
        try:
            elsewhere = await self.hub.is_running(session_id)
        except BaseException:
            del self.running[session_id]
            raise
        if elsewhere:
            del self.running[session_id]
            return False
        self.task_group.start_soon(self._run, session_id, options, scope)
        return True

    async def abort(self, session_id: str) -> bool:
        """Stop the session's agent wherever it runs (the hub flushes, then sends
        error and complete); False when none runs."""
        return await self.hub.abort(session_id)

    async def abort_all(self) -> None:
        for scope in self.running.values():
            scope.cancel()
        while self.running:  # noqa: ASYNC110 - each run removes itself when it has ended
            await anyio.sleep(0.01)

    async def _run(self, session_id: str, options: MockOptions, scope: anyio.CancelScope) -> None:
        try:
            with scope:
                await self.hub.run_agent(session_id, echo_agent(options))
        except HubClosed:
            logger.info("hub closed while the agent for %s was running", session_id)
        except Exception:  # one agent's failure must not end the server
            logger.exception("the agent for %s failed", session_id)
        finally:
            if self.running.get(session_id) is scope:
                del self.running[session_id]

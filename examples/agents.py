"""Runs mock agents in the background, one per session at most; aborts them."""

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

    def start(self, session_id: str, options: MockOptions) -> bool:
        """Start the mock agent for ``session_id``; False if one is already running."""
        if session_id in self.running:
            return False
        scope = self.running[session_id] = anyio.CancelScope()
        self.task_group.start_soon(self._run, session_id, options, scope)
        return True

    def abort(self, session_id: str) -> bool:
        """Cancel the session's agent (the hub flushes, then sends error and complete)."""
        scope = self.running.get(session_id)
        if scope is None:
            return False
        scope.cancel()
        return True

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
        finally:
            del self.running[session_id]

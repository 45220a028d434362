"""A Redis Cluster's topology, as this process sees it, and commands sent shard by shard.

redis-py's ``RedisCluster`` follows MOVED and ASK by itself, but it refreshes
its slot map only after errors on its own commands, and its pipeline fails as
a whole when one node cannot be reached. Here each master's commands of a
round go in a pipeline of their own, so a failed shard fails only its own
publications, and the map is refreshed (at most every ``REFRESH_INTERVAL``)
whenever a node cannot be reached: by the publisher, and by the shard
subscriptions, which must move to a promoted replica on their own.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    SlotNotCoveredError,
    TryAgainError,
)

from .scripts import CONNECTION_ERRORS

__all__ = ()

logger = logging.getLogger("sessionfanout.redis")

REFRESH_INTERVAL = 0.25
"""Seconds between two refreshes of the slot map, at most."""

NOT_RUN = (ClusterDownError, TryAgainError, MovedError, AskError)
"""Replies that say the command did not run (a failover or a slot move is
under way): sent again for a short while, never a duplicate. A slot that no
master serves (``SlotNotCoveredError``) fails at once."""


class Topology:
    """The cluster client, its slot map, and when that map was last refreshed;
    and a plain client per master, for pipelines that go to it straight."""

    def __init__(self, client: RedisCluster, connect: Callable[[str, int], Redis]) -> None:
        self.client = client
        self._connect = connect
        self._direct: dict[str, Redis] = {}
        self._refreshed = -float("inf")
        self._lock = anyio.Lock()
        self.on_change: Callable[[], None] = lambda: None
        """Called after each refresh (the shard subscriptions re-home themselves)."""

    def owner(self, key: str) -> ClusterNode:
        """The master serving the key's slot (``SlotNotCoveredError`` if none)."""
        slot = self.client.keyslot(key)
        node: ClusterNode = self.client.nodes_manager.get_node_from_slot(slot)
        return node

    async def refresh(self) -> bool:
        """Read the slot map again, unless that was done a moment ago; False when
        no node answered."""
        async with self._lock:
            if anyio.current_time() - self._refreshed < REFRESH_INTERVAL:
                return True
            try:
                await self.client.nodes_manager.initialize()
            except (*CONNECTION_ERRORS, IndexError) as exc:
                logger.info("cannot read the cluster's slot map: %s", exc)
                return False
            finally:
                self._refreshed = anyio.current_time()
        self.on_change()
        return True

    async def aclose(self) -> None:
        for client in self._direct.values():
            with contextlib.suppress(*CONNECTION_ERRORS):
                await client.aclose()
        self._direct.clear()

    async def execute(
        self, commands: Sequence[tuple[Any, ...]], keys: Sequence[str | None]
    ) -> list[Any]:
        """Each command's reply or error: one pipeline per master, sent side by side.

        ``keys[i]`` places command i (None: any node). A master that cannot be
        reached fails its own commands and has the slot map refreshed.
        """
        groups: dict[str, tuple[ClusterNode | None, list[int]]] = {}
        results: list[Any] = [None] * len(commands)
        for index, key in enumerate(keys):
            try:
                node = self.owner(key) if key is not None else None
            except SlotNotCoveredError as exc:
                results[index] = exc
                continue
            groups.setdefault(node.name if node else "", (node, []))[1].append(index)
        sends = [self._send(node, [commands[i] for i in group]) for node, group in groups.values()]
        if len(sends) == 1:  # one master: no tasks needed
            replies = [await sends[0]]
        else:
            replies = [[] for _ in sends]

            async def send(n: int) -> None:
                replies[n] = await sends[n]

            async with anyio.create_task_group() as tg:
                for n in range(len(sends)):
                    tg.start_soon(send, n)
        for (_, group), group_replies in zip(groups.values(), replies, strict=True):
            for index, reply in zip(group, group_replies, strict=True):
                results[index] = reply
        lost = (isinstance(r, CONNECTION_ERRORS) and not isinstance(r, NOT_RUN) for r in results)
        if any(lost):
            await self.refresh()
        return results

    async def _send(self, node: ClusterNode | None, commands: list[tuple[Any, ...]]) -> list[Any]:
        """A pipeline to one master (straight, not through redis-py's cluster
        pipeline, which costs more per command than the command itself), or
        through the cluster client when any node will do. What the master says
        belongs elsewhere (MOVED, ASK: not run) goes through the cluster client,
        which follows the redirection and learns the slot's new owner."""
        try:
            client = self._client_of(node) if node is not None else self.client
            async with client.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                replies: list[Any] = await pipe.execute(raise_on_error=False)
        except CONNECTION_ERRORS as exc:
            return [exc] * len(commands)
        for n, reply in enumerate(replies):
            if isinstance(reply, MovedError | AskError):
                try:
                    replies[n] = await self.client.execute_command(*commands[n])
                except CONNECTION_ERRORS as exc:
                    replies[n] = exc
        return replies

    def _client_of(self, node: ClusterNode) -> Redis:
        client = self._direct.get(node.name)
        if client is None:
            client = self._direct[node.name] = self._connect(node.host, int(node.port))
        return client

"""A Redis Cluster's topology, as this process sees it, and commands sent shard by shard.

redis-py's ``RedisCluster`` follows MOVED and ASK by itself, but it refreshes
its slot map only after errors on its own commands, and a pipeline that
reaches a dead node fails as a whole. Here each node's commands of a round
go in a pipeline of their own, so a failed shard fails only its own
publications, and the map is refreshed (at most every ``REFRESH_INTERVAL``)
whenever a node cannot be reached: by the publisher, and by the shard
subscriptions, which must move to a promoted replica on their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import anyio
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
    """The cluster client, its slot map, and when that map was last refreshed."""

    def __init__(self, client: RedisCluster) -> None:
        self.client = client
        self._refreshed = -float("inf")
        self._lock = anyio.Lock()
        self.on_change: Callable[[], None] = lambda: None
        """Called after each refresh (the shard subscriptions re-home themselves)."""

    def owner(self, key: str) -> ClusterNode:
        """The master serving the key's slot (``SlotNotCoveredError`` if none)."""
        slot = self.client.keyslot(key)
        node: ClusterNode = self.client.nodes_manager.get_node_from_slot(slot)
        return node

    def masters(self) -> list[ClusterNode]:
        nodes: list[ClusterNode] = self.client.get_primaries()
        return nodes

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

    async def execute(
        self, commands: Sequence[tuple[Any, ...]], keys: Sequence[str | None]
    ) -> list[Any]:
        """Each command's reply or error: one pipeline per node, sent side by side.

        ``keys[i]`` places command i (None: any node). A node that cannot be
        reached fails its own commands and has the slot map refreshed.
        """
        groups: dict[str, list[int]] = {}
        results: list[Any] = [None] * len(commands)
        for index, key in enumerate(keys):
            try:
                name = self.owner(key).name if key is not None else ""
            except SlotNotCoveredError as exc:
                results[index] = exc
                continue
            groups.setdefault(name, []).append(index)
        lost = False

        async def send(indexes: list[int]) -> None:
            nonlocal lost
            try:
                async with self.client.pipeline() as pipe:
                    for index in indexes:
                        pipe.execute_command(*commands[index])
                    replies = await pipe.execute(raise_on_error=False)
            except CONNECTION_ERRORS as exc:
                lost = lost or not isinstance(exc, NOT_RUN)
                replies = [exc] * len(indexes)
            for index, reply in zip(indexes, replies, strict=True):
                results[index] = reply

        if len(groups) == 1:  # one master: no tasks needed
            await send(next(iter(groups.values())))
        else:
            async with anyio.create_task_group() as tg:
                for indexes in groups.values():
                    tg.start_soon(send, indexes)
        if lost or any(isinstance(r, SlotNotCoveredError) for r in results):
            await self.refresh()
        return results

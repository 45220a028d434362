"""Sharded pub/sub on a Redis Cluster: each session's channel, subscribed on its shard.

A session's events are published with SPUBLISH on a channel in the slot of
its keys, so they travel only within the shard that owns them. This process
keeps one subscription connection per master that owns a watched session's
slot. When such a connection fails, the slot map is read again (see
``cluster.Topology``) and each of its channels is subscribed wherever its
slot lives now, typically on the replica promoted in its place. Once
subscribed there, each session is caught up from its history as after any
reconnect: what was published meanwhile is filled in, or the session's
clients are told to reload; never a silent gap.

(redis-py's ``ClusterPubSub`` moves shard subscriptions only when the same
client refreshes its slot map, which a subscriber alone never does; hence
these plain connections, one per master.)
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import attrs
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import SlotNotCoveredError

from .cluster import REFRESH_INTERVAL, Topology
from .scripts import CONNECTION_ERRORS

__all__ = ()

logger = logging.getLogger("sessionfanout.redis")

CONFIRM_TIMEOUT = 10.0
MOVE_TRIES = 5
"""Attempts to subscribe a moved channel on its new master (its connection,
if it fails, subscribes it again on reconnecting)."""
MOVE_ATTEMPTS = 20
"""Slot map refreshes to find where a slot moved, before subscribing again in place."""
RECONNECT_MAX_DELAY = 0.5
"""A shard reconnects quickly: its replica takes over within seconds."""


async def close_quietly(pubsub: PubSub, client: aioredis.Redis | None = None) -> None:
    """Close a pub/sub connection (and its client) that may be gone already."""
    with anyio.CancelScope(shield=True), contextlib.suppress(*CONNECTION_ERRORS):
        await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
        if client is not None:
            await client.aclose()


@attrs.define(eq=False)
class _Node:
    """One master's subscription connection and the channels it should hold."""

    node: ClusterNode
    channels: set[str] = attrs.field(factory=set)
    pubsub: PubSub | None = None
    connected: bool = False
    """The connection got as far as serving: the backoff starts again."""
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)


class Shards:
    """This process's shard subscriptions, one connection per master."""

    def __init__(
        self,
        topology: Topology,
        connect: Callable[[str, int], aioredis.Redis],
        dispatch: Callable[[dict[str, Any]], Awaitable[None]],
        catch_up: Callable[[str], Awaitable[None]],
        session_of: Callable[[str], str],
    ) -> None:
        self._topology = topology
        self._connect = connect
        self._dispatch = dispatch
        self._catch_up = catch_up
        self._session_of = session_of
        self._nodes: dict[str, _Node] = {}
        self._home: dict[str, str] = {}
        """Each wanted channel's master (by node name); "" while its slot has none."""
        self._confirmed: dict[str, anyio.Event] = {}
        self._task_group: anyio.abc.TaskGroup | None = None
        topology.on_change = self._rehome

    def start(self, task_group: anyio.abc.TaskGroup) -> None:
        self._task_group = task_group

    async def subscribe(self, channel: str) -> None:
        """Subscribe on the channel's master and wait for the confirmation.

        When that master cannot be reached, the channel stays wanted: its
        connection subscribes it once back (or moved), and catches it up.
        """
        node = self._place(channel)
        if node is None or node.pubsub is None:
            return
        await self._ssubscribe(node.pubsub, channel)

    async def _ssubscribe(self, pubsub: PubSub, channel: str) -> None:
        confirmed = self._confirmed[channel] = anyio.Event()
        try:
            await pubsub.ssubscribe(channel)
            with anyio.fail_after(CONFIRM_TIMEOUT):
                await confirmed.wait()
        finally:
            self._confirmed.pop(channel, None)

    def confirming(self, channel: str) -> bool:
        """A subscribe to the channel waits for its confirmation."""
        confirmed = self._confirmed.get(channel)
        return confirmed is not None and not confirmed.is_set()

    def unsubscribe(self, channel: str) -> None:
        name = self._home.pop(channel, None)
        entry = self._nodes.get(name) if name else None
        if entry is None:
            return
        entry.channels.discard(channel)
        if entry.pubsub is not None and self._task_group is not None:
            self._task_group.start_soon(self._sunsubscribe, entry.pubsub, channel)

    async def _sunsubscribe(self, pubsub: PubSub, channel: str) -> None:
        if channel in self._home:
            return  # wanted again meanwhile
        try:  # best effort: a connection made later subscribes only what is wanted
            await pubsub.sunsubscribe(channel)
        except Exception as exc:
            logger.debug("unsubscribing from %s failed: %r", channel, exc)

    def _place(self, channel: str) -> _Node | None:
        """Assign the channel to its master's connection (started if need be)."""
        try:
            node = self._topology.owner(channel)
        except SlotNotCoveredError:
            if self._home.get(channel) != "" and self._task_group is not None:
                self._task_group.start_soon(self._contained, self._find, channel)
            self._home[channel] = ""
            return None
        self._home[channel] = node.name
        entry = self._nodes.get(node.name)
        if entry is None:
            entry = self._nodes[node.name] = _Node(node)
            assert self._task_group is not None, "Shards used before start()"
            self._task_group.start_soon(self._serve, entry)
        entry.channels.add(channel)
        return entry

    def _rehome(self) -> None:
        """After the slot map changed: move each channel whose slot moved."""
        for channel, name in list(self._home.items()):
            try:
                owner = self._topology.owner(channel).name
            except SlotNotCoveredError:
                continue
            if owner == name:
                continue
            old = self._nodes.get(name)
            if old is not None:
                old.channels.discard(channel)
            entry = self._place(channel)
            if entry is not None and entry.pubsub is not None and self._task_group is not None:
                self._task_group.start_soon(self._contained, self._move, entry.pubsub, channel)
        for name, entry in list(self._nodes.items()):
            if not entry.channels:
                del self._nodes[name]
                entry.scope.cancel()

    @staticmethod
    async def _contained(work: Callable[..., Awaitable[object]], *args: Any) -> None:
        """One piece of work on the hub's task group: an unexpected error in it
        is logged, never raised into the group (it would end the hub)."""
        try:
            await work(*args)
        except Exception as exc:
            logger.error("%s failed", work.__name__, exc_info=exc)

    async def _find(self, channel: str) -> None:
        """Read the slot map until a master serves the channel's slot
        (``_rehome`` then subscribes it there), or it is no longer wanted."""
        while self._home.get(channel) == "":
            await self._topology.refresh()
            await anyio.sleep(REFRESH_INTERVAL)

    async def _move(self, pubsub: PubSub, channel: str) -> None:
        """Subscribe a channel whose slot moved to a master already connected,
        and catch its session up; tried again a few times if that fails."""
        for attempt in range(MOVE_TRIES):
            try:
                await self._ssubscribe(pubsub, channel)
                if channel in self._home:
                    await self._catch_up(self._session_of(channel))
                return
            except (*CONNECTION_ERRORS, TimeoutError) as exc:
                logger.info("moving %s to its new shard failed: %s", channel, exc)
            await anyio.sleep(0.1 * 2**attempt)

    async def _serve(self, entry: _Node) -> None:
        """Keep the master's connection: subscribe its channels, catch them up,
        dispatch; on failure read the slot map again, and retry or give up the
        channels that moved elsewhere."""
        delay = 0.05
        with entry.scope:
            while True:
                try:
                    await self._connection(entry)
                except (*CONNECTION_ERRORS, TimeoutError) as exc:
                    logger.info("shard %s unavailable: %s", entry.node.name, exc)
                except Exception as exc:  # a bug: reconnect and catch up
                    logger.error("a shard subscription failed", exc_info=exc)
                entry.pubsub = None
                if entry.connected:
                    entry.connected, delay = False, 0.05
                await self._contained(self._topology.refresh)
                await anyio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, RECONNECT_MAX_DELAY)

    async def _connection(self, entry: _Node) -> None:
        node = entry.node
        client = self._connect(node.host, int(node.port))
        pubsub = client.pubsub()
        try:
            subscribed: set[str] = set()
            while missing := entry.channels - subscribed:  # what was added meanwhile too
                for channel in missing:  # one command each: one slot each
                    await pubsub.ssubscribe(channel)
                while missing:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None:
                        if message["type"] == "ssubscribe":
                            missing.discard(message["channel"])
                            subscribed.add(message["channel"])
                        await self._handle(message, entry)
            entry.pubsub = pubsub
            entry.connected = True
            for channel in subscribed & entry.channels:
                await self._catch_up(self._session_of(channel))
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None:
                    await self._handle(message, entry)
        finally:
            entry.pubsub = None
            await close_quietly(pubsub, client)

    async def _handle(self, message: dict[str, Any], entry: _Node) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "ssubscribe":
            confirmed = self._confirmed.get(channel)
            if confirmed is not None:
                confirmed.set()
        elif kind == "smessage":
            await self._dispatch(message)
        elif kind == "sunsubscribe" and self._home.get(channel) == entry.node.name:
            # Not asked for (``unsubscribe`` forgets the channel first): the
            # server ends shard subscriptions of a slot that moved to another master.
            assert self._task_group is not None
            self._task_group.start_soon(self._contained, self._dropped, channel, entry.node.name)

    async def _dropped(self, channel: str, name: str) -> None:
        """Find where the channel's slot went (``_rehome`` moves it there), or
        after a while subscribe again where the slot map still says it is."""
        for _ in range(MOVE_ATTEMPTS):
            await self._topology.refresh()
            if self._home.get(channel) != name:
                return
            await anyio.sleep(REFRESH_INTERVAL)
        entry = self._nodes.get(name)
        if entry is not None and entry.pubsub is not None and self._home.get(channel) == name:
            await self._move(entry.pubsub, channel)

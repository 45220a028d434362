"""Presence: who is subscribed to a session, on every process, and telling watchers.

Every subscriber is a member, with the ``info`` the ``presence_info`` hook
gave its connection when it connected. Members here are read from the
subscription registry; members on other processes come from the broker,
which also shares this process's joins and leaves. A subscriber that asked
for presence (a watcher) gets a snapshot, then throttled diffs: ``Roster``
keeps what watchers were told and when they are due to hear more; one task
here sends what is due, so a broker that must be asked over the network never
holds up the hub's scheduler.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import anyio

from .approvals import Contain
from .broker import Broker
from .checks import describe, json_problem
from .codec import encode
from .config import HubConfig
from .connection import Connection, Wakeup
from .delivery import Delivery
from .errors import BrokerUnavailable
from .events import Presence, PresenceMember
from .registry import SubscriptionRegistry
from .roster import Members, Roster
from .runtime import Runtime

__all__ = ()

logger = logging.getLogger("sessionfanout")


def as_members(members: Members) -> tuple[PresenceMember, ...]:
    """In connection id order, so that a frame's order means nothing."""
    return tuple(PresenceMember(m, members[m]) for m in sorted(members))


class PresenceKeeper:
    def __init__(
        self,
        config: HubConfig,
        registry: SubscriptionRegistry[Connection],
        delivery: Delivery,
        broker: Broker,
        contain: Contain,
    ) -> None:
        self._config = config
        self._registry = registry
        self._delivery = delivery
        self._broker = broker
        self._contain = contain
        self.roster: Roster[Connection] = Roster(config.presence_interval)
        self._clock: Callable[[], float] = lambda: 0.0
        self._wakeup: Wakeup | None = None
        self._wake_at = math.inf

    def info_of(self, connection: Connection) -> dict[str, Any] | None:
        """What the ``presence_info`` hook says of a new connection; a hook that
        fails or says something that is not a JSON object says nothing."""
        hook = self._config.presence_info
        if hook is None:
            return None
        try:
            info = hook(connection)
            if info is not None and (not isinstance(info, dict) or json_problem(info)):
                raise TypeError(f"presence_info must return a JSON object, got {describe(info)}")
        except Exception as exc:
            self._contain(None, f"the presence_info hook for {connection.id}", exc)
            return None
        return info

    # -- changes -------------------------------------------------------------

    async def subscribed(
        self, connection: Connection, session_id: str, joins: bool, watches: bool
    ) -> None:
        """A subscribe succeeded: a new member ``joins``; a watcher (re)starts
        with a snapshot; a subscribe without presence stops watching."""
        if joins:
            self.joined(connection, session_id)
        if watches:
            await self.watch(connection, session_id)
        else:
            self.roster.unwatch(session_id, connection)

    def joined(self, connection: Connection, session_id: str) -> None:
        """A subscription began here."""
        self._broker.member_changed(session_id, connection.id, connection.info, present=True)
        self.changed(session_id)

    def left(self, connection: Connection, session_id: str) -> None:
        """A subscription ended here (the connection also stops watching)."""
        self._broker.member_changed(session_id, connection.id, connection.info, present=False)
        self.roster.unwatch(session_id, connection)
        self.changed(session_id)

    def changed(self, session_id: str) -> None:
        """Members changed, here or on another process (``Receiver.members_changed``)."""
        roster = self.roster
        if roster.is_watched(session_id):
            roster.changed(session_id, self._clock())
            self._wake_by(roster.next_deadline())

    # -- members and watchers ---------------------------------------------------

    def local(self, session_id: str) -> Members:
        return {c.id: c.info for c in self._registry.sinks_of(session_id)}

    async def members(self, session_id: str) -> Members:
        """Every process's members; ``BrokerUnavailable`` when others cannot be asked."""
        remote = await self._broker.remote_members(session_id)
        return {**remote, **self.local(session_id)}

    async def watch(self, connection: Connection, session_id: str) -> None:
        """Send a subscriber its snapshot; it gets the diffs from now on."""
        roster = self.roster
        if not roster.is_watched(session_id):
            try:
                current = await self.members(session_id)
            except BrokerUnavailable as exc:  # the next diff tells the rest
                logger.info("presence of other processes unavailable: %s", exc)
                current = self.local(session_id)
            if not self._registry.is_subscribed(connection, session_id):
                return  # left meanwhile
            roster.begin(session_id, current, self._clock())
            self._wake_by(roster.next_deadline())
        snapshot = roster.watch(session_id, connection)
        self._delivery.reply(connection, Presence(session_id, members=as_members(snapshot)))

    # -- the task that sends diffs ------------------------------------------------

    async def run(self, runtime: Runtime) -> None:
        self._clock = runtime.clock
        while True:
            for session_id in self.roster.due(runtime.clock()):
                try:
                    await self._report(session_id)
                except BrokerUnavailable as exc:
                    logger.info("presence of %r delayed: %s", session_id, exc)
                    self.roster.changed(session_id, runtime.clock())  # try again
                except Exception as exc:
                    self._contain(session_id, "reporting presence", exc)
            deadline = self.roster.next_deadline()
            self._wake_at = math.inf if deadline is None else deadline
            wakeup = self._wakeup = runtime.new_wakeup()
            with anyio.move_on_after(self._wake_at - runtime.clock()):
                await wakeup.wait()

    def _wake_by(self, deadline: float | None) -> None:
        if deadline is not None and deadline < self._wake_at:
            self._wake_at = -math.inf
            if self._wakeup is not None:
                self._wakeup.set()

    async def _report(self, session_id: str) -> None:
        current = await self.members(session_id)
        joined, left = self.roster.report(session_id, current)
        watchers = tuple(self.roster.watchers(session_id))
        if (joined or left) and watchers:
            frame = Presence(session_id, joined=as_members(joined), left=as_members(left))
            self._delivery.fan_out(watchers, encode(frame), session_id)

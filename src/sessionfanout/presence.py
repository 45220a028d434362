"""Presence: who is subscribed to a session, on every process, and telling watchers.

Every subscriber is a member, with the ``info`` the ``presence_info`` hook
gave its connection when it connected. Members here are read from the
subscription registry; members on other processes come from the broker,
which also shares this process's joins and leaves. A subscriber that asked
for presence (a watcher) gets a snapshot, then throttled diffs: ``Roster``
keeps what watchers were told and when they are due to hear more; one task
here sends what is due, so a broker that must be asked over the network
never holds up the hub's scheduler.

Presence is a courtesy, not a stream of record: an unexpected error in its
work is contained (logged, counted) and never ends a connection or the hub.
While other processes cannot be asked, their members are taken as last read.
"""

from __future__ import annotations

import json
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

READ_TIMEOUT = 2.0
"""Seconds a read of other processes' members may take before they are taken as last read."""


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
        self._remote: dict[str, Members] = {}
        """The last members read from other processes, per watched session."""
        self._outage = False
        self._clock: Callable[[], float] = anyio.current_time
        self._wakeup: Wakeup | None = None
        self._wake_at = math.inf

    def start(self, runtime: Runtime) -> None:
        self._clock = runtime.clock

    def info_of(self, connection: Connection) -> dict[str, Any] | None:
        """What the ``presence_info`` hook says of a new connection, copied (the
        application may change its dict later); a hook that fails, or says
        something that is not a JSON object, says nothing."""
        hook = self._config.presence_info
        if hook is None:
            return None
        try:
            info = hook(connection)
            if info is None:
                return None
            if not isinstance(info, dict) or json_problem(info):
                raise TypeError(f"presence_info must return a JSON object, got {describe(info)}")
            copy: dict[str, Any] = json.loads(json.dumps(info))
            return copy
        except Exception as exc:
            self._contain(None, "the presence_info hook", exc, connection.id)
            return None

    # -- changes -------------------------------------------------------------

    async def subscribed(
        self, connection: Connection, session_id: str, *, joins: bool, watches: bool
    ) -> None:
        """A subscribe succeeded: a new member ``joins``; a watcher (re)starts
        with a snapshot; a subscribe without presence stops watching."""
        try:
            if joins:
                self._change(connection, session_id, present=True)
            if watches:
                await self._watch(connection, session_id)
            else:
                self._unwatch(connection, session_id)
        except Exception as exc:
            self._contain(session_id, "presence", exc, connection.id)

    def left(self, connection: Connection, session_id: str) -> None:
        """A subscription ended here (the connection also stops watching)."""
        try:
            self._unwatch(connection, session_id)
            self._change(connection, session_id, present=False)
        except Exception as exc:
            self._contain(session_id, "presence", exc, connection.id)

    def _change(self, connection: Connection, session_id: str, *, present: bool) -> None:
        info = connection.presence_info
        self._broker.share_member(session_id, connection.id, info, present=present)
        self.roster.local_change(session_id, connection.id, info, self._clock(), present=present)
        self._wake_by(self.roster.next_deadline())

    def remote_changed(self, session_id: str) -> None:
        """Members on another process changed (``Receiver.remote_members_changed``)."""
        roster = self.roster
        if roster.is_watched(session_id):
            roster.changed(session_id, self._clock())
            self._wake_by(roster.next_deadline())

    # -- members and watchers ---------------------------------------------------

    def local(self, session_id: str) -> Members:
        return {c.id: c.presence_info for c in self._registry.sinks_of(session_id)}

    async def members(self, session_id: str) -> Members:
        """Every process's members; ``BrokerUnavailable`` when others cannot be asked."""
        remote = await self._broker.remote_members(session_id)
        return {**remote, **self.local(session_id)}

    async def _current(self, session_id: str) -> Members:
        """Every process's members, the others' as last read when they cannot be asked."""
        try:
            with anyio.fail_after(READ_TIMEOUT):  # one stuck read must not stall the rest
                remote = await self._broker.remote_members(session_id)
        except (BrokerUnavailable, TimeoutError) as exc:
            if not self._outage:
                logger.info("presence of other processes unavailable: %s", exc)
            self._outage = True
            remote = self._remote.get(session_id, {})
        else:
            self._outage = False
            if self.roster.is_watched(session_id):
                self._remote[session_id] = remote
        return {**remote, **self.local(session_id)}

    async def _watch(self, connection: Connection, session_id: str) -> None:
        roster = self.roster
        if not roster.is_watched(session_id):
            current = await self._current(session_id)
            if not self._registry.is_subscribed(connection, session_id):
                return  # left meanwhile
            roster.begin(session_id, current, self._clock())
            self._wake_by(roster.next_deadline())
        snapshot = roster.watch(session_id, connection)
        self._delivery.reply(connection, Presence(session_id, members=as_members(snapshot)))

    def _unwatch(self, connection: Connection, session_id: str) -> None:
        self.roster.unwatch(session_id, connection)
        if not self.roster.is_watched(session_id):
            self._remote.pop(session_id, None)

    # -- the task that sends diffs ------------------------------------------------

    async def run(self, runtime: Runtime) -> None:
        while True:
            for session_id in self.roster.due(runtime.clock()):
                try:
                    await self._report(session_id)
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
        generation = self.roster.generation(session_id)
        if generation is None:
            return
        current = await self._current(session_id)
        for diff in self.roster.report(session_id, current, generation):
            frame = Presence(session_id, joined=as_members(diff.joined), left=as_members(diff.left))
            self._delivery.fan_out(diff.watchers, encode(frame), session_id)

"""Receiving: the pub/sub connection, the sessions watched here, and gap fill.

This process subscribes (on a pub/sub connection of its own) to the channels
of the sessions it has local subscribers for, plus one channel for global
events, one for permission decisions and one for its own flush markers. On a
Redis Cluster the sessions' channels are shard channels, subscribed on their
shards (see ``shards``), and this connection holds the other three. The
first local subscriber of a session loads its history from Redis into this
process's ``History``, so resume works on any process.

Each received event is checked against the last seq delivered for its
session: a duplicate is dropped; a gap is filled from the history in Redis
before going on; when the history no longer reaches back (or the session's
epoch changed, say Redis restarted empty), local subscribers get
``subscribed`` with ``resumed: false``, the protocol's "reload" signal. After
a reconnect every watched session is caught up the same way.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from ..agent import PermissionDecision
from ..broker import Receiver
from ..envelope import Envelope, Signer
from ..errors import ForgedEnvelope
from ..history import History, Recorded
from .scripts import CONNECTION_ERRORS, Client, Names, Scripts
from .shards import Shards, close_quietly
from .stats import Counters

__all__ = ()

logger = logging.getLogger("sessionfanout.redis")


class Listener:
    """Owns the pub/sub connection and this process's copy of watched sessions."""

    def __init__(
        self,
        client: Client,
        subscriber: Callable[[], aioredis.Redis],
        scripts: Scripts,
        names: Names,
        signer: Signer,
        history: History,
        counters: Counters,
    ) -> None:
        self._client = client
        self._subscriber = subscriber
        self._scripts = scripts
        self._names = names
        self._signer = signer
        self.history = history
        self._counters = counters
        self._ttl_ms = max(1, int(history.idle_ttl * 1000))
        self._receiver: Receiver | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._clock: Callable[[], float] = anyio.current_time
        self._pubsub: PubSub | None = None
        self.watching: dict[str, int] = {}
        self._seeding: dict[str, anyio.Event] = {}
        self._confirmed: dict[str, anyio.Event] = {}
        self.markers: dict[str, anyio.Event] = {}
        """Flush markers this process waits for on its control channel."""
        self.on_control: Callable[[str], None] = lambda message: None
        """Signed requests on the control channel (abort)."""
        self.on_presence: Callable[[str], None] = lambda message: None
        """Signed announcements of changed presence."""
        self.shards: Shards | None = None
        """On a cluster: the sessions' shard subscriptions."""

    def start(
        self, receiver: Receiver, clock: Callable[[], float], task_group: anyio.abc.TaskGroup
    ) -> None:
        self._receiver = receiver
        self._clock = clock
        self._task_group = task_group

    def _deliver(self) -> Receiver:
        assert self._receiver is not None, "RedisBroker used before start()"
        return self._receiver

    async def listen(self, connected: Callable[[], None]) -> None:
        """Subscribe, catch every watched session up, call ``connected``, then
        dispatch until the connection fails."""
        pubsub = self._subscriber().pubsub()
        try:
            await self._subscribe_all(pubsub)
            # Only now: until here, ``watch`` leaves new sessions to _subscribe_all.
            self._pubsub = pubsub
            connected()
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None:
                    await self.dispatch(message)
        finally:
            self._pubsub = None
            await close_quietly(pubsub)

    async def _subscribe_all(self, pubsub: PubSub) -> None:
        """Subscribe to every channel this process needs; catch up each watched session.

        Sessions watched meanwhile are subscribed and caught up too.
        """
        names = self._names
        subscribed: set[str] = set()
        while True:
            wanted: dict[str, str | None] = dict.fromkeys(
                (
                    names.global_channel,
                    names.permission_channel,
                    names.control_channel,
                    names.presence_channel,
                )
            )
            if self.shards is None:
                wanted.update((names.channel(s), s) for s in self.watching)
            missing = {c: s for c, s in wanted.items() if c not in subscribed}
            if not missing:
                return
            await pubsub.subscribe(*missing)
            await self._read_until_confirmed(pubsub, set(missing))
            subscribed.update(missing)
            for session_id in missing.values():
                if session_id is not None and session_id in self.watching:
                    await self.catch_up(session_id)

    async def _read_until_confirmed(self, pubsub: PubSub, channels: set[str]) -> None:
        while channels:
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            if message["type"] == "subscribe":
                channels.discard(message["channel"])
            await self.dispatch(message)

    async def dispatch(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "subscribe":
            confirmed = self._confirmed.get(channel)
            if confirmed is not None:
                confirmed.set()
            return
        if kind not in ("message", "smessage"):
            return
        data: str = message["data"]
        self._counters.received += 1
        names = self._names
        try:
            if channel == names.control_channel:
                if "|" in data:  # a signed request; flush markers have no "|"
                    self.on_control(data)
                marker = self.markers.get(data)
                if marker is not None:
                    marker.set()
            elif channel == names.global_channel:
                self._deliver().deliver_global(self._signer.unpack("global", data))
            elif channel == names.permission_channel:
                self.on_decision(data)
            elif channel == names.presence_channel:
                self.on_presence(data)
            else:
                session_id = names.session_of(channel)
                if self._confirming(channel):
                    # Still on the socket from before an unwatch: the seed that
                    # follows the confirmation holds it. Waiting for the seed here
                    # would stop this reader, and with it the confirmation.
                    return
                seeding = self._seeding.get(session_id)
                if seeding is not None:
                    await seeding.wait()
                envelope = self._signer.unpack_message(session_id, data)
                if self._record(session_id, envelope) in (Recorded.GAP, Recorded.OTHER_EPOCH):
                    await self.catch_up(session_id)
        except ForgedEnvelope as exc:
            self._counters.forged += 1
            session = names.session_of(channel) if channel.startswith(names.channel_head) else None
            logger.warning(
                "dropped a forged or malformed message on %s: %s",
                channel,
                exc,
                extra={"session_id": session},
            )

    def _confirming(self, channel: str) -> bool:
        """A subscribe to the channel waits for its confirmation."""
        confirmed = self._confirmed.get(channel)
        if confirmed is not None and not confirmed.is_set():
            return True
        return self.shards is not None and self.shards.confirming(channel)

    def _record(self, session_id: str, envelope: Envelope) -> Recorded:
        """Keep the event if it is the next one of the session, and deliver it."""
        verdict = self.history.record(
            session_id,
            envelope.epoch,
            envelope.seq,
            envelope.text,
            self._clock(),
            is_delta=envelope.is_delta,
        )
        if verdict is Recorded.NEXT:
            self._deliver().deliver(
                session_id, envelope.seq, envelope.text, is_delta=envelope.is_delta
            )
        return verdict

    def on_decision(self, message: str) -> None:
        """A signed permission decision (published, or read back at the timeout)."""
        body = self._signer.unpack("permission", message)
        try:
            data = json.loads(body)
            decision = PermissionDecision(data["r"], bool(data["a"]), bool(data["w"]))
        except (ValueError, LookupError, TypeError) as exc:
            raise ForgedEnvelope(f"malformed decision {body!r:.80}") from exc
        self._deliver().decided(decision.request_id, decision)

    # -- catching up ----------------------------------------------------------

    async def _fetch(self, session_id: str) -> tuple[str, int, list[Envelope]]:
        """The session's epoch, last seq, and the verified history entries that
        end at that seq with none missing, oldest first.

        What comes before a hole (an entry dropped as forged, or deleted) cannot
        be delivered in order: it is left out, as if the history were shorter.
        """
        names = self._names
        epoch, seq, entries = await self._scripts.state.run(
            self._client,
            [names.key(session_id, "meta"), names.key(session_id, "log")],
            secrets.token_urlsafe(9),
            self._ttl_ms,
        )
        epoch, seq = str(epoch), int(seq)
        verified = []
        for entry in entries:
            try:
                verified.append(self._signer.unpack_entry(session_id, epoch, entry))
            except ForgedEnvelope as exc:
                self._counters.forged += 1
                logger.warning(
                    "dropped a forged history entry of %s: %s",
                    session_id,
                    exc,
                    extra={"session_id": session_id},
                )
        run: list[Envelope] = []
        for envelope in reversed(verified):
            if envelope.seq < seq - len(run):
                break
            if envelope.seq == seq - len(run):  # skips copies and what lies beyond seq
                run.append(envelope)
        run.reverse()
        return epoch, seq, run

    async def _seed(self, session_id: str) -> None:
        epoch, seq, envelopes = await self._fetch(session_id)
        frames = [(e.text, e.is_delta) for e in envelopes]
        self.history.seed(session_id, epoch, seq, frames, self._clock())

    async def catch_up(self, session_id: str) -> None:
        """Deliver what this process missed of the session, or tell its clients to reload."""
        seeding = self._seeding.get(session_id)
        if seeding is not None:
            await seeding.wait()  # a watch is loading the session: go on from there
        before = self.history.peek(session_id)
        epoch, seq, envelopes = await self._fetch(session_id)
        if session_id not in self.watching:
            return  # unwatched meanwhile: keep nothing of it
        # Delivered here before Redis was asked, yet ahead of it, in the same
        # epoch: the store lost events (a lagging replica took over); the resync
        # below tells clients to reload. (What was delivered while it was being
        # asked, on another connection, may well be ahead: that proves nothing.)
        lost = before is not None and before.epoch == epoch and before.seq > seq
        known = self.history.peek(session_id)
        if not lost and known is not None and known.epoch == epoch and known.seq >= seq:
            return
        first = envelopes[0].seq if envelopes else seq + 1
        if not lost and known is not None and known.epoch == epoch and first <= known.seq + 1:
            for envelope in envelopes:
                self._record(session_id, envelope)
            self._counters.gaps_filled += 1
            return
        frames = [(e.text, e.is_delta) for e in envelopes]
        self.history.seed(session_id, epoch, seq, frames, self._clock())
        if known is not None:
            self._counters.resyncs += 1
            self._deliver().resync(session_id)

    # -- watching ---------------------------------------------------------------

    async def watch(self, session_id: str, available: bool) -> None:
        count = self.watching.get(session_id, 0)
        self.watching[session_id] = count + 1
        if count:
            seeding = self._seeding.get(session_id)
            if seeding is not None:  # a watch is loading the session: its state comes after
                await seeding.wait()
            return
        if not available and self.shards is None:
            return  # the listener catches it up when Redis is back
        seeding = self._seeding[session_id] = anyio.Event()
        channel = self._names.channel(session_id)
        try:
            pubsub = self._pubsub
            try:
                if self.shards is not None:
                    await self.shards.subscribe(channel)
                elif pubsub is not None:  # else the listener, reconnecting, subscribes it
                    confirmed = self._confirmed[channel] = anyio.Event()
                    await pubsub.subscribe(channel)
                    with anyio.fail_after(10):
                        await confirmed.wait()
            except CONNECTION_ERRORS as exc:
                # Still watched: the listener reconnects, subscribes and catches
                # it up from where the seed below leaves it.
                logger.info(
                    "subscribing to %s is delayed: %s",
                    session_id,
                    exc,
                    extra={"session_id": session_id},
                )
            await self._seed(session_id)
        except CONNECTION_ERRORS as exc:
            logger.info(
                "watching %s is delayed: %s", session_id, exc, extra={"session_id": session_id}
            )
        except BaseException:
            self.unwatch(session_id)
            raise
        finally:
            self._confirmed.pop(channel, None)
            del self._seeding[session_id]
            seeding.set()

    def unwatch(self, session_id: str) -> None:
        count = self.watching.get(session_id, 0)
        if count > 1:
            self.watching[session_id] = count - 1
            return
        self.watching.pop(session_id, None)
        self.history.forget(session_id)
        if self.shards is not None:
            self.shards.unsubscribe(self._names.channel(session_id))
        elif self._task_group is not None:
            self._task_group.start_soon(self._unsubscribe, session_id)

    async def _unsubscribe(self, session_id: str) -> None:
        pubsub = self._pubsub
        if session_id in self.watching or pubsub is None:
            return
        # On failure, nothing to undo: a new connection subscribes only to what is
        # watched. Best effort, so nothing it raises (a connection closing under
        # it, at shutdown) may end the task group.
        try:
            await pubsub.unsubscribe(self._names.channel(session_id))
        except Exception as exc:
            logger.debug(
                "unsubscribing from %s failed: %r",
                session_id,
                exc,
                extra={"session_id": session_id},
            )

"""``RedisBroker``: the parts put together, and the connection's lifecycle."""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
from collections.abc import Mapping, Sequence, Set
from typing import Any

import anyio
import attrs
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..agent import PermissionDecision
from ..broker import BrokerContext
from ..envelope import Signer
from ..errors import BrokerUnavailable, ForgedEnvelope, InvalidArgument
from ..history import History, SessionState
from .cluster import Topology
from .connect import Target, close
from .listener import Listener
from .permissions import Permissions
from .presence import PRESENCE_TTL, SharedPresence
from .publisher import Outgoing, Publisher
from .runs import Runs
from .scripts import CONNECTION_ERRORS, Client, Names, Scripts
from .shards import Shards
from .stats import Counters

__all__ = ("RedisBroker",)

logger = logging.getLogger("sessionfanout.redis")

PING_TIMEOUT = 5.0
CONNECT_TIMEOUT = 10.0
FLUSH_TIMEOUT = 5.0


@attrs.frozen
class _Parts:
    context: BrokerContext
    clients: tuple[Client, ...]
    publisher: Publisher
    listener: Listener
    permissions: Permissions
    runs: Runs
    presence: SharedPresence
    topology: Topology | None


def _seconds(name: str, value: object, least: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not least <= value < 1e6:
        raise InvalidArgument(f"{name} must be seconds >= {least}, got {value!r:.80}")
    return float(value)


def _client_name(value: object) -> str | None:
    if value is None or (isinstance(value, str) and value.split() == [value]):
        return value
    raise InvalidArgument(
        f"client_name must be a non-empty string without spaces, or None; got {value!r:.80}"
    )


class RedisBroker:
    """The Redis backplane; see the package docstring.

    ``url`` says where Redis is: ``redis://host:port/db`` (one server),
    ``redis+cluster://host:port,host:port`` (a Redis Cluster, from seed
    nodes) or ``redis+sentinel://host:port,host:port/name`` (the master
    that the sentinels know as ``name``); see ``connect``.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "sessionfanout",
        secret: str | bytes | None = None,
        reconnect_max_delay: float = 5.0,
        client_name: str | None = None,
        presence_ttl: float = PRESENCE_TTL,
    ) -> None:
        """``secret`` turns on signing (every process needs the same one);
        ``client_name`` names this process's connections in Redis's CLIENT LIST;
        the subscribers of a process that dies leave presence within ``presence_ttl``."""
        if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "|{}"):
            raise InvalidArgument("prefix must be a non-empty string without '|', '{' or '}'")
        self._target = Target.parse(url)
        self.url = url
        self.prefix = prefix
        self.reconnect_max_delay = _seconds("reconnect_max_delay", reconnect_max_delay, 0.01)
        self.client_name = _client_name(client_name)
        self.presence_ttl = _seconds("presence_ttl", presence_ttl, 0.3)
        if secret is not None and (not isinstance(secret, str | bytes) or not secret):
            raise InvalidArgument("secret must be a non-empty str or bytes, or None")
        self._signer = Signer(secret)
        self._names = Names(prefix, secrets.token_urlsafe(9))
        self._counters = Counters()
        self._parts: _Parts | None = None
        self._available = False
        self._connected = anyio.Event()
        self._scope = anyio.CancelScope()
        self._connection_scope = anyio.CancelScope()
        self._last_node = ""

    def _get(self) -> _Parts:
        assert self._parts is not None, "RedisBroker used before start()"
        return self._parts

    # -- lifecycle ------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._available

    def available_for(self, session_id: str) -> bool:
        """On a cluster, a session whose publication just failed (its shard is
        down) is refused for a moment, so that a producer's deltas are not
        accepted only to be lost; the other shards' sessions go on."""
        return self._available and self._get().publisher.may_publish(session_id)

    async def start(self, context: BrokerContext) -> None:
        # No silent retries: a lost connection must be seen, to catch up after it.
        options: dict[str, Any] = {
            "decode_responses": True,
            # Any str is a valid session id, lone surrogates included (JSON carries them).
            "encoding_errors": "surrogatepass",
            "retry": Retry(NoBackoff(), 0),
            "client_name": self.client_name,
        }
        commands = self._target.commands(options)
        topology = None
        if isinstance(commands, RedisCluster):
            topology = Topology(commands, lambda h, p: self._target.node(h, p, options))
        scripts = Scripts(sharded=topology is not None)
        names, signer, counters = self._names, self._signer, self._counters
        limits = context.history_limits
        listener, clients = self._listener(context, commands, scripts, topology, options)
        runs = Runs(commands, names, signer)
        listener.on_control = lambda message: runs.on_abort(message, context.receiver.abort)
        presence = SharedPresence(commands, names, signer, counters, self.presence_ttl)
        listener.on_presence = lambda message: presence.on_announcement(
            message, context.receiver.remote_members_changed
        )
        self._parts = _Parts(
            context,
            clients,
            Publisher(commands, scripts, names, signer, limits, counters, topology),
            listener,
            Permissions(commands, scripts, names, signer, self._decision_read_back),
            runs,
            presence,
            topology,
        )
        await self._reach(commands)
        context.task_group.start_soon(self._run, name="sessionfanout redis broker")
        with anyio.move_on_after(CONNECT_TIMEOUT):
            await self._connected.wait()
        if not self._connected.is_set():
            raise BrokerUnavailable(f"Redis at {self.url} did not answer its subscriptions")

    def _listener(
        self,
        context: BrokerContext,
        commands: Client,
        scripts: Scripts,
        topology: Topology | None,
        options: dict[str, Any],
    ) -> tuple[Listener, tuple[Client, ...]]:
        """The listener, on one server's pub/sub connection, or on a cluster's
        (classic pub/sub on any node, session channels on their shards); and
        the clients to close."""
        target, names = self._target, self._names
        history = History.with_limits(context.history_limits)
        clients: tuple[Client, ...] = (commands,)
        if topology is None:
            server = target.server(options)
            clients += (server,)
            subscriber = lambda: server  # noqa: E731
        else:
            subscriber = lambda: self._any_node(topology, options)  # noqa: E731
        listener = Listener(
            commands, subscriber, scripts, names, self._signer, history, self._counters
        )
        listener.start(context.receiver, context.clock, context.task_group)
        if topology is not None:
            connect = lambda host, port: target.node(host, port, options)  # noqa: E731
            listener.shards = Shards(
                topology, connect, listener.dispatch, listener.catch_up, names.session_of
            )
            listener.shards.start(context.task_group)
        return listener, clients

    async def _reach(self, commands: Client) -> None:
        try:
            if isinstance(commands, RedisCluster):
                await commands.initialize()
            else:
                await commands.ping()
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot reach Redis at {self.url}: {exc}") from exc

    def _any_node(self, topology: Topology, options: dict[str, Any]) -> aioredis.Redis:
        """A cluster broadcasts classic pub/sub to every node: any one will do,
        preferably not the one this connection just lost."""
        nodes = topology.client.get_nodes()
        node = random.choice([n for n in nodes if n.name != self._last_node] or nodes)
        self._last_node = node.name
        return self._target.node(node.host, int(node.port), options)

    async def _run(self) -> None:
        with self._scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._get().publisher.run, self._lost_connection)
                tg.start_soon(self._keep_listening)
                tg.start_soon(self._get().runs.refresh)
                tg.start_soon(self._get().presence.run)

    async def _keep_listening(self) -> None:
        """The pub/sub connection, reconnected with backoff whenever it fails."""
        delay = 0.05

        def connected() -> None:
            nonlocal delay
            delay = 0.05  # the backoff starts again after each connection that worked
            self._on_connected()

        while True:
            with anyio.CancelScope() as self._connection_scope:
                try:
                    await self._get().listener.listen(connected)
                except CONNECTION_ERRORS as exc:
                    logger.info("Redis pub/sub unavailable (%s); retrying in %.2fs", exc, delay)
                except Exception as exc:  # a bug: reconnect and catch up, never end the hub
                    logger.error("the Redis listener failed; reconnecting", exc_info=exc)
            # Publishing needs only the command connection: it goes on while this
            # one reconnects (the catch-up then delivers what it missed here).
            if self._available and not await self._commands_answer():
                self._lost_connection()
            await anyio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.reconnect_max_delay)

    def _decision_read_back(self, message: str) -> None:
        try:
            self._get().listener.on_decision(message)
        except ForgedEnvelope as exc:
            self._counters.forged += 1
            logger.warning("dropped a forged permission decision: %s", exc)

    def _on_connected(self) -> None:
        if self._connected.is_set():
            self._counters.reconnects += 1
            parts = self._get()
            parts.presence.refresh_soon()
            for session_id in parts.listener.watching:  # announcements may be lost
                parts.context.receiver.remote_members_changed(session_id)
        self._available = True
        self._connected.set()

    async def _commands_answer(self) -> bool:
        """Can this process publish? On a cluster: does any node answer."""
        parts = self._get()
        with anyio.move_on_after(PING_TIMEOUT), contextlib.suppress(*CONNECTION_ERRORS):
            if parts.topology is not None:
                return await parts.topology.refresh()
            await parts.clients[0].ping()
            return True
        return False

    def _lost_connection(self) -> None:
        """Publishing failed: refuse publications until the listener is back."""
        if self._available:
            logger.warning("lost Redis at %s; reconnecting", self.url)
        self._available = False
        self._get().publisher.fail_all(BrokerUnavailable("Redis connection lost"))
        self._connection_scope.cancel()  # the listener reconnects and catches up

    async def flush(self) -> None:
        """Wait until what this process published has come back to it.

        A marker published after everything else on this process's own control
        channel arrives after every earlier message (Redis keeps the order on
        a connection), so once it is here, local subscribers have it all. On a
        cluster, shard channels come on other connections: then the sessions
        watched here are waited for until they have what this process committed.
        """
        if not self._available:
            return
        markers = self._get().listener.markers
        marker = secrets.token_urlsafe(9)
        arrived = markers[marker] = anyio.Event()
        try:
            await self._enqueue(Outgoing(("PUBLISH", self._names.control_channel, marker)))
            with anyio.move_on_after(FLUSH_TIMEOUT):
                await arrived.wait()
                if self._get().topology is not None:
                    await self._delivered(self._get().publisher.committed())
        except BrokerUnavailable:
            pass
        finally:
            del markers[marker]

    async def _delivered(self, committed: dict[str, int]) -> None:
        listener = self._get().listener
        while True:
            behind = [
                session_id
                for session_id, seq in committed.items()
                if session_id in listener.watching
                and (known := listener.history.peek(session_id)) is not None
                and known.seq < seq
            ]
            if not behind:
                return
            await anyio.sleep(0.01)

    async def aclose(self) -> None:
        self._available = False
        self._scope.cancel()
        if self._parts is None:
            return
        self._parts.publisher.fail_all(BrokerUnavailable("the broker is closed"))
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(FLUSH_TIMEOUT), contextlib.suppress(BrokerUnavailable):
                await self._parts.presence.close()
            for client in self._parts.clients:
                with contextlib.suppress(*CONNECTION_ERRORS):
                    await close(client)
            if self._parts.topology is not None:
                await self._parts.topology.aclose()

    def statistics(self) -> Mapping[str, int]:
        watched = len(self._parts.listener.watching) if self._parts else 0
        return {**attrs.asdict(self._counters), "watched_sessions": watched}

    # -- publishing -----------------------------------------------------------

    def publish(self, session_id: str, body: str, *, is_delta: bool) -> Outgoing:
        return self._enqueue(Outgoing(session_id=session_id, body=body, is_delta=is_delta))

    def publish_global(self, text: str) -> Outgoing:
        message = self._signer.pack("global", text)
        return self._enqueue(Outgoing(("PUBLISH", self._names.global_channel, message)))

    def _enqueue(self, outgoing: Outgoing) -> Outgoing:
        if not self._available:
            raise BrokerUnavailable(f"Redis at {self.url} is unavailable")
        return self._get().publisher.enqueue(outgoing)

    # -- sessions ---------------------------------------------------------------

    async def watch(self, session_id: str) -> None:
        await self._get().listener.watch(session_id, self._available)

    def unwatch(self, session_id: str) -> None:
        self._get().listener.unwatch(session_id)

    def state(self, session_id: str) -> SessionState:
        return self._get().listener.history.state(session_id, self._get().context.clock())

    def replay(self, session_id: str, last_seq: int, epoch: str | None) -> Sequence[str] | None:
        return self._get().listener.history.replay(session_id, last_seq, epoch)

    def next_deadline(self) -> float | None:
        return None  # a session is kept here only while watched; Redis expires the rest

    def run_due(self, now: float) -> None:
        pass

    def known_sessions(self) -> int:
        return len(self._get().listener.history)

    # -- permissions ---------------------------------------------------------------

    async def open_permission(self, request_id: str, session_id: str, ttl: float) -> None:
        await self._get().permissions.open(request_id, session_id, ttl)

    async def answer_permission(
        self, request_id: str, decision: PermissionDecision, subscribed: Set[str]
    ) -> bool:
        return await self._get().permissions.answer(request_id, decision, subscribed)

    async def expire_permission(self, request_id: str) -> bool:
        return await self._get().permissions.expire(request_id)

    # -- agents ------------------------------------------------------------------

    async def run_started(self, session_id: str) -> None:
        await self._get().runs.started(session_id)

    async def run_ended(self, session_id: str) -> None:
        await self._get().runs.ended(session_id)

    async def is_running(self, session_id: str) -> bool:
        return await self._get().runs.is_running(session_id)

    async def abort(self, session_id: str, reason: str) -> bool:
        return await self._get().runs.abort(session_id, reason)

    # -- presence -------------------------------------------------------------------

    def share_member(
        self, session_id: str, connection_id: str, info: dict[str, Any] | None, *, present: bool
    ) -> None:
        self._get().presence.share(session_id, connection_id, info, present=present)

    async def remote_members(self, session_id: str) -> Mapping[str, dict[str, Any] | None]:
        return await self._get().presence.remote(session_id)

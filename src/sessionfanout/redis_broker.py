"""``RedisBroker``: several processes, one sequence and one history per session.

    from sessionfanout.redis_broker import RedisBroker
    async with Hub(config, broker=RedisBroker("redis://127.0.0.1:6379/0")) as hub: ...

Needs the ``redis`` extra (redis-py's asyncio client, so the hub runs on
asyncio). How it works:

- Publishing is an optimistic compare-and-append. The signature binds each
  event to its epoch and seq (see ``envelope``), and the secret never goes to
  Redis, so the publisher numbers events itself: it predicts where each
  session it publishes to is (epoch and last seq; the last few thousand
  sessions), signs the session's events of a round for the places that
  follow, and a Lua script appends them (capped history list, idle TTL,
  one message each on the session's channel) only if the session is exactly
  there; a session without an epoch starts with the one the publisher
  proposes. Otherwise the script writes nothing and says where the session
  is; those events are signed again for that place and sent before anything
  newer. A round is refused only because another publication was committed,
  so under contention they all make progress. One task sends every
  publication of this process in call order, pipelined.
- This process subscribes (on a pub/sub connection of its own) to the
  channels of the sessions it has local subscribers for, plus one channel for
  global events and one for permission decisions. The first local
  subscriber of a session loads its history from Redis, so resume works on
  any process.
- Each received event is checked against the last seq delivered for its
  session: a duplicate is dropped; a gap is filled from the history in Redis
  before going on; when the history no longer reaches back (or the session's
  epoch changed, say Redis restarted empty), local subscribers get
  ``subscribed`` with ``resumed: false``, the protocol's "reload" signal.
- When Redis goes away, ``publish`` raises ``BrokerUnavailable`` at once; the
  broker reconnects with backoff, subscribes again and catches every watched
  session up as above, so no client sees a silent gap. When only the pub/sub
  connection drops, publishing goes on: local subscribers get what was
  published meanwhile from that catch-up.
- A permission request is a key holding its session id; an answer from any
  process is checked and claimed by one script (first valid answer wins,
  exactly once) and published to every process; the timeout claims it the
  same way.

Keys and channels (``prefix`` is ``sessionfanout`` by default; entries and
messages as in ``envelope``):

- ``{prefix}:s:meta:{session}``: hash of ``epoch``, ``seq`` (the last one
  committed) and ``bytes`` (the history's size).
- ``{prefix}:s:log:{session}``: the history, entries ``seq|sig|kind|body``.
- ``{prefix}:ev:{session}``: channel of ``epoch|seq|sig|kind|body``.
- ``{prefix}:global`` and ``{prefix}:permission``: channels of ``sig|body``.
- ``{prefix}:control:{process}``: this process's flush markers.
- ``{prefix}:perm:{request}``: a pending permission request's session id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import secrets
from collections import OrderedDict, deque
from collections.abc import Generator, Mapping, Set
from typing import Any

import anyio
import anyio.abc
import attrs
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from .agent import PermissionDecision
from .broker import BrokerContext
from .envelope import Envelope, Signer
from .errors import BrokerUnavailable, ForgedEnvelope, InvalidArgument
from .history import Recorded

__all__ = ("RedisBroker",)

logger = logging.getLogger("sessionfanout.redis")

# KEYS: meta, log. ARGV: channel, epoch, fresh ("1": the epoch is new, to start
# the session with if it has none), first seq, max events, max bytes, TTL (ms),
# then the entries, numbered from the first seq. Returns the last seq, or where
# the session is ({epoch or "", seq}) when that is not where the entries go.
PUBLISH = """
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
local epoch, seq = meta[1], tonumber(meta[2]) or 0
local fresh = not epoch and ARGV[3] == '1'
if fresh then
  epoch, seq = ARGV[2], 0
end
if epoch ~= ARGV[2] or seq + 1 ~= tonumber(ARGV[4]) then
  return {meta[1] or '', tonumber(meta[2]) or 0}
end
local bytes = 0
if fresh then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch)
else
  bytes = tonumber(redis.call('HGET', KEYS[1], 'bytes')) or 0
end
local n = 0
for i = 8, #ARGV do
  n = redis.call('RPUSH', KEYS[2], ARGV[i])
  bytes = bytes + #ARGV[i]
  redis.call('PUBLISH', ARGV[1], epoch .. '|' .. ARGV[i])
end
local max_events, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
while n > 0 and (n > max_events or bytes > max_bytes) do
  bytes = bytes - #redis.call('LPOP', KEYS[2])
  n = n - 1
end
seq = seq + #ARGV - 7
redis.call('HSET', KEYS[1], 'seq', seq, 'bytes', bytes)
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
return seq
"""

STATE = """
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
return {meta[1], meta[2] or '0', redis.call('LRANGE', KEYS[2], 0, -1)}
"""

ANSWER = """
local session = redis.call('GET', KEYS[1])
if not session then return 0 end
for i = 3, #ARGV do
  if ARGV[i] == session then
    redis.call('DEL', KEYS[1])
    redis.call('PUBLISH', ARGV[1], ARGV[2])
    return 1
  end
end
return 0
"""

CONNECTION_ERRORS = (RedisError, OSError, TimeoutError)
PIPELINE_MAX = 512
PREDICTIONS_MAX = 4096
PING_TIMEOUT = 5.0


@attrs.define
class _Outgoing:
    """One publication waiting for its turn on the wire: a session event
    (``session_id`` set; numbered and signed when it is sent) or a ``command``."""

    command: tuple[Any, ...] = ()
    session_id: str | None = None
    body: str = ""
    is_delta: bool = False
    done: anyio.Event = attrs.field(factory=anyio.Event)
    error: BaseException | None = None

    def finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self.done.set()

    def __await__(self) -> Generator[Any, None, None]:
        # Awaitable without a coroutine object, so not awaiting it is fine.
        return self._wait().__await__()

    async def _wait(self) -> None:
        await self.done.wait()
        if self.error is not None:
            raise BrokerUnavailable(f"publish failed: {self.error}") from self.error


class RedisBroker:
    """The Redis backplane; see the module docstring."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "sessionfanout",
        secret: str | bytes | None = None,
        reconnect_max_delay: float = 5.0,
        client_name: str | None = None,
    ) -> None:
        """``secret`` turns on signing (every process needs the same one);
        ``client_name`` names this process's connections in Redis's CLIENT LIST."""
        if not prefix or "|" in prefix:
            raise InvalidArgument("prefix must be a non-empty string without '|'")
        self.url = url
        self.prefix = prefix
        self.reconnect_max_delay = reconnect_max_delay
        self.client_name = client_name
        self._signer = Signer(secret)
        self._context: BrokerContext | None = None
        self._commands: aioredis.Redis | None = None
        self._subscriber: aioredis.Redis | None = None
        self._pubsub: PubSub | None = None
        self._available = False
        self._outgoing: deque[_Outgoing] = deque()
        self._wake_publisher = anyio.Event()
        self._watching: dict[str, int] = {}
        self._seeding: dict[str, anyio.Event] = {}
        self._confirmed: dict[str, anyio.Event] = {}
        # Where each session this process publishes to is believed to be: its
        # epoch and last seq, least recently used first. A miss costs a retry.
        self._predictions: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._connected = anyio.Event()
        self._scope = anyio.CancelScope()
        self._connection_scope = anyio.CancelScope()
        self._process_id = secrets.token_urlsafe(9)
        self._markers: dict[str, anyio.Event] = {}
        self._counters = dict.fromkeys(
            (
                "published",
                "retried",
                "received",
                "forged",
                "gaps_filled",
                "resyncs",
                "reconnects",
                "failed",
            ),
            0,
        )

    # -- names ----------------------------------------------------------------

    def _key(self, session_id: str, part: str) -> str:
        return f"{self.prefix}:s:{part}:{session_id}"

    def _channel(self, session_id: str) -> str:
        return f"{self.prefix}:ev:{session_id}"

    @property
    def _global_channel(self) -> str:
        return f"{self.prefix}:global"

    @property
    def _permission_channel(self) -> str:
        return f"{self.prefix}:permission"

    @property
    def _control_channel(self) -> str:
        return f"{self.prefix}:control:{self._process_id}"

    def _ttl_ms(self) -> int:
        """A session's keys live this long after its last event (the hub's idle TTL)."""
        return max(1, int(self._ctx().history.idle_ttl * 1000))

    # -- lifecycle ------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._available

    async def start(self, context: BrokerContext) -> None:
        self._context = context
        # No silent retries: a lost connection must be seen, to catch up after it.
        options: dict[str, Any] = {
            "decode_responses": True,
            # Any str is a valid session id, lone surrogates included (JSON carries them).
            "encoding_errors": "surrogatepass",
            "retry": Retry(NoBackoff(), 0),
            "client_name": self.client_name,
        }
        self._commands = aioredis.Redis.from_url(self.url, **options)
        self._subscriber = aioredis.Redis.from_url(self.url, **options)
        self._scripts = {
            name: self._commands.register_script(source)
            for name, source in (("publish", PUBLISH), ("state", STATE), ("answer", ANSWER))
        }
        try:
            await self._load_scripts()
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot reach Redis at {self.url}: {exc}") from exc
        context.task_group.start_soon(self._run, name="sessionfanout redis broker")
        with anyio.fail_after(10):
            await self._connected.wait()

    async def _run(self) -> None:
        with self._scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._publisher)
                tg.start_soon(self._listener)

    async def flush(self) -> None:
        """Wait until what this process published has come back to it.

        A marker published after everything else on this process's own control
        channel arrives after every earlier message (Redis keeps the order on
        a connection), so once it is here, local subscribers have it all.
        """
        if not self._available:
            return
        marker = secrets.token_urlsafe(9)
        arrived = self._markers[marker] = anyio.Event()
        try:
            await self._enqueue(_Outgoing(("PUBLISH", self._control_channel, marker)))
            with anyio.move_on_after(5):
                await arrived.wait()
        except BrokerUnavailable:
            pass
        finally:
            del self._markers[marker]

    async def aclose(self) -> None:
        self._available = False
        self._scope.cancel()
        self._fail_outgoing(BrokerUnavailable("the broker is closed"))
        with anyio.CancelScope(shield=True):
            for client in (self._commands, self._subscriber):
                if client is not None:
                    with contextlib.suppress(*CONNECTION_ERRORS):
                        await client.aclose()

    def statistics(self) -> Mapping[str, int]:
        return {**self._counters, "watched_sessions": len(self._watching)}

    def _ctx(self) -> BrokerContext:
        assert self._context is not None, "RedisBroker used before start()"
        return self._context

    async def _load_scripts(self) -> None:
        assert self._commands is not None
        for script in self._scripts.values():
            await self._commands.script_load(script.script)

    # -- publishing -----------------------------------------------------------

    def publish(self, session_id: str, body: str, is_delta: bool) -> _Outgoing:
        return self._enqueue(_Outgoing(session_id=session_id, body=body, is_delta=is_delta))

    def publish_global(self, text: str) -> _Outgoing:
        message = self._signer.pack("global", text)
        return self._enqueue(_Outgoing(("PUBLISH", self._global_channel, message)))

    def _enqueue(self, outgoing: _Outgoing) -> _Outgoing:
        if not self._available:
            raise BrokerUnavailable(f"Redis at {self.url} is unavailable")
        self._outgoing.append(outgoing)
        self._wake_publisher.set()
        return outgoing

    def _fail_outgoing(self, error: BaseException) -> None:
        while self._outgoing:
            self._counters["failed"] += 1
            self._outgoing.popleft().finish(error)

    async def _publisher(self) -> None:
        """Sends every publication in call order, as many per round trip as are waiting."""
        assert self._commands is not None
        while True:
            if not self._outgoing:
                self._wake_publisher = anyio.Event()
                await self._wake_publisher.wait()
                continue
            batch = self._next_batch()
            try:
                await self._send(batch)
            except CONNECTION_ERRORS as exc:
                logger.warning("publishing to Redis failed: %s", exc)
                for outgoing in batch:
                    if not outgoing.done.is_set():  # not committed in an earlier round
                        self._counters["failed"] += 1
                        outgoing.finish(exc)
                self._lost_connection()

    def _next_batch(self) -> list[_Outgoing]:
        """What goes in the next round trip: the waiting publications, in call order.

        A command (a flush marker, a global event) follows no session event in
        its batch: such an event may be sent again after the batch, and must
        not arrive after what was published later.
        """
        outgoing, batch = self._outgoing, [self._outgoing.popleft()]
        events = batch[0].session_id is not None
        while outgoing and len(batch) < PIPELINE_MAX:
            if outgoing[0].session_id is None:
                if events:
                    break
            else:
                events = True
            batch.append(outgoing.popleft())
        return batch

    async def _send(self, batch: list[_Outgoing]) -> None:
        """Send a batch; what went to a session that was not where predicted goes again."""
        assert self._commands is not None
        while batch:
            calls = self._calls(batch)
            async with self._commands.pipeline(transaction=False) as pipe:
                for command, _, _ in calls:
                    pipe.execute_command(*command)
                results = await pipe.execute(raise_on_error=False)
            retry: list[_Outgoing] = []
            reload = False
            for (_, group, epoch), result in zip(calls, results, strict=True):
                session_id = group[0].session_id
                if isinstance(result, NoScriptError):
                    reload = True  # not run: Redis restarted and lost the script
                    retry += group
                elif isinstance(result, Exception):
                    self._counters["failed"] += len(group)
                    for outgoing in group:
                        outgoing.finish(result)
                elif isinstance(result, list):
                    assert session_id is not None
                    actual_epoch, actual_seq = result
                    self._predict(session_id, actual_epoch or None, int(actual_seq))
                    self._counters["retried"] += len(group)
                    retry += group
                else:
                    if session_id is not None:
                        self._predict(session_id, epoch, int(result))
                    self._counters["published"] += len(group)
                    for outgoing in group:
                        outgoing.finish()
            if reload:
                await self._load_scripts()
            batch = retry

    def _calls(self, batch: list[_Outgoing]) -> list[tuple[tuple[Any, ...], list[_Outgoing], str]]:
        """One command per session (its events in call order), and the epoch it signs for."""
        groups: list[list[_Outgoing]] = []
        runs: dict[str, list[_Outgoing]] = {}
        for outgoing in batch:
            session_id = outgoing.session_id
            if session_id is None:
                groups.append([outgoing])
            elif session_id in runs:
                runs[session_id].append(outgoing)
            else:
                groups.append(runs.setdefault(session_id, [outgoing]))
        history = self._ctx().history
        limits = (history.max_events, history.max_bytes, self._ttl_ms())
        calls = []
        for group in groups:
            session_id = group[0].session_id
            if session_id is None:
                calls.append((group[0].command, group, ""))
                continue
            predicted = self._predictions.get(session_id)
            if predicted is None:
                (epoch, seq), fresh = (secrets.token_urlsafe(9), 0), "1"
            else:
                (epoch, seq), fresh = predicted, "0"
            pack = self._signer.pack_entry
            entries = [
                pack(session_id, epoch, seq + n, o.body, o.is_delta) for n, o in enumerate(group, 1)
            ]
            command = (
                "EVALSHA",
                self._scripts["publish"].sha,
                2,
                self._key(session_id, "meta"),
                self._key(session_id, "log"),
                self._channel(session_id),
                epoch,
                fresh,
                seq + 1,
                *limits,
                *entries,
            )
            calls.append((command, group, epoch))
        return calls

    def _predict(self, session_id: str, epoch: str | None, seq: int) -> None:
        """Where the session is now; None: it has no epoch, the next round starts one."""
        predictions = self._predictions
        if epoch is None:
            predictions.pop(session_id, None)
            return
        predictions[session_id] = (epoch, seq)
        predictions.move_to_end(session_id)
        if len(predictions) > PREDICTIONS_MAX:
            predictions.popitem(last=False)

    def _lost_connection(self) -> None:
        if self._available:
            logger.warning("lost Redis at %s; reconnecting", self.url)
        self._available = False
        self._fail_outgoing(BrokerUnavailable("Redis connection lost"))
        self._connection_scope.cancel()  # the listener reconnects and catches up

    # -- receiving -------------------------------------------------------------

    async def _listener(self) -> None:
        """Owns the pub/sub connection: (re)subscribes, catches up, dispatches."""
        delay = 0.05
        while True:
            with anyio.CancelScope() as self._connection_scope:
                try:
                    await self._listen()
                except CONNECTION_ERRORS as exc:
                    logger.info("Redis pub/sub unavailable (%s); retrying in %.2fs", exc, delay)
                else:
                    delay = 0.05
            # Publishing needs only the command connection: it goes on while this
            # one reconnects (the catch-up then delivers what it missed here).
            if self._available and not await self._commands_answer():
                self._lost_connection()
            await anyio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.reconnect_max_delay)

    async def _commands_answer(self) -> bool:
        assert self._commands is not None
        with anyio.move_on_after(PING_TIMEOUT), contextlib.suppress(*CONNECTION_ERRORS):
            await self._commands.ping()
            return True
        return False

    async def _listen(self) -> None:
        assert self._subscriber is not None
        pubsub = self._subscriber.pubsub()
        try:
            await self._load_scripts()
            await self._subscribe_all(pubsub)
            # Only now: until here, ``watch`` leaves new sessions to _subscribe_all.
            self._pubsub = pubsub
            if self._connected.is_set():
                self._counters["reconnects"] += 1
            self._available = True
            self._connected.set()
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None:
                    await self._dispatch(message)
        finally:
            self._pubsub = None
            with anyio.CancelScope(shield=True), contextlib.suppress(*CONNECTION_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py

    async def _subscribe_all(self, pubsub: PubSub) -> None:
        """Subscribe to every channel this process needs; catch up each watched session.

        Sessions watched meanwhile are subscribed and caught up too.
        """
        subscribed: set[str] = set()
        while True:
            wanted: dict[str, str | None] = dict.fromkeys(
                (self._global_channel, self._permission_channel, self._control_channel)
            )
            wanted.update((self._channel(s), s) for s in self._watching)
            missing = {c: s for c, s in wanted.items() if c not in subscribed}
            if not missing:
                return
            await pubsub.subscribe(*missing)
            await self._read_until_confirmed(pubsub, set(missing))
            subscribed.update(missing)
            for session_id in missing.values():
                if session_id is not None and session_id in self._watching:
                    await self._catch_up(session_id)

    async def _read_until_confirmed(self, pubsub: PubSub, channels: set[str]) -> None:
        while channels:
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            if message["type"] == "subscribe":
                channels.discard(message["channel"])
            await self._dispatch(message)

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "subscribe":
            confirmed = self._confirmed.get(channel)
            if confirmed is not None:
                confirmed.set()
            return
        if kind != "message":
            return
        data: str = message["data"]
        self._counters["received"] += 1
        try:
            if channel == self._control_channel:
                marker = self._markers.get(data)
                if marker is not None:
                    marker.set()
            elif channel == self._global_channel:
                self._ctx().receiver.deliver_global(self._signer.unpack("global", data))
            elif channel == self._permission_channel:
                self._on_decision(self._signer.unpack("permission", data))
            else:
                session_id = channel[len(self._channel("")) :]
                seeding = self._seeding.get(session_id)
                if seeding is not None:
                    await seeding.wait()
                await self._on_event(session_id, self._signer.unpack_message(session_id, data))
        except ForgedEnvelope as exc:
            self._counters["forged"] += 1
            logger.warning("dropped a forged or malformed message on %s: %s", channel, exc)

    async def _on_event(self, session_id: str, envelope: Envelope) -> None:
        context = self._ctx()
        verdict = context.history.record(
            session_id, envelope.epoch, envelope.seq, envelope.text, self._ctx().clock()
        )
        if verdict is Recorded.NEXT:
            context.receiver.deliver(session_id, envelope.seq, envelope.text, envelope.is_delta)
        elif verdict in (Recorded.GAP, Recorded.OTHER_EPOCH):
            await self._catch_up(session_id)

    def _on_decision(self, body: str) -> None:
        data = json.loads(body)
        decision = PermissionDecision(data["r"], bool(data["a"]), bool(data["w"]))
        self._ctx().receiver.decided(decision.request_id, decision)

    # -- catching up -----------------------------------------------------------

    async def _fetch(self, session_id: str) -> tuple[str, int, list[str]]:
        assert self._commands is not None
        epoch, seq, entries = await self._commands.evalsha(
            self._scripts["state"].sha,
            2,
            self._key(session_id, "meta"),
            self._key(session_id, "log"),
            secrets.token_urlsafe(9),
            self._ttl_ms(),
        )
        return str(epoch), int(seq), list(entries)

    def _verified(self, session_id: str, epoch: str, entries: list[str]) -> list[Envelope]:
        envelopes = []
        for entry in entries:
            try:
                envelopes.append(self._signer.unpack_entry(session_id, epoch, entry))
            except ForgedEnvelope as exc:
                self._counters["forged"] += 1
                logger.warning("dropped a forged history entry of %s: %s", session_id, exc)
        return envelopes

    def _unbroken(
        self, session_id: str, epoch: str, seq: int, entries: list[str]
    ) -> list[Envelope]:
        """The verified entries that end at ``seq`` with no seq missing, oldest first.

        What comes before a hole (an entry dropped as forged, or deleted) cannot
        be delivered in order: it is left out, as if the history were shorter.
        """
        run: list[Envelope] = []
        for envelope in reversed(self._verified(session_id, epoch, entries)):
            if envelope.seq < seq - len(run):
                break
            if envelope.seq == seq - len(run):  # skips copies and what lies beyond seq
                run.append(envelope)
        run.reverse()
        return run

    async def _seed(self, session_id: str) -> None:
        epoch, seq, entries = await self._fetch(session_id)
        frames = [e.text for e in self._unbroken(session_id, epoch, seq, entries)]
        self._ctx().history.seed(session_id, epoch, seq, frames, self._ctx().clock())

    async def _catch_up(self, session_id: str) -> None:
        """Deliver what this process missed of the session, or tell its clients to reload."""
        seeding = self._seeding.get(session_id)
        if seeding is not None:
            await seeding.wait()  # a watch is loading the session: go on from there
        context = self._ctx()
        known = context.history.peek(session_id)
        epoch, seq, entries = await self._fetch(session_id)
        if known is not None and known.epoch == epoch and known.seq >= seq:
            return
        envelopes = self._unbroken(session_id, epoch, seq, entries)
        first = envelopes[0].seq if envelopes else seq + 1
        if known is not None and known.epoch == epoch and first <= known.seq + 1:
            now = self._ctx().clock()
            for envelope in envelopes:
                verdict = context.history.record(
                    session_id, epoch, envelope.seq, envelope.text, now
                )
                if verdict is Recorded.NEXT:
                    context.receiver.deliver(
                        session_id, envelope.seq, envelope.text, envelope.is_delta
                    )
            self._counters["gaps_filled"] += 1
            return
        context.history.seed(
            session_id, epoch, seq, [e.text for e in envelopes], self._ctx().clock()
        )
        if known is not None:
            self._counters["resyncs"] += 1
            context.receiver.resync(session_id)

    # -- watching ---------------------------------------------------------------

    async def watch(self, session_id: str) -> None:
        count = self._watching.get(session_id, 0)
        self._watching[session_id] = count + 1
        if count or not self._available:
            return  # already watched, or the listener catches it up when Redis is back
        seeding = self._seeding[session_id] = anyio.Event()
        channel = self._channel(session_id)
        try:
            pubsub = self._pubsub
            if pubsub is not None:  # else the listener, reconnecting, subscribes it
                try:
                    confirmed = self._confirmed[channel] = anyio.Event()
                    await pubsub.subscribe(channel)
                    with anyio.fail_after(10):
                        await confirmed.wait()
                except CONNECTION_ERRORS as exc:
                    # Still watched: the listener reconnects, subscribes and catches
                    # it up from where the seed below leaves it.
                    logger.info("subscribing to %s is delayed: %s", session_id, exc)
            await self._seed(session_id)
        except CONNECTION_ERRORS as exc:
            logger.info("watching %s is delayed: %s", session_id, exc)
        except BaseException:
            self.unwatch(session_id)
            raise
        finally:
            self._confirmed.pop(channel, None)
            del self._seeding[session_id]
            seeding.set()

    def unwatch(self, session_id: str) -> None:
        count = self._watching.get(session_id, 0)
        if count > 1:
            self._watching[session_id] = count - 1
            return
        self._watching.pop(session_id, None)
        self._ctx().history.forget(session_id)
        self._ctx().task_group.start_soon(self._unsubscribe, session_id)

    async def _unsubscribe(self, session_id: str) -> None:
        pubsub = self._pubsub
        if session_id in self._watching or pubsub is None:
            return
        # On failure, nothing to undo: a new connection subscribes only to what is watched.
        with contextlib.suppress(*CONNECTION_ERRORS):
            await pubsub.unsubscribe(self._channel(session_id))

    # -- permissions ---------------------------------------------------------------

    def _permission_key(self, request_id: str) -> str:
        return f"{self.prefix}:perm:{request_id}"

    async def open_permission(self, request_id: str, session_id: str, ttl: float) -> None:
        assert self._commands is not None
        try:
            # A little longer than the deadline: the timeout claims it with DEL.
            await self._commands.set(
                self._permission_key(request_id), session_id, px=int(ttl * 1000) + 60_000
            )
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot open the permission request: {exc}") from exc

    async def answer_permission(
        self, request_id: str, decision: PermissionDecision, subscribed: Set[str]
    ) -> bool:
        assert self._commands is not None
        if not subscribed:
            return False
        body = json.dumps(
            {"r": request_id, "a": decision.allowed, "w": decision.always_allow},
            separators=(",", ":"),
        )
        try:
            won = await self._commands.evalsha(
                self._scripts["answer"].sha,
                1,
                self._permission_key(request_id),
                self._permission_channel,
                self._signer.pack("permission", body),
                *subscribed,
            )
        except CONNECTION_ERRORS as exc:
            logger.warning("could not answer permission %s: %s", request_id, exc)
            return False
        return bool(won)

    async def expire_permission(self, request_id: str) -> bool:
        assert self._commands is not None
        try:
            return bool(await self._commands.delete(self._permission_key(request_id)))
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot expire permission {request_id}: {exc}") from exc

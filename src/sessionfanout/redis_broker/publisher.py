"""Publishing: every publication of this process, in call order, pipelined.

Session events are appended by an optimistic compare-and-append. The
signature binds each event to its epoch and seq (see ``envelope``) and the
secret never goes to Redis, so this process numbers events itself: it
predicts where each session it publishes to is (epoch and last seq; the last
few thousand sessions), signs the session's events of a round for the places
that follow, and the publish script appends them only if the session is
exactly there; a session without an epoch starts with the one proposed.
Otherwise the script writes nothing and says where the session is; those
events are signed again for that place and sent before anything newer.
A round is refused only because another publication was committed, so
under contention they all make progress.

On a Redis Cluster each node's share of a round goes in a pipeline of its
own (see ``cluster``): a shard that cannot be reached fails its own
publications (``BrokerUnavailable``), not the others', and a reply that says
the command did not run (CLUSTERDOWN, TRYAGAIN, a slot nobody serves yet)
is sent again for up to ``RETRY_WINDOW``.
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Generator
from typing import Any

import anyio
import attrs
from redis.exceptions import NoScriptError

from ..envelope import Signer
from ..errors import BrokerUnavailable
from ..history import HistoryLimits
from .cluster import NOT_RUN, Topology
from .scripts import CONNECTION_ERRORS, Client, Names, Scripts
from .stats import Counters

__all__ = ()

logger = logging.getLogger("sessionfanout.redis")

PIPELINE_MAX = 512
PREDICTIONS_MAX = 4096
RETRY_WINDOW = 3.0
"""Seconds a round goes on sending what a cluster did not run (a failover)."""
REFUSE_FOR = 0.5
"""Seconds a session whose publication failed is refused (``may_publish``)."""
RETRY_PAUSE = 0.05


@attrs.define
class Outgoing:
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


Call = tuple[tuple[Any, ...], list[Outgoing], str]
"""A command, the publications it carries, and the epoch they were signed for."""


class Publisher:
    """The queue of this process's publications and the task that sends them."""

    def __init__(
        self,
        client: Client,
        scripts: Scripts,
        names: Names,
        signer: Signer,
        limits: HistoryLimits,
        counters: Counters,
        topology: Topology | None = None,
    ) -> None:
        self._client = client
        self._topology = topology
        self._eval = False
        """Send the next round's scripts whole: a server lost them."""
        self._scripts = scripts
        self._names = names
        self._signer = signer
        ttl_ms = max(1, int(limits.idle_ttl * 1000))
        self._limits = (limits.max_events, limits.max_bytes, ttl_ms)
        self._counters = counters
        self._outgoing: deque[Outgoing] = deque()
        self._wake = anyio.Event()
        # Where each session this process publishes to is believed to be: its
        # epoch and last seq, least recently used first. A miss costs a retry.
        self._predictions: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._lost: dict[str, str] = {}
        """Sessions whose store lost committed events (a failover to a replica
        that lagged behind): their epoch, to be replaced by a new one."""
        self._refused: dict[str, float] = {}
        """Sessions whose publication failed, and until when they are refused."""

    def committed(self) -> dict[str, int]:
        """The last seq this process committed, for the sessions it published to lately."""
        return {session_id: seq for session_id, (_, seq) in self._predictions.items()}

    def may_publish(self, session_id: str) -> bool:
        """False for a moment after the session's publication failed."""
        until = self._refused.get(session_id)
        if until is None:
            return True
        if anyio.current_time() < until:
            return False
        del self._refused[session_id]
        return True

    def enqueue(self, outgoing: Outgoing) -> Outgoing:
        self._outgoing.append(outgoing)
        self._wake.set()
        return outgoing

    def fail_all(self, error: BaseException) -> None:
        while self._outgoing:
            self._counters.failed += 1
            self._outgoing.popleft().finish(error)

    async def run(self, lost: Callable[[], None]) -> None:
        """Send every publication in call order, as many per round trip as are
        waiting; a connection error fails the round and calls ``lost``."""
        while True:
            if not self._outgoing:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            batch = self._next_batch()
            try:
                await self._send(batch)
            except CONNECTION_ERRORS as exc:
                logger.warning("publishing to Redis failed: %s", exc)
                self._fail(batch, exc)
                lost()
            except Exception as exc:  # a bug: this round's publications fail, not the broker
                logger.error("publishing a round to Redis failed", exc_info=exc)
                self._fail(batch, exc)

    def _fail(self, batch: list[Outgoing], error: BaseException) -> None:
        for outgoing in batch:
            if not outgoing.done.is_set():  # not committed in an earlier round
                self._counters.failed += 1
                outgoing.finish(error)

    def _next_batch(self) -> list[Outgoing]:
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

    async def _send(self, batch: list[Outgoing]) -> None:
        """Send a batch; what went to a session that was not where predicted goes again."""
        deadline = anyio.current_time() + RETRY_WINDOW
        while batch:
            calls = self._calls(batch)
            self._eval = False
            results = await self._execute([command for command, _, _ in calls])
            retry: list[Outgoing] = []
            pause = False
            for (_, group, epoch), result in zip(calls, results, strict=True):
                if isinstance(result, NoScriptError):
                    self._eval = True  # not run: the server lost the script
                    retry += group
                elif isinstance(result, NOT_RUN) and anyio.current_time() < deadline:
                    pause = True
                    retry += group
                elif isinstance(result, Exception):
                    self._counters.failed += len(group)
                    if group[0].session_id is not None:
                        self._refused[group[0].session_id] = anyio.current_time() + REFUSE_FOR
                    for outgoing in group:
                        outgoing.finish(result)
                elif group[0].session_id is None:  # a command of its own (a marker, a global)
                    group[0].finish()
                elif isinstance(result, list):  # the session was elsewhere: it says where
                    self._elsewhere(group[0].session_id, result[0] or None, int(result[1]))
                    self._counters.retried += len(group)
                    retry += group
                else:
                    self._lost.pop(group[0].session_id, None)
                    self._refused.pop(group[0].session_id, None)
                    self._predict(group[0].session_id, epoch, int(result))
                    self._counters.published += len(group)
                    for outgoing in group:
                        outgoing.finish()
            if pause:
                await anyio.sleep(RETRY_PAUSE)
            batch = retry

    async def _execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Every command's reply or error. On one server a lost connection raises;
        on a cluster it fails only the commands of the node that was lost."""
        if self._topology is not None:
            keys = [str(c[3]) if c[0].startswith("EVAL") else None for c in commands]
            return await self._topology.execute(commands, keys)
        async with self._client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    def _calls(self, batch: list[Outgoing]) -> list[Call]:
        """One command per session (its events in call order), or per other command."""
        groups: list[list[Outgoing]] = []
        runs: dict[str, list[Outgoing]] = {}
        for outgoing in batch:
            session_id = outgoing.session_id
            if session_id is None:
                groups.append([outgoing])
            elif session_id in runs:
                runs[session_id].append(outgoing)
            else:
                groups.append(runs.setdefault(session_id, [outgoing]))
        return [self._call(group) for group in groups]

    def _call(self, group: list[Outgoing]) -> Call:
        session_id = group[0].session_id
        if session_id is None:
            return group[0].command, group, ""
        predicted = self._predictions.get(session_id)
        if session_id in self._lost:
            (epoch, seq), fresh = (secrets.token_urlsafe(9), 0), "2:" + self._lost[session_id]
        elif predicted is None:
            (epoch, seq), fresh = (secrets.token_urlsafe(9), 0), "1"
        else:
            (epoch, seq), fresh = predicted, "0"
        pack = self._signer.pack_entry
        entries = [
            pack(session_id, epoch, seq + n, o.body, o.is_delta) for n, o in enumerate(group, 1)
        ]
        names = self._names
        script = self._scripts.publish
        command = (
            *(("EVAL", script.source) if self._eval else ("EVALSHA", script.sha)),
            2,
            names.key(session_id, "meta"),
            names.key(session_id, "log"),
            names.channel(session_id),
            epoch,
            fresh,
            seq + 1,
            *self._limits,
            *entries,
        )
        return command, group, epoch

    def _elsewhere(self, session_id: str | None, epoch: str | None, seq: int) -> None:
        """A round was refused: the session is at ``epoch`` and ``seq``.

        Behind what this process committed there, in the same epoch, means the
        store lost committed events (a replica that lagged took over): those
        seqs would be numbered again for other events, which subscribers that
        had the lost ones would drop. The session starts a new epoch instead,
        so they are told to reload."""
        if session_id is None:
            return
        predicted = self._predictions.get(session_id)
        if predicted is not None and predicted[0] == epoch and seq < predicted[1]:
            self._lost[session_id] = predicted[0]
            logger.warning(
                "the store of %s lost events %d..%d; starting a new epoch",
                session_id,
                seq + 1,
                predicted[1],
                extra={"session_id": session_id},
            )
        elif self._lost.get(session_id) != epoch:
            self._lost.pop(session_id, None)  # another process moved it on already
        self._predict(session_id, epoch, seq)

    def _predict(self, session_id: str | None, epoch: str | None, seq: int) -> None:
        """Where the session is now; None: it has no epoch, the next round starts one."""
        if session_id is None:
            return
        predictions = self._predictions
        if epoch is None:
            predictions.pop(session_id, None)
            return
        predictions[session_id] = (epoch, seq)
        predictions.move_to_end(session_id)
        if len(predictions) > PREDICTIONS_MAX:
            predictions.popitem(last=False)

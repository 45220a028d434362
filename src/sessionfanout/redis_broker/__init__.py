"""``RedisBroker``: several processes, one sequence and one history per session.

    from sessionfanout.redis_broker import RedisBroker
    async with Hub(config, broker=RedisBroker("redis://127.0.0.1:6379/0")) as hub: ...

Needs the ``redis`` extra (redis-py's asyncio client, so the hub runs on
asyncio). The URL says where Redis is: one server (``redis://``), a Redis
Cluster (``redis+cluster://host:port,...``) or the master that Redis
Sentinel names (``redis+sentinel://host:port,.../name``); see ``connect``.
How it works:

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

- On a cluster, a session's keys and channel share one slot (a hash tag),
  its events travel on sharded pub/sub within its shard, and a failed shard
  fails only its own sessions' publications; after a failover its sessions
  are caught up as after any reconnect (see ``shards``).

The package, one job a module: ``connect`` (the URL and the clients it
makes), ``scripts`` (keys, channels and the Lua scripts), ``publisher``
(numbering and sending this process's publications), ``cluster`` (a
cluster's slot map, and commands sent shard by shard), ``listener`` (the
pub/sub connection, watched sessions, gap fill), ``shards`` (a cluster's
shard subscriptions), ``permissions`` (requests answered from any process),
``runs`` (which process runs an agent) and ``broker`` (the parts put
together, and reconnecting).
"""

from .broker import RedisBroker

__all__ = ("RedisBroker",)

"""Where a session lives in Redis, and the Lua scripts that change it atomically.

Keys and channels (``prefix`` is ``sessionfanout`` by default; entries and
messages as in ``envelope``; ``{tag}`` is a hash tag, see ``Names.tag``):

- ``{prefix}:s:{tag}:meta:{session}``: hash of ``epoch``, ``seq`` (the last
  one committed) and ``bytes`` (the history's size).
- ``{prefix}:s:{tag}:log:{session}``: the history, entries ``seq|sig|kind|body``.
- ``{prefix}:ev:{tag}:{session}``: channel of ``epoch|seq|sig|kind|body``
  (a shard channel on a Redis Cluster).
- ``{prefix}:global`` and ``{prefix}:permission``: channels of ``sig|body``.
- ``{prefix}:control:{process}``: this process's flush markers.
- ``{prefix}:perm:{request}``: a permission request: ``p|<session>`` while
  pending, ``d|<signed decision>`` once answered.
- ``{prefix}:runs:{tag}:{session}``: the processes running its agent (see ``runs``).
- ``{prefix}:presence:{tag}:{session}``: its subscribers on every process, and
  the channel ``{prefix}:presence`` announcing changes (see ``presence``).

On a Redis Cluster every key and the channel of a session share its hash tag,
so they live in one slot: the publish script, which appends to the history
and publishes on the channel, runs atomically on the node that owns it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import attrs
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

__all__ = ()

Client = aioredis.Redis | RedisCluster
"""A command client: one server (direct or found through Sentinel), or a cluster."""

CONNECTION_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)
"""What a lost or unreachable Redis raises (a cluster: also when no node answers,
or no master serves a slot)."""

# KEYS: meta, log. ARGV: channel, epoch, fresh ("1": the epoch is new, to start
# the session with if it has none; "2:<old epoch>": to start the session with
# in place of that one, which lost events in a failover), first seq, max events,
# max bytes, TTL (ms), then the entries, numbered from the first seq. Returns the
# last seq, or where the session is ({epoch or "", seq}) when that is not where
# the entries go.
PUBLISH = """
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
local epoch, seq = meta[1], tonumber(meta[2]) or 0
local fresh = (not epoch and ARGV[3] == '1') or (epoch and ARGV[3] == '2:' .. epoch)
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
  redis.call('PUBLISH', ARGV[1], epoch .. '|' .. ARGV[i])  -- SPUBLISH on a cluster
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

# KEYS: the request. ARGV: channel, signed decision, then the answerer's
# sessions. A pending request holds "p|<session>"; the first valid answer
# turns it into "d|<decision>", which the timeout reads back if the published
# decision never reached the waiting process.
ANSWER = """
local value = redis.call('GET', KEYS[1])
if not value or string.sub(value, 1, 2) ~= 'p|' then return 0 end
local session = string.sub(value, 3)
for i = 3, #ARGV do
  if ARGV[i] == session then
    redis.call('SET', KEYS[1], 'd|' .. ARGV[2], 'KEEPTTL')
    redis.call('PUBLISH', ARGV[1], ARGV[2])
    return 1
  end
end
return 0
"""


TAG_LENGTH = 12


def tag(session_id: str) -> str:
    """The session's hash tag: braces around a digest of its id, so that a
    session id holding braces of its own cannot change the slot of its keys."""
    data = session_id.encode("utf-8", "surrogatepass")
    return "{" + hashlib.blake2b(data, digest_size=TAG_LENGTH // 2).hexdigest() + "}"


@attrs.frozen
class Names:
    """The keys and channels of one deployment (``prefix``) and process."""

    prefix: str
    process_id: str

    def key(self, session_id: str, part: str) -> str:
        return f"{self.prefix}:s:{tag(session_id)}:{part}:{session_id}"

    def channel(self, session_id: str) -> str:
        return f"{self.channel_head}{tag(session_id)}:{session_id}"

    @property
    def channel_head(self) -> str:
        """What every session channel starts with."""
        return f"{self.prefix}:ev:"

    def session_of(self, channel: str) -> str:
        return channel[len(self.channel_head) + TAG_LENGTH + 3 :]

    def permission_key(self, request_id: str) -> str:
        return f"{self.prefix}:perm:{request_id}"

    def runs_key(self, session_id: str) -> str:
        """A sorted set: the processes running the session's agent, scored by
        when that stops being true unless refreshed (ms since the epoch)."""
        return f"{self.prefix}:runs:{tag(session_id)}:{session_id}"

    def presence_key(self, session_id: str) -> str:
        """A sorted set: the session's subscribers on every process, scored by
        when their entry goes stale unless refreshed (ms since the epoch)."""
        return f"{self.prefix}:presence:{tag(session_id)}:{session_id}"

    def control_channel_of(self, process_id: str) -> str:
        return f"{self.prefix}:control:{process_id}"

    @property
    def global_channel(self) -> str:
        return f"{self.prefix}:global"

    @property
    def presence_channel(self) -> str:
        return f"{self.prefix}:presence"

    @property
    def permission_channel(self) -> str:
        return f"{self.prefix}:permission"

    @property
    def control_channel(self) -> str:
        return self.control_channel_of(self.process_id)


@attrs.frozen
class Script:
    source: str
    sha: str = attrs.field(init=False)

    @sha.default
    def _sha(self) -> str:
        return hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()

    async def run(self, client: Client, keys: list[str], *args: Any) -> Any:
        """EVALSHA; EVAL when the server lost it (a restart, or a replica promoted
        on failover), which caches it there again."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


@attrs.frozen
class Scripts:
    """The scripts; on a cluster, session events go on shard channels (SPUBLISH)."""

    sharded: bool = False
    publish: Script = attrs.field(init=False)
    state: Script = Script(STATE)
    answer: Script = Script(ANSWER)

    @publish.default
    def _publish(self) -> Script:
        return Script(PUBLISH.replace("'PUBLISH'", "'SPUBLISH'") if self.sharded else PUBLISH)

"""Where Redis is, from one URL: one server, a Redis Cluster, or a master behind Sentinel.

- ``redis://[[user]:password@]host[:port][/db]`` (also ``rediss://`` and
  ``unix://``): one server, as redis-py's ``from_url`` reads it.
- ``redis+cluster://[[user]:password@]host:port[,host:port...]``: a Redis
  Cluster, found from these seed nodes (any of its nodes will do).
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/name[/db]``:
  the master that these sentinels know as ``name``; the password is the
  data nodes', the sentinels are reached without one.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import unquote

import attrs
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

from ..errors import InvalidArgument
from .scripts import Client

__all__ = ()

Mode = Literal["single", "cluster", "sentinel"]

SCHEMES: dict[str, Mode] = {
    "redis": "single",
    "rediss": "single",
    "unix": "single",
    "redis+cluster": "cluster",
    "redis+sentinel": "sentinel",
}


def _address(text: str, url: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"expected HOST:PORT, got {text!r} in {url!r}")
    return host.strip("[]"), int(port)


async def close(client: Client) -> None:
    """Close a client, and the sentinel connections of one found through Sentinel."""
    await client.aclose()
    if isinstance(client, aioredis.Redis):
        sentinel = getattr(client.connection_pool, "sentinel_manager", None)
        if sentinel is not None:
            await sentinel.aclose()


@attrs.frozen
class Target:
    """A parsed Redis URL (see the module docstring)."""

    mode: Mode
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    master: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> Target:
        if not isinstance(url, str):
            raise InvalidArgument(f"the Redis URL must be a str, not {type(url).__name__}")
        scheme, sep, rest = url.partition("://")
        mode = SCHEMES.get(scheme.lower()) if sep else None
        if mode is None:
            raise InvalidArgument(
                f"unknown Redis URL {url!r}: expected one of "
                + ", ".join(f"{s}://" for s in SCHEMES)
            )
        if mode == "single":
            return cls(mode, url)
        location, _, path = rest.partition("/")
        credentials, at, hosts = location.rpartition("@")
        username, _, password = credentials.partition(":")
        nodes = tuple(_address(h, url) for h in hosts.split(",") if h)
        if not nodes:
            raise InvalidArgument(f"no HOST:PORT in the Redis URL {url!r}")
        parts = [p for p in path.split("/") if p]
        master, db = "", 0
        if mode == "sentinel":
            if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
                raise InvalidArgument(f"expected .../MASTER_NAME[/DB] in {url!r}")
            master, db = unquote(parts[0]), int(parts[1]) if len(parts) == 2 else 0
        elif parts:
            raise InvalidArgument(f"a cluster URL has no path (a cluster has one db): {url!r}")
        return cls(
            mode,
            url,
            nodes,
            master,
            db,
            unquote(username) or None if at else None,
            unquote(password) or None if at else None,
        )

    def _auth(self) -> dict[str, Any]:
        return {"username": self.username, "password": self.password}

    def commands(self, options: dict[str, Any]) -> Client:
        """A client for commands (pipelined publications, scripts)."""
        if self.mode == "cluster":
            nodes = [ClusterNode(host, port) for host, port in self.nodes]
            return RedisCluster(startup_nodes=nodes, **options, **self._auth())
        return self.server(options)

    def server(self, options: dict[str, Any]) -> aioredis.Redis:
        """A client of one server: the URL's, or Sentinel's current master (the
        client asks the sentinels again after each lost connection)."""
        if self.mode == "sentinel":
            untyped: Any = Sentinel  # its constructor has no annotations in redis-py
            # Asking a sentinel that is down fails at once: the next one is asked.
            quick = {"socket_timeout": 2.0, "retry": options.get("retry")}
            sentinel = untyped(list(self.nodes), sentinel_kwargs=quick)
            client: aioredis.Redis = sentinel.master_for(
                self.master, db=self.db, **options, **self._auth()
            )
            return client
        return aioredis.Redis.from_url(self.url, **options)

    def node(self, host: str, port: int, options: dict[str, Any]) -> aioredis.Redis:
        """A client of one node of the cluster (its pub/sub connections)."""
        return aioredis.Redis(host=host, port=port, **options, **self._auth())

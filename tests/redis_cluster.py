"""Real Redis Cluster and Sentinel deployments on free loopback ports, for the tests.

Built from Debian's redis-server and redis-cli (a missing one fails under
CI=true, see ``require``). Persistence is off everywhere: a killed master
loses what its replica had not received, as in a real crash.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.redis_server import RedisServer, require_redis
from tests.servers import require

REDIS_CLI = shutil.which("redis-cli")


def require_redis_cli() -> str:
    require(REDIS_CLI is not None, "redis-cli is not installed")
    assert REDIS_CLI is not None
    return REDIS_CLI


def cli(port: int, *args: str) -> str:
    result = subprocess.run(
        [require_redis_cli(), "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout


def cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher) is free too; both below
    the kernel's ephemeral range, so that no outgoing connection takes them."""
    while True:
        port = random.randrange(10000, 22000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not after {timeout} s: {what}")
        time.sleep(0.05)


class Cluster:
    """``masters`` masters with one replica each, created by ``redis-cli --cluster create``."""

    def __init__(self, folder: Path, masters: int = 3, *, replicas: bool = True) -> None:
        require_redis()
        require_redis_cli()
        self.replicas = replicas
        count = masters * (2 if replicas else 1)
        self.nodes = [RedisServer(self._folder(folder, n)) for n in range(count)]
        for node in self.nodes:
            node.port = cluster_port()
            node.extra = [
                "--cluster-enabled", "yes", "--cluster-node-timeout", "500",
                "--cluster-config-file", "nodes.conf",
                "--cluster-require-full-coverage", "no",
                "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
            ]  # fmt: skip

    @staticmethod
    def _folder(folder: Path, n: int) -> Path:
        path = folder / f"node{n}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def seeds(self) -> str:
        """The seed nodes, as the example app's ``--redis-cluster`` takes them."""
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes if node.process)

    @property
    def url(self) -> str:
        return f"redis+cluster://{self.seeds}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        replicas = ["--cluster-replicas", "1"] if self.replicas else []
        cli(self.nodes[0].port, "--cluster", "create", *addresses, *replicas, "--cluster-yes")
        wait_until(self.healthy, 30, "the cluster is up")
        wait_until(self._replicas_synced, 30, "every replica has its master's data")

    def _replicas_synced(self) -> bool:
        """Only a replica in sync can take over: a failover test waits for this."""
        roles = [cli(node.port, "info", "replication") for node in self.nodes]
        replicas = [r for r in roles if "role:slave" in r]
        return len(replicas) == len(self.nodes) // 2 * self.replicas and all(
            "master_link_status:up" in r for r in replicas
        )

    def healthy(self) -> bool:
        """Every slot served by a live master, as every live node sees it."""
        live = {node.port for node in self.nodes if node.process is not None}
        try:
            return all(
                "cluster_state:ok" in cli(port, "cluster", "info")
                and self._slots_served(port, live) == 16384
                for port in live
            )
        except subprocess.CalledProcessError:
            return False

    @staticmethod
    def _slots_served(port: int, live: set[int]) -> int:
        """How many slots the node at ``port`` sees served by a live master."""
        served = 0
        for line in cli(port, "cluster", "nodes").splitlines():
            fields = line.split()
            owner = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            if "master" not in fields[2] or "fail" in fields[2] or owner not in live:
                continue
            for span in fields[8:]:
                low, _, high = span.partition("-")
                served += int(high or low) - int(low) + 1
        return served

    def live_masters(self) -> set[int]:
        return {
            node.port
            for node in self.nodes
            if node.process is not None and "role:master" in cli(node.port, "info", "replication")
        }

    def master_of(self, key: str) -> RedisServer:
        """The live node that serves the key's slot."""
        slot = int(cli(self.nodes[0].port, "cluster", "keyslot", key))
        for line in cli(self._live().port, "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for span in fields[8:]:
                low, _, high = span.partition("-")
                if int(low) <= slot <= int(high or low):
                    port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                    return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no master serves slot {slot}")

    def migrate(self, key: str) -> RedisServer:
        """Move the key's slot, and its keys, to another master (as resharding
        does, one slot); the new owner."""
        slot = cli(self._live().port, "cluster", "keyslot", key).strip()
        source = self.master_of(key)
        target = next(n for n in self.nodes if n.port in self.live_masters() and n is not source)
        source_id, target_id = (cli(n.port, "cluster", "myid").strip() for n in (source, target))
        cli(target.port, "cluster", "setslot", slot, "importing", source_id)
        cli(source.port, "cluster", "setslot", slot, "migrating", target_id)
        while keys := cli(source.port, "cluster", "getkeysinslot", slot, "100").split():
            port = str(target.port)
            cli(source.port, "migrate", "127.0.0.1", port, "", "0", "5000", "keys", *keys)
        for port in self.live_masters():
            cli(port, "cluster", "setslot", slot, "node", target_id)
        return target

    def _live(self) -> RedisServer:
        return next(node for node in self.nodes if node.process is not None)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class Sentinels:
    """One master, one replica, three sentinels watching them as ``master``."""

    name = "mymaster"

    def __init__(self, folder: Path) -> None:
        require_redis()
        self.folder = folder
        self.master = RedisServer(self._folder("master"))
        self.replica = RedisServer(self._folder("replica"))
        self.sentinels = [RedisServer(self._folder(f"sentinel{n}")) for n in range(3)]

    def _folder(self, name: str) -> Path:
        path = self.folder / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def seeds(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    @property
    def url(self) -> str:
        return f"redis+sentinel://{self.seeds}/{self.name}"

    def start(self) -> None:
        for server in (self.master, self.replica):
            server.extra = ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        self.replica.extra += ["--replicaof", "127.0.0.1", str(self.master.port)]
        self.master.start()
        self.replica.start()
        ids = [f"{n + 1:040x}" for n in range(len(self.sentinels))]
        for sentinel, myid in zip(self.sentinels, ids, strict=True):
            # Each knows the others and the replica from the start: no discovery
            # round of hello messages (2 s apart) before a failover can be agreed.
            others = [
                f"sentinel known-sentinel {self.name} 127.0.0.1 {other.port} {other_id}\n"
                for other, other_id in zip(self.sentinels, ids, strict=True)
                if other is not sentinel
            ]
            conf = sentinel.folder / "sentinel.conf"
            conf.write_text(
                f"port {sentinel.port}\nbind 127.0.0.1\nprotected-mode no\n"
                f"dir {sentinel.folder}\nsentinel myid {myid}\n"
                f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.name} 1000\n"
                f"sentinel failover-timeout {self.name} 5000\n"
                f"sentinel known-replica {self.name} 127.0.0.1 {self.replica.port}\n"
                + "".join(others)
            )
            sentinel.config_file = conf
            sentinel.start()
        wait_until(self._replica_synced, 30, "the replica is in sync")
        wait_until(self._sentinels_see_all, 30, "the sentinels know each other")

    def _replica_synced(self) -> bool:
        return "master_link_status:up" in cli(self.replica.port, "info", "replication")

    def _sentinels_see_all(self) -> bool:
        for sentinel in self.sentinels:
            info = cli(sentinel.port, "sentinel", "master", self.name)
            lines = info.splitlines()
            fields = dict(zip(lines[::2], lines[1::2], strict=False))
            if fields.get("num-other-sentinels") != "2" or fields.get("num-slaves") != "1":
                return False
        return True

    def master_port(self) -> int:
        address = cli(self.sentinels[0].port, "sentinel", "get-master-addr-by-name", self.name)
        return int(address.split()[1])

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.master):
            server.stop()

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
import trio.testing

from sessionfanout.testing import RecordingSink  # the library's own, as users get it

__all__ = ("RecordingSink",)

# The examples are scripts, not a package: their folder is on the path when
# they run, and so it is for the tests that import their pieces.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio and on trio."""
    return str(request.param)


@pytest.fixture
def mock_clock_backend() -> tuple[str, dict[str, Any]]:
    """trio with a virtual clock that jumps ahead whenever every task waits."""
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The ASGI example under a real uvicorn, shared by the end-to-end tests."""
    from tests.servers import free_port, http_ready, python, running

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("asgi") / "server.log"
    args = [python(), "examples/asgi_app.py", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--test-endpoints", "--sse-heartbeat", "0.5"]
    with running([*args, "--log-level", "warning"], http_ready(base + "/"), log=log):
        yield base


class Deployment(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


D = TypeVar("D", bound=Deployment)


def started(deployment: D) -> Iterator[D]:
    """A fixture's body: start the servers, hand them over, stop them afterwards."""
    deployment.start()
    try:
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Any]:
    """A fresh redis-server for one test (a missing server fails under CI=true)."""
    from tests.redis_server import RedisServer

    yield from started(RedisServer(tmp_path))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Redis Cluster (3 masters, 3 replicas) for the tests that leave it whole;
    each uses sessions of its own."""
    from tests.redis_cluster import Cluster

    yield from started(Cluster(tmp_path_factory.mktemp("cluster")))


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[Any]:
    """A cluster for one test that breaks it."""
    from tests.redis_cluster import Cluster

    yield from started(Cluster(tmp_path))


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[Any]:
    """One master, one replica and three sentinels, for one test."""
    from tests.redis_cluster import Sentinels

    yield from started(Sentinels(tmp_path))

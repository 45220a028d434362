"""Where Redis is, from one URL: one server, a cluster, or a master behind Sentinel
(no server needed)."""

from __future__ import annotations

import pytest

from sessionfanout import InvalidArgument
from sessionfanout.redis_broker import RedisBroker
from sessionfanout.redis_broker.connect import Target


def test_a_single_server_url_is_left_to_redis_py() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://h:6380/2", "unix:///run/redis.sock"):
        assert Target("single", url) == Target.parse(url)


def test_a_cluster_url_names_its_seed_nodes() -> None:
    target = Target.parse("redis+cluster://u:p%40ss@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002")
    assert "cluster" == target.mode
    assert (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002)) == target.nodes
    assert ("u", "p@ss") == (target.username, target.password)


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_db() -> None:
    target = Target.parse("redis+sentinel://:secret@s1:26379,s2:26379/mymaster/3")
    assert ("sentinel", "mymaster", 3) == (target.mode, target.master, target.db)
    assert (("s1", 26379), ("s2", 26379)) == target.nodes
    assert (None, "secret") == (target.username, target.password)
    assert 0 == Target.parse("redis+sentinel://s1:26379/mymaster").db


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://127.0.0.1:6379", "unknown Redis URL"),
        ("127.0.0.1:6379", "unknown Redis URL"),
        ("redis+cluster://", "no HOST:PORT"),
        ("redis+cluster://h1", "HOST:PORT"),
        ("redis+cluster://h1:port", "HOST:PORT"),
        ("redis+cluster://h1:70000", "HOST:PORT"),
        ("redis+cluster://h1:7000/0", "no path"),
        ("redis+sentinel://s1:26379", "MASTER_NAME"),
        ("redis+sentinel://s1:26379/m/x", "MASTER_NAME"),
    ],
)
def test_a_bad_url_is_refused_with_what_is_wrong(url: str, complaint: str) -> None:
    with pytest.raises(InvalidArgument, match=complaint):
        RedisBroker(url)


@pytest.mark.parametrize("prefix", ["a{b", "a}b", "{a}", "a|b", ""])
def test_a_prefix_that_could_split_a_session_over_slots_is_refused(prefix: str) -> None:
    with pytest.raises(InvalidArgument, match="prefix"):
        RedisBroker("redis+cluster://127.0.0.1:7000", prefix=prefix)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize(
    "url", ["redis+cluster://127.0.0.1:1", "redis+sentinel://127.0.0.1:1/mymaster"]
)
async def test_a_deployment_that_cannot_be_reached_fails_to_start(url: str) -> None:
    from sessionfanout import BrokerUnavailable, Hub, HubConfig

    with pytest.raises(BrokerUnavailable, match="cannot reach Redis"):
        async with Hub(HubConfig(), broker=RedisBroker(url)):
            pass

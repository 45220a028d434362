"""Presence: who is subscribed to a session, as a snapshot and throttled diffs."""

from __future__ import annotations

from typing import Any, cast

import anyio
import pytest

from sessionfanout import Connection, Hub, HubConfig, PresenceMember
from sessionfanout.errors import HubClosed, InvalidArgument
from sessionfanout.testing import TestClient
from tests.hubtools import virtual_clock

pytestmark = pytest.mark.anyio

Frame = dict[str, Any]


def user_of(connection: Connection) -> dict[str, Any] | None:
    return None if connection.context is None else {"user": connection.context}


CONFIG = HubConfig(presence_info=user_of, presence_interval=0.5)


def ids(members: list[Frame]) -> list[str]:
    return [member["connectionId"] for member in members]


def presence_frames(client: TestClient) -> list[Frame]:
    return [frame for frame in client.frames if frame["type"] == "presence"]


def view_of(client: TestClient, session_id: str) -> dict[str, Any]:
    """What a watcher knows from its snapshot and every diff since."""
    view: dict[str, Any] = {}
    for frame in presence_frames(client):
        if frame["sessionId"] != session_id:
            continue
        if "members" in frame:
            view = {m["connectionId"]: m.get("info") for m in frame["members"]}
            continue
        for member in frame["left"]:
            del view[member["connectionId"]]  # told of each leave once
        for member in frame["joined"]:
            assert member["connectionId"] not in view, "told of each join once"
            view[member["connectionId"]] = member.get("info")
    return view


@virtual_clock()
async def test_a_watcher_gets_a_snapshot_then_each_join_and_leave_once() -> None:
    async with Hub(CONFIG) as hub:
        alice = await TestClient.connect(hub, "alice")
        await alice.subscribe("s", presence=True)
        snapshot = await alice.receive(type="presence")
        assert [{"connectionId": alice.connection.id, "info": {"user": "alice"}}] == snapshot[
            "members"
        ]
        bob = await TestClient.connect(hub, "bob")
        await bob.subscribe("s")  # a member, not a watcher
        joined = await alice.receive(type="presence")
        assert ([bob.connection.id], []) == (ids(joined["joined"]), joined["left"])
        await bob.close()
        left = await alice.receive(type="presence")
        assert ([], [{"connectionId": bob.connection.id, "info": {"user": "bob"}}]) == (
            left["joined"],
            left["left"],
        )
        await anyio.sleep(5)
        assert 3 == len(presence_frames(alice))
        assert [] == presence_frames(bob)
        assert {alice.connection.id: {"user": "alice"}} == view_of(alice, "s")


@virtual_clock()
async def test_a_watcher_that_comes_mid_interval_is_in_its_own_snapshot_and_told_once() -> None:
    async with Hub(CONFIG) as hub:
        first = await TestClient.connect(hub, "first")
        await first.subscribe("s", presence=True)
        member = await TestClient.connect(hub, "member")
        await member.subscribe("s")
        second = await TestClient.connect(hub, "second")
        await second.subscribe("s", presence=True)
        snapshot = await second.receive(type="presence")
        everyone = sorted(c.connection.id for c in (first, member, second))
        assert everyone == ids(snapshot["members"]), "the current members, itself included"
        await member.close()
        await anyio.sleep(2)
        rest = {c.connection.id: {"user": c.connection.context} for c in (first, second)}
        assert rest == view_of(first, "s") == view_of(second, "s")
        assert 2 == len(presence_frames(second)), "the snapshot, then the leave"


@virtual_clock()
async def test_joins_within_an_interval_go_out_as_one_frame() -> None:
    async with Hub(CONFIG) as hub:
        watcher = await TestClient.connect(hub)
        await watcher.subscribe("s", presence=True)
        await watcher.receive(type="presence")
        others = [await TestClient.connect(hub) for _ in range(20)]
        for other in others:
            await other.subscribe("s")
        await others[0].close()
        await anyio.sleep(0.49)
        assert 1 == len(presence_frames(watcher))  # only the snapshot: the diff waits
        diff = await watcher.receive(type="presence")
        assert sorted(o.connection.id for o in others[1:]) == ids(diff["joined"])
        assert [] == diff["left"]  # joined and left within the interval: never seen


@virtual_clock()
async def test_a_join_storm_of_watchers_costs_a_snapshot_and_a_diff_each() -> None:
    """1,000 watchers joining at once get about 2,000 frames, not a million."""
    count = 1000
    async with Hub(CONFIG) as hub:
        clients = [await TestClient.connect(hub) for _ in range(count)]
        for client in clients:
            await client.subscribe("s", presence=True)
        await anyio.sleep(2)
        frames = sum(len(presence_frames(client)) for client in clients)
        everyone = {client.connection.id: None for client in clients}
        assert all(view_of(client, "s") == everyone for client in clients)
    assert frames <= 2 * count


async def test_hub_presence_lists_every_subscriber_with_its_info() -> None:
    async with Hub(CONFIG) as hub:
        assert () == await hub.presence("s")
        alice, anonymous = await TestClient.connect(hub, "alice"), await TestClient.connect(hub)
        await alice.subscribe("s")
        await anonymous.subscribe("s")
        await alice.subscribe("other")
        expected = [
            PresenceMember(alice.connection.id, {"user": "alice"}),
            PresenceMember(anonymous.connection.id, None),
        ]
        assert sorted(expected, key=lambda m: m.connection_id) == list(await hub.presence("s"))
        await alice.unsubscribe("s")
        assert (PresenceMember(anonymous.connection.id),) == await hub.presence("s")
        with pytest.raises(InvalidArgument, match="session_id"):
            await hub.presence("")
    with pytest.raises(HubClosed):
        await hub.presence("s")


@virtual_clock()
async def test_subscribing_again_without_presence_stops_the_frames() -> None:
    async with Hub(CONFIG) as hub:
        watcher = await TestClient.connect(hub)
        await watcher.subscribe("s", presence=True)
        await watcher.subscribe("s")
        other = await TestClient.connect(hub)
        await other.subscribe("s")
        await anyio.sleep(2)
        assert 1 == len(presence_frames(watcher))


@pytest.mark.parametrize("hook_says", ["not an object", {"n": float("nan")}, RuntimeError("x")])
@virtual_clock()
async def test_a_presence_info_hook_that_fails_says_nothing_and_is_counted(
    hook_says: Any,
) -> None:
    def hook(connection: Connection) -> Any:
        if isinstance(hook_says, Exception):
            raise hook_says
        return hook_says

    async with Hub(HubConfig(presence_info=hook)) as hub:
        client = await TestClient.connect(hub)
        await client.subscribe("s", presence=True)
        snapshot = await client.receive(type="presence")
        assert [{"connectionId": client.connection.id}] == snapshot["members"]
        assert 1 == hub.statistics().session_faults


@pytest.mark.parametrize(
    "setting", [{"presence_interval": 0}, {"presence_interval": float("inf")},
                {"presence_interval": True}, {"presence_info": "not callable"},
                {"authorize": 3}, {"may_abort": "x"}],
)  # fmt: skip
def test_presence_settings_are_checked(setting: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument, match=next(iter(setting))):
        HubConfig(**setting)


@pytest.mark.parametrize(
    "fields",
    [{}, {"members": (), "joined": ()}, {"joined": (), "left": ()}, {"joined": ()}],
)
def test_a_presence_frame_is_a_snapshot_or_a_change(fields: dict[str, Any]) -> None:
    from sessionfanout import Presence

    with pytest.raises(InvalidArgument, match="presence"):
        Presence("s", **fields)


async def test_a_failing_broker_never_ends_a_connection_and_is_counted() -> None:
    from sessionfanout import LocalBroker

    class Failing(LocalBroker):
        def share_member(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("broken")

        async def remote_members(self, session_id: str) -> Any:
            raise RuntimeError("broken")

    async with Hub(CONFIG, broker=Failing()) as hub:
        client = await TestClient.connect(hub)
        await client.subscribe("s", presence=True)
        await client.unsubscribe("s")
        await client.subscribe("s")
        assert hub.statistics().session_faults >= 2
        await client.close()
        assert 0 == hub.statistics().connections, "forgotten all the same"


async def test_a_server_side_subscribe_may_ask_for_presence_on_either_backend() -> None:
    async with Hub(HubConfig(presence_interval=0.01)) as hub:
        watcher, other = await TestClient.connect(hub), await TestClient.connect(hub)
        await hub.subscribe(watcher.connection, "s", presence=True)
        snapshot = await watcher.receive(type="presence")
        assert [watcher.connection.id] == ids(snapshot["members"])
        await hub.subscribe(other.connection, "s")
        assert [other.connection.id] == ids((await watcher.receive(type="presence"))["joined"])
        await hub.unsubscribe(other.connection, "s")
        assert [other.connection.id] == ids((await watcher.receive(type="presence"))["left"])


@virtual_clock()
async def test_a_read_of_other_processes_that_hangs_gives_way_to_what_is_known() -> None:
    from sessionfanout import LocalBroker

    class Hanging(LocalBroker):
        async def remote_members(self, session_id: str) -> Any:
            await anyio.sleep_forever()

    async with Hub(CONFIG, broker=Hanging()) as hub:
        client = await TestClient.connect(hub)
        await client.subscribe("s", presence=True)
        snapshot = await client.receive(type="presence", timeout=5)
        assert [client.connection.id] == ids(snapshot["members"])
        other = await TestClient.connect(hub)
        await other.subscribe("s")
        joined = await client.receive(type="presence", timeout=5)
        assert [other.connection.id] == ids(joined["joined"])


async def test_a_server_side_subscribe_refuses_a_presence_that_is_not_a_bool() -> None:
    async with Hub() as hub:
        client = await TestClient.connect(hub)
        with pytest.raises(InvalidArgument, match="presence"):
            await hub.subscribe(client.connection, "s", presence=cast(Any, "yes"))
        assert frozenset() == hub.sessions_of(client.connection), "nothing changed"


async def test_a_server_side_subscribe_may_ask_the_authorize_hook() -> None:
    from sessionfanout import ProtocolError

    def hook(connection: Connection, session_id: str) -> bool:
        if session_id == "broken":
            raise RuntimeError("the hook's bug")
        return session_id != "private"

    async with Hub(HubConfig(authorize=hook)) as hub:
        client = await TestClient.connect(hub)
        for session_id in ("private", "broken"):
            with pytest.raises(ProtocolError) as refused:
                await hub.subscribe(client.connection, session_id, authorize=True)
            assert "forbidden" == refused.value.code
        await hub.subscribe(client.connection, "private")  # the server's own authority
        await hub.subscribe(client.connection, "open", authorize=True)
        assert {"private", "open"} == hub.sessions_of(client.connection)
        with pytest.raises(InvalidArgument, match="authorize"):
            await hub.subscribe(client.connection, "open", authorize=cast(Any, "yes"))

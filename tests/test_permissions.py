from __future__ import annotations

import pytest

from sessionfanout import InvalidArgument, PendingPermissions, PermissionBroker


def test_first_answer_from_a_subscriber_decides_once() -> None:
    broker = PendingPermissions()
    pending = broker.open("s", now=0, timeout=60)
    assert broker.answer(pending.request_id, {"other"}) is None, "not subscribed to s"
    assert pending == broker.answer(pending.request_id, {"s"})
    assert broker.answer(pending.request_id, {"s"}) is None, "already decided"
    assert 0 == len(broker)


def test_unanswered_requests_expire_at_their_deadline() -> None:
    broker = PendingPermissions()
    late = broker.open("s", now=0, timeout=60)
    early = broker.open("s", now=0, timeout=5)
    assert 5 == broker.next_deadline()
    assert [] == broker.expired(4.9)
    assert [early] == broker.expired(5)
    assert [late] == broker.expired(100)
    assert broker.answer(late.request_id, {"s"}) is None, "timed out"
    assert broker.next_deadline() is None


def test_request_ids_are_random_and_long() -> None:
    ids = {PermissionBroker.new_request_id() for _ in range(1000)}
    assert 1000 == len(ids)
    assert all(len(i) >= 20 for i in ids)


def test_duplicate_ids_and_bad_timeouts_are_refused() -> None:
    broker = PendingPermissions()
    broker.open("s", 0, 1, request_id="r")
    with pytest.raises(InvalidArgument):
        broker.open("s", 0, 1, request_id="r")
    with pytest.raises(InvalidArgument):
        broker.open("s", 0, 0)


def test_close_all_ends_every_request() -> None:
    broker = PendingPermissions()
    opened = {broker.open("s", 0, 1).request_id for _ in range(3)}
    assert opened == {p.request_id for p in broker.close_all()}
    assert broker.next_deadline() is None


def test_the_old_name_permission_broker_still_works_and_warns() -> None:
    with pytest.deprecated_call():
        table = PermissionBroker()
    assert isinstance(table, PendingPermissions)

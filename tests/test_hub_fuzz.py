"""Every producer entry point driven with arbitrary Python values.

Each call either raises a ``sessionfanout.errors`` exception at once (and
sends nothing), or is accepted and sends only frames that a strict JSON
parser reads. Either way the hub keeps running and a subscriber of another
session gets its next event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionfanout import (
    AgentComplete,
    AgentError,
    AgentPermissionRequest,
    AgentTextComplete,
    AgentTextDelta,
    AgentToolResult,
    AgentToolStart,
    Complete,
    ConfigChanged,
    Hub,
    HubConfig,
    LocalBroker,
    SessionFanoutError,
)
from sessionfanout.events import SESSION_EVENT_TYPES
from tests.hubtools import connect, subscribe, wait_for
from tests.strategies import anything, strict_loads

SESSION_CLASSES = sorted(SESSION_EVENT_TYPES, key=lambda cls: cls.__name__)
AGENT_CLASSES = [
    AgentTextDelta,
    AgentTextComplete,
    AgentToolStart,
    AgentToolResult,
    AgentComplete,
    AgentError,
    AgentPermissionRequest,
]
session_ids = st.just("s1") | st.text(min_size=1, max_size=6) | anything


def arguments(cls: type[Any], first: st.SearchStrategy[Any] | None = None) -> Any:
    """Arbitrary values for a class's fields: every required one, some optional ones."""
    fields = attrs.fields(cls)
    required = sum(1 for f in fields if f.default is attrs.NOTHING)
    count = st.integers(min_value=required, max_value=len(fields))
    values = count.flatmap(lambda n: st.lists(anything, min_size=n, max_size=n))
    if first is not None and required:
        values = st.tuples(first, values).map(lambda pair: [pair[0], *pair[1][1:]])
    return values.map(lambda args: (cls, args))


session_events = st.sampled_from(SESSION_CLASSES).flatmap(
    lambda cls: arguments(cls, st.just("s1") | anything)
)
agent_events = st.sampled_from(AGENT_CLASSES).flatmap(arguments) | anything.map(lambda v: (None, v))

calls = st.one_of(
    st.tuples(st.just("queue_delta"), session_ids, anything, anything),
    st.tuples(st.just("flush_delta"), session_ids),
    st.tuples(st.just("broadcast_to_session"), session_ids, session_events),
    st.tuples(st.just("broadcast_global"), anything | st.builds(lambda: ("config",))),
    st.tuples(
        st.just("request_permission"),
        session_ids,
        anything,
        anything,
        anything,
        st.none() | anything,
        st.none() | anything,
    ),
    st.tuples(st.just("run_agent"), session_ids, st.lists(agent_events, max_size=4)),
    st.tuples(st.just("send"), st.sampled_from(SESSION_CLASSES).flatmap(arguments)),
    st.tuples(st.just("handle_message"), anything),
)


def make(spec: tuple[type[Any] | None, Any]) -> Any:
    cls, args = spec
    return args if cls is None else cls(*args)


async def agent(specs: list[tuple[type[Any] | None, Any]]) -> AsyncIterator[Any]:
    for spec in specs:
        yield make(spec)  # making it may raise, as an agent's own bug would


class RecordingBroker(LocalBroker):
    """Keeps every frame handed to the backplane, whoever it reaches."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def publish(self, session_id: str, body: str, *, is_delta: bool) -> None:
        self.texts.append(body)
        super().publish(session_id, body, is_delta=is_delta)

    def publish_global(self, text: str) -> None:
        self.texts.append(text)
        super().publish_global(text)


def invoke(hub: Hub, connection: Any, call: tuple[Any, ...]) -> Callable[[], Any]:
    name, *args = call
    if name == "broadcast_to_session":
        return lambda: hub.broadcast_to_session(args[0], make(args[1]))
    if name == "broadcast_global":
        value = args[0]
        event = (
            ConfigChanged(value[0]) if isinstance(value, tuple) and value == ("config",) else value
        )
        return lambda: hub.broadcast_global(event)
    if name == "request_permission":
        session_id, tool, command, description, deny_after, request_id = args
        return lambda: hub.request_permission(
            session_id, tool, command, description, deny_after=deny_after, request_id=request_id
        )
    if name == "run_agent":
        return lambda: hub.run_agent(args[0], agent(args[1]))
    if name == "send":
        return lambda: hub.send(connection, make(args[0]))
    if name == "handle_message":
        return lambda: hub.handle_message(connection, args[0])
    method = getattr(hub, name)
    return lambda: method(*args)


async def scenario(call: tuple[Any, ...]) -> None:
    broker = RecordingBroker()
    config = HubConfig(batch_interval=0.001, client_rate=None, close_timeout=0.5)
    async with Hub(config, broker=broker) as hub:
        connection, sink = await connect(hub)
        await subscribe(hub, connection, "s1")
        other_conn, other = await connect(hub)
        await subscribe(hub, other_conn, "other")
        published = len(broker.texts)
        raised: BaseException | None = None
        with anyio.move_on_after(0.2):  # a permission request or agent may wait: accepted
            try:
                await invoke(hub, connection, call)()
            except SessionFanoutError as exc:
                raised = exc
        if raised is not None and call[0] != "run_agent":  # a run that fails reports it
            assert published == len(broker.texts), f"{raised!r} after sending"
        await hub.broadcast_to_session("other", Complete("other"))
        await wait_for(lambda: bool(other.of_type("complete")), seconds=5)
        assert hub.running
        assert 0 == hub.statistics().session_faults
    for text in broker.texts + sink.texts + other.texts:
        strict_loads(text)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call=calls)
def test_any_producer_call_raises_at_once_or_sends_only_strict_json(
    backend: str, call: tuple[Any, ...]
) -> None:
    anyio.run(scenario, call, backend=backend)

"""sessionfanout.metrics: the Prometheus collector reports what ``statistics()`` says.

Each test scrapes a real Hub through prometheus-client's own exposition and
parser, so what is checked is what Prometheus would read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, DuplicateTimeseries

from sessionfanout import (
    Complete,
    Hub,
    HubConfig,
    HubStatistics,
    InvalidArgument,
    LocalBroker,
    ToolResult,
)
from sessionfanout.metrics import HubCollector
from tests.hubtools import BrokenSink, StuckSink, connect, subscribe, wait_for
from tests.servers import Client, ws_url

Counts = dict[str, float]

FAST = HubConfig(batch_interval=0.005, close_timeout=0.1)

# Every client_error code is reported, from zero; a new code is a new series.
CODES = (
    "forbidden", "invalid_json", "invalid_message", "rate_limited", "too_large",
    "unknown_request", "unknown_type",
)  # fmt: skip

BROKER_COUNTERS = {
    "published", "retried", "received", "forged", "gaps_filled", "resyncs", "reconnects", "failed",
}  # fmt: skip

# The families a hub on the LocalBroker exposes, and their types: the metric
# names are a public surface, pinned here as __all__ is in test_public_api.
FAMILIES = {
    "sessionfanout_connections": "gauge",
    "sessionfanout_subscriptions": "gauge",
    "sessionfanout_sessions": "gauge",
    "sessionfanout_known_sessions": "gauge",
    "sessionfanout_writers": "gauge",
    "sessionfanout_pending_deltas": "gauge",
    "sessionfanout_pending_permissions": "gauge",
    "sessionfanout_queued_frames": "gauge",
    "sessionfanout_queued_bytes": "gauge",
    "sessionfanout_max_queued_frames": "gauge",
    "sessionfanout_max_queued_bytes": "gauge",
    "sessionfanout_frames_sent": "counter",
    "sessionfanout_sent_bytes": "counter",
    "sessionfanout_batches": "counter",
    "sessionfanout_coalesced": "counter",
    "sessionfanout_dropped": "counter",
    "sessionfanout_lost_batches": "counter",
    "sessionfanout_resyncs": "counter",
    "sessionfanout_session_faults": "counter",
    "sessionfanout_suppressed_logs": "counter",
    "sessionfanout_unknown_agent_events": "counter",
    "sessionfanout_closed_connections": "counter",
    "sessionfanout_client_errors": "counter",
}


def scrape(collector: Collector) -> Counts:
    """Every sample as ``name{label="value",...}``, through text and back."""
    return samples(generate_latest(collector).decode())


def samples(text: str) -> Counts:
    return {
        series(sample.name, sample.labels): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def series(name: str, labels: Mapping[str, str]) -> str:
    inside = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inside}}}" if inside else name


def expected_samples(stats: HubStatistics, hub: Mapping[str, str] | None = None) -> Counts:
    """What a scrape should say for one snapshot, written out field by field."""
    hub = hub or {}
    unlabelled = {
        "sessionfanout_connections": stats.connections,
        "sessionfanout_subscriptions": stats.subscriptions,
        "sessionfanout_sessions": stats.sessions,
        "sessionfanout_known_sessions": stats.known_sessions,
        "sessionfanout_writers": stats.writers,
        "sessionfanout_pending_deltas": stats.pending_deltas,
        "sessionfanout_pending_permissions": stats.pending_permissions,
        "sessionfanout_queued_frames": sum(o.queued_frames for o in stats.outboxes),
        "sessionfanout_queued_bytes": sum(o.queued_bytes for o in stats.outboxes),
        "sessionfanout_max_queued_frames": max(o.queued_frames for o in stats.outboxes),
        "sessionfanout_max_queued_bytes": max(o.queued_bytes for o in stats.outboxes),
        "sessionfanout_frames_sent_total": stats.frames_sent,
        "sessionfanout_sent_bytes_total": stats.bytes_sent,
        "sessionfanout_batches_total": stats.batches,
        "sessionfanout_coalesced_total": stats.coalesced,
        "sessionfanout_dropped_total": stats.dropped,
        "sessionfanout_lost_batches_total": stats.lost_batches,
        "sessionfanout_resyncs_total": stats.resyncs,
        "sessionfanout_session_faults_total": stats.session_faults,
        "sessionfanout_suppressed_logs_total": stats.suppressed_logs,
        "sessionfanout_unknown_agent_events_total": stats.unknown_agent_events,
    }
    closed = "sessionfanout_closed_connections_total"
    errors = "sessionfanout_client_errors_total"
    return {
        **{series(name, hub): value for name, value in unlabelled.items()},
        series(closed, {**hub, "reason": "slow"}): stats.closed_slow,
        series(closed, {**hub, "reason": "broken"}): stats.closed_broken,
        **{
            series(errors, {**hub, "code": code}): stats.client_errors_by_code.get(code, 0)
            for code in CODES
        },
    }


@pytest.mark.anyio
async def test_a_scrape_reports_every_figure_of_the_snapshot() -> None:
    registry = CollectorRegistry()
    async with Hub(FAST) as hub:
        HubCollector(hub, registry)
        a, sink_a = await connect(hub)
        b, sink_b = await connect(hub)
        await subscribe(hub, a, "s")
        await subscribe(hub, a, "t")
        await subscribe(hub, b, "s")
        await hub.queue_delta("s", "hello ", "t1")
        await hub.queue_delta("s", "world", "t1")
        await hub.broadcast_to_session("s", Complete("s"))
        await hub.handle_message(b, "not json")
        await wait_for(lambda: bool(sink_a.of_type("complete") and sink_b.of_type("client_error")))
        # No await between the two: the scrape sees the same state as the snapshot.
        stats = hub.statistics()
        scraped = scrape(registry)
    assert (2, 3, 2, 1) == (stats.connections, stats.subscriptions, stats.sessions, stats.batches)
    assert len(sink_a.texts) + len(sink_b.texts) == stats.frames_sent
    assert expected_samples(stats) == scraped


@pytest.mark.anyio
async def test_the_family_names_and_types_are_pinned_and_counters_end_in_total() -> None:
    async with Hub(FAST) as hub:
        collector = HubCollector(hub, None)
        families = list(text_string_to_metric_families(generate_latest(collector).decode()))
    assert FAMILIES == {f.name: f.type for f in families}
    for family in families:
        assert family.documentation, f"{family.name} has help text"
        suffix = "_total" if family.type == "counter" else ""
        assert {family.name + suffix} == {s.name for s in family.samples}


@pytest.mark.anyio
async def test_client_errors_are_counted_by_code_and_every_code_starts_at_zero() -> None:
    registry = CollectorRegistry()
    async with Hub(FAST) as hub:
        HubCollector(hub, registry)
        connection, sink = await connect(hub)
        for raw in ["not json", '{"type":"nope"}', '{"type":"nope"}']:
            await hub.handle_message(connection, raw)
        await wait_for(lambda: 3 == len(sink.of_type("client_error")))
        stats = hub.statistics()
        scraped = scrape(registry)
    by_code = {
        code: scraped[f'sessionfanout_client_errors_total{{code="{code}"}}'] for code in CODES
    }
    assert {**dict.fromkeys(CODES, 0), "invalid_json": 1, "unknown_type": 2} == by_code
    assert stats.client_errors == sum(by_code.values())


@pytest.mark.anyio
async def test_closed_connections_are_counted_by_reason_slow_and_broken() -> None:
    registry = CollectorRegistry()
    config = HubConfig(batch_interval=0.005, outbox_max_messages=10, close_timeout=0.1)
    async with Hub(config) as hub:
        HubCollector(hub, registry)
        stuck_connection, stuck = await connect(hub, StuckSink())
        await hub.handle_message(stuck_connection, '{"type":"subscribe","sessionId":"s"}')
        for n in range(30):
            await hub.broadcast_to_session("s", ToolResult("s", f"u{n}", "t", "x"))
        await wait_for(lambda: stuck.closed is not None)
        await connect(hub, BrokenSink())
        await connect(hub, BrokenSink())
        await wait_for(lambda: 2 == hub.statistics().closed_broken)
        stats = hub.statistics()
        scraped = scrape(registry)
    assert stuck.closed is not None
    assert 1008 == stuck.closed[0]
    assert 1 == scraped['sessionfanout_closed_connections_total{reason="slow"}']
    assert 2 == scraped['sessionfanout_closed_connections_total{reason="broken"}']
    assert 0 < stats.dropped
    assert stats.dropped == scraped["sessionfanout_dropped_total"]


@pytest.mark.anyio
async def test_queued_frames_and_bytes_are_summed_and_maxed_over_connections() -> None:
    registry = CollectorRegistry()
    async with Hub(FAST) as hub:
        HubCollector(hub, registry)
        one, _ = await connect(hub, StuckSink())
        two, _ = await connect(hub, StuckSink())
        await hub.handle_message(one, '{"type":"subscribe","sessionId":"s"}')
        await hub.handle_message(two, '{"type":"subscribe","sessionId":"s"}')
        await hub.handle_message(two, '{"type":"subscribe","sessionId":"t"}')
        for n in range(3):
            await hub.broadcast_to_session("s", ToolResult("s", f"u{n}", "t", "x"))
            await hub.broadcast_to_session("t", ToolResult("t", f"u{n}", "t", "x" * 100))
        await wait_for(lambda: 3 <= one.queued < two.queued)
        stats = hub.statistics()
        scraped = scrape(registry)
    outboxes = {o.connection_id: o for o in stats.outboxes}
    first, second = outboxes[one.id], outboxes[two.id]
    assert first.queued_frames + second.queued_frames == scraped["sessionfanout_queued_frames"]
    assert first.queued_bytes + second.queued_bytes == scraped["sessionfanout_queued_bytes"]
    assert second.queued_frames == scraped["sessionfanout_max_queued_frames"]
    assert second.queued_bytes == scraped["sessionfanout_max_queued_bytes"]


@pytest.mark.anyio
async def test_one_collector_tells_several_hubs_apart_by_their_labels() -> None:
    registry = CollectorRegistry()
    async with Hub(FAST) as a, Hub(FAST) as b:
        collector = HubCollector(a, registry, labels={"hub": "a"})
        collector.add(b, {"hub": "b"})
        await connect(a)
        connection, sink = await connect(b)
        await connect(b)
        await b.handle_message(connection, "not json")
        await wait_for(lambda: bool(sink.of_type("client_error")))
        stats_a, stats_b = a.statistics(), b.statistics()
        text = generate_latest(registry).decode()
    expected = {
        **expected_samples(stats_a, {"hub": "a"}),
        **expected_samples(stats_b, {"hub": "b"}),
    }
    assert expected == samples(text)
    assert (1, 2) == (stats_a.connections, stats_b.connections)
    assert 1 == text.count("# TYPE sessionfanout_connections gauge"), "each family once"


@pytest.mark.anyio
async def test_a_second_collector_in_one_registry_is_refused_not_written_twice() -> None:
    """Two would write each family twice, which Prometheus rejects: use ``add``."""
    registry = CollectorRegistry()
    async with Hub(FAST) as a, Hub(FAST) as b:
        HubCollector(a, registry, labels={"hub": "a"})
        with pytest.raises(DuplicateTimeseries):
            HubCollector(b, registry, labels={"hub": "b"})


@pytest.mark.anyio
async def test_registering_reads_no_hub_so_it_may_come_before_the_hub_starts() -> None:
    """The global registry describes a collector on registering; a RedisBroker
    hub cannot give statistics before it starts, and need not."""
    from sessionfanout.redis_broker import RedisBroker

    hub = Hub(broker=RedisBroker("redis://127.0.0.1:1/0"))
    registry = CollectorRegistry(auto_describe=True)
    HubCollector(hub, registry)
    with pytest.raises(DuplicateTimeseries):
        HubCollector(Hub(), registry)


@pytest.mark.anyio
async def test_the_global_registry_is_the_default_and_none_registers_nowhere() -> None:
    async with Hub(FAST) as hub:
        await connect(hub)
        collector = HubCollector(hub)
        try:
            assert 1 == REGISTRY.get_sample_value("sessionfanout_connections")
        finally:
            REGISTRY.unregister(collector)
        HubCollector(hub, None)
        assert REGISTRY.get_sample_value("sessionfanout_connections") is None


@pytest.mark.parametrize("name", ["code", "reason", "__hub", "1hub", "hub-name", ""])
def test_a_label_name_prometheus_would_refuse_or_that_clashes_is_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match="label"):
        HubCollector(Hub(), None, labels={name: "a"})


def test_add_refuses_other_label_names_taken_values_and_a_hub_collected_already() -> None:
    hub = Hub()
    collector = HubCollector(hub, None, labels={"hub": "a"})
    for other, labels in [
        (Hub(), {"shard": "b"}),
        (Hub(), {"hub": "b", "shard": "b"}),
        (Hub(), {"hub": "a"}),
        (hub, {"hub": "b"}),
    ]:
        with pytest.raises(InvalidArgument):
            collector.add(other, labels)
    with pytest.raises(InvalidArgument):
        HubCollector(hub, None).add(Hub(), {})


class ReportingBroker(LocalBroker):
    """The local backplane, reporting figures as a networked one would."""

    def statistics(self) -> Mapping[str, int]:
        return {"published": 3, "watched_sessions": 2, "shards": 4, "not a name": 5}


@pytest.mark.anyio
async def test_broker_figures_are_typed_when_known_and_untyped_when_not() -> None:
    """A key that cannot be part of a metric name is left out, not a failed scrape."""
    registry = CollectorRegistry()
    async with Hub(FAST, broker=ReportingBroker()) as hub:
        HubCollector(hub, registry)
        families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    assert {
        "sessionfanout_broker_published": ("counter", {"sessionfanout_broker_published_total": 3}),
        "sessionfanout_broker_watched_sessions": (
            "gauge",
            {"sessionfanout_broker_watched_sessions": 2},
        ),
        "sessionfanout_broker_shards": ("unknown", {"sessionfanout_broker_shards": 4}),
    } == {
        f.name: (f.type, {s.name: s.value for s in f.samples})
        for f in families
        if "_broker_" in f.name
    }


@pytest.mark.redis
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # redis-py's client runs on asyncio
@pytest.mark.anyio
async def test_the_brokers_counters_are_reported_as_broker_families(redis_server: Any) -> None:
    from sessionfanout.redis_broker import RedisBroker

    registry = CollectorRegistry()
    async with Hub(FAST, broker=RedisBroker(redis_server.url)) as hub:
        HubCollector(hub, registry)
        connection, sink = await connect(hub)
        await subscribe(hub, connection, "s")
        await hub.broadcast_to_session("s", Complete("s"))
        await wait_for(lambda: bool(sink.of_type("complete")))
        await wait_for(lambda: 1 <= hub.statistics().broker["published"])
        stats = hub.statistics()
        scraped = scrape(registry)
    assert {
        f"sessionfanout_broker_{key}" + ("_total" if key in BROKER_COUNTERS else ""): value
        for key, value in stats.broker.items()
    } == {name: value for name, value in scraped.items() if "_broker_" in name}
    assert 1 == scraped["sessionfanout_broker_watched_sessions"]
    assert 1 <= scraped["sessionfanout_broker_published_total"]


@pytest.mark.slow
def test_the_example_app_serves_metrics_that_prometheus_can_parse(server: str) -> None:
    client = Client(ws_url(server))
    session = "metrics-e2e"
    assert "subscribed" == client.subscribe(session)["type"]
    response = httpx.post(
        f"{server}/api/sessions/{session}/messages",
        json={"message": "counted words", "deltas": 4, "deltaIntervalMs": 1, "permission": False},
        timeout=10,
    )
    assert 202 == response.status_code
    client.recv_until(lambda f: f["type"] == "complete" and f.get("sessionId") == session)
    before = httpx.get(f"{server}/api/statistics", timeout=10).json()
    metrics = httpx.get(f"{server}/metrics", timeout=10)
    after = httpx.get(f"{server}/api/statistics", timeout=10).json()
    client.close()

    assert 200 == metrics.status_code
    assert CONTENT_TYPE_LATEST == metrics.headers["content-type"]
    scraped = samples(metrics.text)
    frames_sent = scraped["sessionfanout_frames_sent_total"]
    assert before["frames_sent"] <= frames_sent <= after["frames_sent"]
    assert len(client.frames) <= frames_sent
    assert before["batches"] <= scraped["sessionfanout_batches_total"] <= after["batches"]
    assert 1 <= scraped["sessionfanout_batches_total"]
    assert 1 <= scraped["sessionfanout_connections"]
    assert 1 <= scraped["sessionfanout_subscriptions"]
    assert set(FAMILIES) <= {f.name for f in text_string_to_metric_families(metrics.text)}

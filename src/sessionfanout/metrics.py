"""Prometheus metrics for a hub: a custom collector over ``Hub.statistics()``.

    from sessionfanout.metrics import HubCollector
    HubCollector(hub)  # registered with prometheus_client's global REGISTRY

Needs the ``prometheus`` extra. A collector rather than ``Counter`` and
``Gauge`` objects bumped as things happen: the hub counts already, so the
delivery path pays nothing and a scrape reads one snapshot per hub, whose
values agree with each other (prometheus_client's own ``ProcessCollector``
reads /proc the same way).

Scrape on the hub's event loop thread (an ASGI route, or
``prometheus_client.make_asgi_app()``), not in ``start_http_server``'s
thread: ``statistics()`` reads the hub's live state without a lock.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Final

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.registry import Collector

from .errors import CLIENT_ERROR_CODES, InvalidArgument
from .hub import Hub
from .stats import HubStatistics

__all__ = ("HubCollector",)

PREFIX: Final = "sessionfanout_"

Read = Callable[[HubStatistics], int]
Kind = type[CounterMetricFamily] | type[GaugeMetricFamily] | type[UnknownMetricFamily]
Gauge, Counter, Unknown = GaugeMetricFamily, CounterMetricFamily, UnknownMetricFamily

# (name after the prefix, type, how to read it from a snapshot, help). Names
# follow Prometheus's conventions: the unit last (``sent_bytes``, not the
# field's ``bytes_sent``), counters without ``_total`` (prometheus_client
# appends it).
HUB: Final[tuple[tuple[str, Kind, Read, str], ...]] = (
    ("connections", Gauge, lambda s: s.connections, "Connected clients."),
    ("subscriptions", Gauge, lambda s: s.subscriptions, "Subscriptions, over all connections."),
    ("sessions", Gauge, lambda s: s.sessions, "Sessions with at least one subscriber."),
    ("known_sessions", Gauge, lambda s: s.known_sessions,
     "Sessions with a sequence and history in this process, subscribed or not."),
    ("writers", Gauge, lambda s: s.writers,
     "Connections with a writer task draining their outbox."),
    ("pending_deltas", Gauge, lambda s: s.pending_deltas,
     "Sessions with delta text waiting to be batched."),
    ("pending_permissions", Gauge, lambda s: s.pending_permissions,
     "Permission requests waiting for an answer."),
    ("queued_frames", Gauge, lambda s: sum(o.queued_frames for o in s.outboxes),
     "Frames waiting in outboxes, summed over connections."),
    ("queued_bytes", Gauge, lambda s: sum(o.queued_bytes for o in s.outboxes),
     "Bytes waiting in outboxes, summed over connections."),
    ("max_queued_frames", Gauge, lambda s: max((o.queued_frames for o in s.outboxes), default=0),
     "Frames waiting in the fullest outbox (outbox_max_messages closes it)."),
    ("max_queued_bytes", Gauge, lambda s: max((o.queued_bytes for o in s.outboxes), default=0),
     "Bytes waiting in the fullest outbox (outbox_max_bytes closes it)."),
    ("frames_sent", Counter, lambda s: s.frames_sent, "Frames written to clients."),
    ("sent_bytes", Counter, lambda s: s.bytes_sent, "Bytes written to clients."),
    ("batches", Counter, lambda s: s.batches, "Delta batches flushed."),
    ("coalesced", Counter, lambda s: s.coalesced,
     "Queued delta frames merged away by the slow-consumer policy."),
    ("dropped", Counter, lambda s: s.dropped,
     "Queued frames discarded because their connection was closed or broke."),
    ("lost_batches", Counter, lambda s: s.lost_batches,
     "Delta batches the backplane could not take (it was unavailable)."),
    ("resyncs", Counter, lambda s: s.resyncs,
     "Times subscribers were told to reload a session after lost events."),
    ("session_faults", Counter, lambda s: s.session_faults,
     "Unexpected errors in the hub's work for one session; above zero means a bug."),
    ("suppressed_logs", Counter, lambda s: s.suppressed_logs,
     "Log records about one connection left out once it had caused too many."),
    ("unknown_agent_events", Counter, lambda s: s.unknown_agent_events,
     "Agent events of a type with no handler."),
)  # fmt: skip

# The backplane's own figures, by their key in ``statistics().broker``, as
# ``broker_<key>``; a broker reports only what it has (LocalBroker: nothing),
# and so does a scrape. A key not listed here (another broker's, or one added
# since) is still reported, untyped, rather than silently left out.
BROKER: Final[tuple[tuple[str, Kind, str], ...]] = (
    ("published", Counter, "Events this process committed to the backplane."),
    ("retried", Counter,
     "Events sent again because their session was not where this process predicted."),
    ("received", Counter, "Messages received from the backplane."),
    ("forged", Counter,
     "Backplane messages and history entries dropped: bad signature, malformed, moved."),
    ("gaps_filled", Counter, "Gaps in a session's stream filled from its history."),
    ("resyncs", Counter, "Sessions reloaded from the backplane after events it no longer held."),
    ("reconnects", Counter, "Reconnections to the backplane."),
    ("failed", Counter, "Publications that failed (backplane unreachable or an error reply)."),
    ("watched_sessions", Gauge, "Sessions this process listens to on the backplane."),
)  # fmt: skip

BROKER_KEYS: Final = frozenset(key for key, _, _ in BROKER)

NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")  # a label, or a metric name's part
OWN_LABELS: Final = frozenset({"reason", "code"})

Snapshot = tuple[tuple[str, ...], HubStatistics]


class HubCollector(Collector):
    """Reports a hub's ``statistics()`` to Prometheus, as ``sessionfanout_*``.

    ``registry`` is where to register (prometheus_client's global one by
    default; ``None`` registers nowhere, as for prometheus_client's own
    collectors). ``labels`` go on every sample; they tell hubs apart when one
    collector reports several (``add``)."""

    def __init__(
        self,
        hub: Hub,
        registry: CollectorRegistry | None = REGISTRY,
        *,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        labels = labels or {}
        for name in labels:
            if not NAME.fullmatch(name) or name.startswith("__") or name in OWN_LABELS:
                raise InvalidArgument(
                    f"label {name!r} must match [a-zA-Z_][a-zA-Z0-9_]*, not start with '__' "
                    f"and not be one of {sorted(OWN_LABELS)}"
                )
        self._label_names = tuple(labels)
        self._hubs: list[tuple[Hub, tuple[str, ...]]] = []
        self.add(hub, labels)
        if registry is not None:
            registry.register(self)

    def add(self, hub: Hub, labels: Mapping[str, str]) -> None:
        """Report ``hub`` too, under the same label names as the first with other values.

        One collector for several hubs, not one each: two collectors would
        write each family twice, which Prometheus refuses (the registry
        refuses the second with ``DuplicateTimeseries``)."""
        if set(labels) != set(self._label_names):
            raise InvalidArgument(f"labels must name exactly {list(self._label_names)}")
        values = tuple(labels[name] for name in self._label_names)
        if not all(isinstance(value, str) for value in values):
            raise InvalidArgument("label values must be strings")
        for known, known_values in self._hubs:
            if known is hub:
                raise InvalidArgument("this hub is collected already")
            if known_values == values:
                raise InvalidArgument(f"another hub is collected with labels {dict(labels)}")
        self._hubs.append((hub, values))

    def describe(self) -> Iterator[Metric]:
        """The families, without samples: registering reads no hub (it may not
        have started) and still finds a clash of names."""
        return self._families([])

    def collect(self) -> Iterator[Metric]:
        """One snapshot per hub, then every family from those snapshots."""
        return self._families([(values, hub.statistics()) for hub, values in self._hubs])

    def _families(self, snapshots: list[Snapshot]) -> Iterator[Metric]:
        names = self._label_names
        for name, kind, read, help_text in HUB:
            yield _family(kind, name, help_text, names, [(v, read(s)) for v, s in snapshots])
        closed = Counter(
            PREFIX + "closed_connections",
            "Connections the hub closed: reason slow (outbox overflow, 1008) or broken "
            "(their send raised).",
            labels=(*names, "reason"),
        )
        errors = Counter(
            PREFIX + "client_errors",
            "Client frames answered with client_error, by its PROTOCOL.md code.",
            labels=(*names, "code"),
        )
        for values, stats in snapshots:
            closed.add_metric((*values, "slow"), stats.closed_slow)
            closed.add_metric((*values, "broken"), stats.closed_broken)
            by_code = stats.client_errors_by_code
            # Every code from zero, so that rate() sees the first error of each.
            for code in sorted(CLIENT_ERROR_CODES | by_code.keys()):
                errors.add_metric((*values, code), by_code.get(code, 0))
        yield closed
        yield errors
        unlisted = {key for _, stats in snapshots for key in stats.broker} - BROKER_KEYS
        untyped = [(key, Unknown, "Reported by the broker.") for key in sorted(unlisted)]
        for key, kind, help_text in (*BROKER, *untyped):
            samples = [(v, s.broker[key]) for v, s in snapshots if key in s.broker]
            # A key that cannot be part of a metric name would fail the whole scrape.
            if samples and NAME.fullmatch(key):
                yield _family(kind, "broker_" + key, help_text, names, samples)


def _family(
    kind: Kind,
    name: str,
    help_text: str,
    label_names: tuple[str, ...],
    samples: list[tuple[tuple[str, ...], int]],
) -> Metric:
    family = kind(PREFIX + name, help_text, labels=label_names)
    for values, value in samples:
        family.add_metric(values, value)
    return family

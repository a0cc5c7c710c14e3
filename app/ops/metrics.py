"""`GET /metrics`: the stats in Prometheus text format, written by prometheus-client.

Every figure is read from Redis at each scrape, so each is true across the gateway's processes
and restarts; the latency histogram's counters are cumulative there (app/store/latency.py), so
`rate()` and `histogram_quantile()` aggregate them across subscriptions and gateways.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from app.ops import stats as ops_stats
from app.store.client import now_ms
from app.store.latency import histogram
from app.store.queries import Queries
from app.store.reads import both, gather
from app.subscriptions.spec import Subscription

MEDIA_TYPE = "text/plain; version=0.0.4"


class _Snapshot:
    """A collector over one stats snapshot and the latency histograms' fields, by
    subscription (both read from Redis per scrape)."""

    def __init__(self, stats: dict[str, Any], latencies: Mapping[str, dict[str, int]]) -> None:
        self.stats = stats
        self.latencies = latencies

    def collect(self) -> Iterator[Metric]:
        ingest = self.stats["ingest"]
        events = CounterMetricFamily(
            "orderhook_ingest_events", "Hook notifications by outcome", labels=["outcome", "reason"]
        )
        events.add_metric(["accepted", ""], ingest["accepted"])
        events.add_metric(["duplicate", ""], ingest["duplicates"])
        for reason, count in sorted(ingest["rejected"].items()):
            events.add_metric(["rejected", reason], count)
        yield events
        yield from self._subscriptions(self.stats["subscriptions"])

    def _subscriptions(self, subs: list[dict[str, Any]]) -> Iterator[Metric]:
        outcomes = CounterMetricFamily(
            "orderhook_deliveries",
            "Delivery attempts' outcomes",
            labels=["subscription", "outcome"],
        )
        gauges = {
            "queued": GaugeMetricFamily(
                "orderhook_queue_depth", "Deliveries waiting", labels=["subscription"]
            ),
            "inFlight": GaugeMetricFamily(
                "orderhook_in_flight", "Deliveries being attempted", labels=["subscription"]
            ),
            "deadLetters": GaugeMetricFamily(
                "orderhook_dead_letters", "Dead-letter queue size", labels=["subscription"]
            ),
        }
        enabled = GaugeMetricFamily(
            "orderhook_subscription_enabled", "1 enabled, 0 disabled", labels=["subscription"]
        )
        oldest = GaugeMetricFamily(
            "orderhook_oldest_undelivered_seconds",
            "Age of the oldest undelivered event",
            labels=["subscription"],
        )
        filter_errors = CounterMetricFamily(
            "orderhook_filter_errors", "Filters failing at run time", labels=["subscription"]
        )
        single_fire = CounterMetricFamily(
            "orderhook_single_fire_suppressed",
            "Matching events not sent: their order had fired already (FromOrders single fire)",
            labels=["subscription"],
        )
        for sub in subs:
            sid = sub["id"]
            for outcome, key in (
                ("delivered", "delivered"),
                ("retried", "retried"),
                ("dead_lettered", "deadLettered"),
                ("stale", "stale"),
            ):
                outcomes.add_metric([sid, outcome], sub[key])
            for key, family in gauges.items():
                family.add_metric([sid], sub[key])
            enabled.add_metric([sid], 1 if sub["state"] == "enabled" else 0)
            oldest.add_metric([sid], sub["oldestUndeliveredAgeS"] or 0)
            filter_errors.add_metric([sid], sub["filterErrors"])
            single_fire.add_metric([sid], sub["singleFireSuppressed"])
        yield outcomes
        yield from gauges.values()
        yield from (enabled, oldest, filter_errors, single_fire)
        yield self._latency(subs)

    def _latency(self, subs: list[dict[str, Any]]) -> Metric:
        family = HistogramMetricFamily(
            "orderhook_delivery_latency_seconds",
            "From receipt to delivery (deliveries replayed from the dead-letter queue left out)",
            labels=["subscription"],
        )
        for sub in subs:
            h = histogram(self.latencies.get(sub["id"], {}))
            buckets = [(_le(bound), n) for bound, n in h.buckets]
            family.add_metric([sub["id"]], buckets, h.sum_s)
        return family


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else str(bound)


def render(stats: dict[str, Any], latencies: Mapping[str, dict[str, int]]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(stats, latencies))
    return generate_latest(registry)


async def scrape(subs: Sequence[Subscription], queries: Queries) -> bytes:
    """The whole `/metrics` answer, read now in one round trip."""
    histograms = gather([queries.latency_histogram(s.id) for s in subs])
    figures, latencies = await queries.read(both(ops_stats.figures(subs, queries), histograms))
    snapshot = ops_stats.view(subs, figures, now_ms())
    ids = [s.id for s in subs]
    return render(snapshot, dict(zip(ids, latencies, strict=True)))

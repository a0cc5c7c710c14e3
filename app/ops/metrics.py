"""`GET /metrics`: the stats in Prometheus text format, written by prometheus-client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


class _Snapshot:
    """A collector over one stats snapshot (the stats are read from Redis per scrape)."""

    def __init__(self, stats: dict[str, Any]) -> None:
        self.stats = stats

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
        latency = GaugeMetricFamily(
            "orderhook_delivery_latency_seconds",
            "From receipt to delivery, last 5 minutes",
            labels=["subscription", "quantile"],
        )
        filter_errors = CounterMetricFamily(
            "orderhook_filter_errors", "Filters failing at run time", labels=["subscription"]
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
            for quantile, key in (("0.5", "p50Ms"), ("0.95", "p95Ms"), ("0.99", "p99Ms")):
                value = sub["latency"][key]
                latency.add_metric([sid, quantile], (value or 0) / 1000)
            filter_errors.add_metric([sid], sub["filterErrors"])
        yield outcomes
        yield from gauges.values()
        yield from (enabled, oldest, latency, filter_errors)


def render(stats: dict[str, Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(stats))
    return generate_latest(registry)

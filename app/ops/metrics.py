"""`GET /metrics`: the stats in Prometheus text format, written by prometheus-client.

Three kinds of figures:
- read from Redis at each scrape (the stats, the latency histograms, the breakers), so each is
  true across the gateway's processes and restarts; the latency histogram's counters are
  cumulative there (app/store/latency.py), so `rate()` and `histogram_quantile()` aggregate
  them across subscriptions and gateways;
- kept by the process, which has them while Redis is down: the hook's answers by status. Under
  `serve --workers N` (PROMETHEUS_MULTIPROC_DIR set by app/cli.py) each process writes them to
  its file there and a scrape sums every process's, so any process answers the same total;
- found at the scrape: whether Redis answered it and whether /readyz would answer 200. Without
  Redis the scrape still answers, with these and the process's figures only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import Message, Send

from app.errors import StoreUnavailable
from app.ops import stats as ops_stats
from app.store.alerts import send_counts
from app.store.client import Store, now_ms
from app.store.latency import histogram
from app.store.queries import Queries
from app.store.reads import both, gather
from app.store.schema import Breaker, Enablement
from app.subscriptions.spec import Subscription

PATH = "/metrics"
MEDIA_TYPE = "text/plain; version=0.0.4"


class _Snapshot:
    """A collector over one stats snapshot and the latency histograms' fields, by
    subscription (both read from Redis per scrape)."""

    def __init__(
        self,
        stats: dict[str, Any],
        latencies: Mapping[str, dict[str, int]],
        alerts: Sequence[tuple[str, str, int]] = (),
    ) -> None:
        self.stats = stats
        self.latencies = latencies
        self.alerts = alerts  # (target, outcome, count) of the alert sends

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
        sends = CounterMetricFamily(
            "orderhook_alerts", "Alert sends by target and outcome", labels=["target", "outcome"]
        )
        for target, outcome, count in self.alerts:
            sends.add_metric([target, outcome], count)
        yield sends

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
            "orderhook_subscription_enabled",
            "1 enabled, 0 disabled or paused",
            labels=["subscription"],
        )
        states = GaugeMetricFamily(
            "orderhook_subscription_state",
            "The subscription's state (enabled, paused by an operator, disabled): 1 for the state"
            " it is in, 0 for the others",
            labels=["subscription", "state"],
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
        breakers = GaugeMetricFamily(
            "orderhook_breaker_state",
            "The circuit breaker's state: 1 for the state it is in, 0 for the others",
            labels=["subscription", "state"],
        )
        for sub in subs:
            sid = sub["id"]
            for state in Breaker:
                breakers.add_metric([sid, state.value], 1 if sub["breaker"] == state else 0)
            for enablement in Enablement:
                states.add_metric([sid, enablement.value], 1 if sub["state"] == enablement else 0)
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
        yield from (enabled, states, breakers, oldest, filter_errors, single_fire)
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


# --- Kept by the process -------------------------------------------------------------------

# Every counter the processes keep goes in _KEPT (app memory), or under PROMETHEUS_MULTIPROC_DIR
# in this process's file there.
_KEPT = CollectorRegistry(auto_describe=False)
HOOK_RESPONSES = Counter(
    "orderhook_hook_responses",
    "Answers to POST /hooks/vtex by HTTP status (kept by the gateway's processes, not Redis)",
    labelnames=["code"],
    registry=_KEPT,
)
_BY_STATUS: dict[int, Counter] = {}


def _hook_responses(status: int) -> Counter:
    """HOOK_RESPONSES' child of `status`, made once (labels() costs twice what inc() does)."""
    child = _BY_STATUS.get(status)
    if child is None:
        child = _BY_STATUS[status] = HOOK_RESPONSES.labels(str(status))
    return child


for _status in (200, 500, 503):  # shown from 0: a first 5xx is an increase rate() sees
    _hook_responses(_status)


def counting_responses(send: Send) -> Send:
    """`send`, counting the status of the response it starts in HOOK_RESPONSES."""

    async def counted(message: Message) -> None:
        if message["type"] == "http.response.start":
            _hook_responses(message["status"]).inc()
        await send(message)

    return counted


class _Kept:
    """The figures kept by the processes: this one's, or under `serve --workers N` every
    process's, summed from their files in PROMETHEUS_MULTIPROC_DIR."""

    def collect(self) -> Iterator[Metric]:
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if folder:
            summed = MultiProcessCollector(None, folder)  # type: ignore[no-untyped-call]
            yield from summed.collect()  # type: ignore[no-untyped-call]
        else:
            yield from _KEPT.collect()


# --- Found at the scrape ---------------------------------------------------------------------


class _Health:
    """Whether Redis answered this scrape, and whether /readyz would answer 200 now."""

    def __init__(self, store_up: bool, ready: bool) -> None:
        self.store_up = store_up
        self.ready = ready

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "orderhook_store_up",
            "1 when Redis answered this scrape's reads, 0 when it did not",
            value=int(self.store_up),
        )
        yield GaugeMetricFamily(
            "orderhook_ready",
            "1 when GET /readyz answers 200 now (Redis answers, runs noeviction, takes a write)",
            value=int(self.ready),
        )


async def _ready(store: Store) -> bool:
    try:
        await store.check_ready()
    except StoreUnavailable:
        return False
    return True


def render(*collectors: Any) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)


async def snapshot(subs: Sequence[Subscription], queries: Queries) -> _Snapshot:
    """The figures read from Redis, in one round trip."""
    histograms = gather([queries.latency_histogram(s.id) for s in subs])
    figures, latencies = await queries.read(both(ops_stats.figures(subs, queries), histograms))
    stats = ops_stats.view(subs, figures, now_ms())
    by_sub = dict(zip([s.id for s in subs], latencies, strict=True))
    return _Snapshot(stats, by_sub, send_counts(figures.counters))


async def scrape(subs: Sequence[Subscription], queries: Queries, store: Store) -> bytes:
    """The whole `/metrics` answer; without Redis, the process's figures and store_up 0."""
    try:
        read = await snapshot(subs, queries)
    except StoreUnavailable:
        return render(_Kept(), _Health(store_up=False, ready=False))
    return render(read, _Kept(), _Health(store_up=True, ready=await _ready(store)))

"""`GET /ops/stats`: totals from Redis (true across restarts and processes), queues, health."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.redaction import shown_url
from app.store.client import now_ms
from app.store.queries import Queries
from app.store.reads import Read, both, gather, record
from app.store.schema import Counter, rejected_field, stat_field
from app.subscriptions.spec import Subscription

LATENCY_WINDOW_S = 300


def percentile(values: Sequence[int], q: float) -> int | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def latency_summary(samples: Sequence[tuple[int, int]], now_ms: int) -> dict[str, Any]:
    """Percentiles (ms) of the deliveries in the last LATENCY_WINDOW_S; None for each when
    there were none (never 0)."""
    recent = [value for at, value in samples if now_ms - at <= LATENCY_WINDOW_S * 1000]
    return {
        "count": len(recent),
        "p50Ms": percentile(recent, 50),
        "p95Ms": percentile(recent, 95),
        "p99Ms": percentile(recent, 99),
    }


def ingest_totals(counters: dict[str, int]) -> dict[str, Any]:
    prefix = rejected_field("")
    rejected = {k.removeprefix(prefix): v for k, v in counters.items() if k.startswith(prefix)}
    accepted = counters.get(Counter.ACCEPTED, 0)
    duplicates = counters.get(Counter.DUPLICATES, 0)
    return {
        "received": accepted + duplicates + sum(rejected.values()),
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": rejected,
    }


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


@dataclass(frozen=True)
class Figures:
    """What the stats show, as read: the counters, each subscription's (counts, health) in
    the settings' order, and the events accepted per minute."""

    counters: dict[str, int]
    subscriptions: list[tuple[dict[str, Any], dict[str, Any]]]
    per_minute: list[tuple[int, int]]


def figures(subs: Sequence[Subscription], queries: Queries) -> Read[Figures]:
    """Everything the stats show, for every subscription: one pipeline."""
    per_sub = [both(queries.subscription_counts(sub.id), queries.health(sub.id)) for sub in subs]
    return record(Figures, queries.counters(), gather(per_sub), queries.ingest_per_minute(60))


def view(subs: Sequence[Subscription], read: Figures, now_ms: int) -> dict[str, Any]:
    """`GET /ops/stats`'s answer from what was read."""
    subscriptions = [
        _subscription(sub, counts, health, read.counters, now_ms)
        for sub, (counts, health) in zip(subs, read.subscriptions, strict=True)
    ]
    return {
        "ingest": ingest_totals(read.counters),
        "ingestPerMinute": read.per_minute,
        "subscriptions": subscriptions,
    }


def _subscription(
    sub: Subscription,
    counts: dict[str, Any],
    health: dict[str, Any],
    counters: dict[str, int],
    now_ms: int,
) -> dict[str, Any]:
    oldest = health["oldestMs"]
    return {
        "id": sub.id,
        "url": shown_url(sub.url, "ops"),
        **counts,
        "delivered": counters.get(stat_field(sub.id, Counter.DELIVERED), 0),
        "retried": counters.get(stat_field(sub.id, Counter.RETRIED), 0),
        "deadLettered": counters.get(stat_field(sub.id, Counter.DEAD), 0),
        "stale": counters.get(stat_field(sub.id, Counter.STALE), 0),
        "filterErrors": counters.get(stat_field(sub.id, Counter.FILTER_ERRORS), 0),
        "singleFireSuppressed": counters.get(stat_field(sub.id, Counter.SINGLE_FIRE_SUPPRESSED), 0),
        "oldestUndeliveredAgeS": None if oldest is None else max(0, now_ms - oldest) / 1000,
        "latency": latency_summary(health["latencies"], now_ms),
        "lastError": health["lastError"],
        "lastErrorAt": _seconds(health["lastErrorMs"]),
        "lastDeliveredAt": _seconds(health["lastDeliveredMs"]),
    }


async def collect(subs: Sequence[Subscription], queries: Queries) -> dict[str, Any]:
    """`GET /ops/stats`'s answer, read now in one round trip."""
    return view(subs, await queries.read(figures(subs, queries)), now_ms())

"""`GET /ops/stats`: totals from Redis (true across restarts and processes), queues, health."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from app.config import Settings
from app.redaction import shown_url
from app.store.queries import Queries
from app.store.schema import Counter, rejected_field, stat_field

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


async def collect(settings: Settings, queries: Queries) -> dict[str, Any]:
    counters = await queries.stats()
    now_ms = int(time.time() * 1000)
    subscriptions = []
    for sub in settings.subscriptions:
        counts = await queries.subscription_counts(sub.id)
        health = await queries.health(sub.id)
        oldest = health["oldestMs"]
        subscriptions.append(
            {
                "id": sub.id,
                "url": shown_url(sub.url, "ops"),
                **counts,
                "delivered": counters.get(stat_field(sub.id, Counter.DELIVERED), 0),
                "retried": counters.get(stat_field(sub.id, Counter.RETRIED), 0),
                "deadLettered": counters.get(stat_field(sub.id, Counter.DEAD), 0),
                "stale": counters.get(stat_field(sub.id, Counter.STALE), 0),
                "filterErrors": counters.get(stat_field(sub.id, Counter.FILTER_ERRORS), 0),
                "singleFireSuppressed": counters.get(
                    stat_field(sub.id, Counter.SINGLE_FIRE_SUPPRESSED), 0
                ),
                "oldestUndeliveredAgeS": None if oldest is None else max(0, now_ms - oldest) / 1000,
                "latency": latency_summary(health["latencies"], now_ms),
                "lastError": health["lastError"],
                "lastErrorAt": _seconds(health["lastErrorMs"]),
                "lastDeliveredAt": _seconds(health["lastDeliveredMs"]),
            }
        )
    return {
        "ingest": ingest_totals(counters),
        "ingestPerMinute": await queries.ingest_per_minute(60),
        "subscriptions": subscriptions,
    }

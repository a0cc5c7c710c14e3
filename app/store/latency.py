"""The delivery latency histogram: its buckets, and the fields of its Redis hash.

Each subscription's hash (`Keys.latency_histogram`) counts deliveries from receipt to delivery,
across every process and restart: field `<upper bound in ms>` (or `inf`) the deliveries in that
bucket alone, `sumMs` their total latency (the count is the buckets' sum). settle.lua adds to
it where a delivery settles (a delivery replayed out of the dead-letter queue is left out: its
time there is the operator's, not the gateway's); `/metrics` turns it into a histogram.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from app.store.schema import LatencyField

# From a first attempt on loopback (10 ms) to the last retry of the default schedule
# (5 s, 5 min, 30 min, 2 h, 5 h, 10 h: about 17.6 h): one bucket per step a person would see.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    600,
    1800,
    3600,
    7200,
    21600,
    86400,
)
_BOUNDS_MS = tuple(round(b * 1000) for b in LATENCY_BUCKETS_S)
INF = "inf"
SUM_MS = LatencyField.SUM_MS


def bucket_field(latency_ms: int) -> str:
    """The field of the one bucket a latency falls in (Prometheus' `le`: at most its bound)."""
    i = bisect.bisect_left(_BOUNDS_MS, latency_ms)
    return str(_BOUNDS_MS[i]) if i < len(_BOUNDS_MS) else INF


@dataclass(frozen=True)
class Histogram:
    buckets: list[tuple[float, int]]  # (upper bound s, cumulative count), the last one +Inf
    count: int
    sum_s: float


def histogram(fields: dict[str, int]) -> Histogram:
    """The cumulative histogram from a hash's fields. A field of a bound no longer in
    LATENCY_BUCKETS_S (written by another version) counts in the next bound up."""
    per_bucket = [0] * (len(_BOUNDS_MS) + 1)
    for name, n in fields.items():
        if name != SUM_MS:
            upper = float("inf") if name == INF else int(name)
            per_bucket[bisect.bisect_left(_BOUNDS_MS, upper)] += n
    buckets, running = [], 0
    for bound, n in zip((*LATENCY_BUCKETS_S, float("inf")), per_bucket, strict=True):
        running += n
        buckets.append((float(bound), running))
    return Histogram(buckets, running, fields.get(SUM_MS, 0) / 1000)

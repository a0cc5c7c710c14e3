"""Durations for people: one formatter for the dashboard and `orderhook status`."""

from __future__ import annotations

import io

import pytest

from app.cli_ops import print_status
from app.durations import human_duration, human_ms, with_age


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "—"),
        (-3, "0 ms"),  # clocks apart: never negative
        (0.0004, "0 ms"),
        (0.042, "42 ms"),
        (0.9994, "999 ms"),
        (0.9996, "1 s"),  # not "1000 ms"
        (2.5, "2.5 s"),
        (9.96, "10 s"),
        (59.6, "1 min"),  # not "60 s"
        (90, "1.5 min"),
        (888.346, "15 min"),
        (3570, "1 h"),
        (4320, "1.2 h"),
        (36 * 3600, "36 h"),
        (172_799, "2 d"),  # not "48 h"
        (7 * 86400, "7 d"),
        (400 * 86400, "400 d"),
    ],
)
def test_human_duration(seconds: float | None, shown: str) -> None:
    assert human_duration(seconds) == shown


def test_milliseconds_and_ages() -> None:
    assert human_ms(888_346) == "15 min" and human_ms(None) == "—"
    assert with_age("HTTP 500", 1000.0, 1180.0) == "HTTP 500, 3 min ago"
    assert with_age(None, 1000.0, 1180.0) is None and with_age("x", None, 0) == "x"


def test_status_shows_human_units_and_the_last_errors_age() -> None:
    sub = {
        "id": "wms",
        "state": "enabled",
        "delivered": 4,
        "retried": 2,
        "queued": 0,
        "inFlight": 0,
        "deadLetters": 0,
        "oldestUndeliveredAgeS": 95.0,
        "latency": {"count": 4, "p50Ms": 30, "p95Ms": 900, "p99Ms": 888_346},
        "lastError": "HTTP 500",
        "lastErrorAt": 0.0,  # long ago
        "breaker": "closed",
        "consecutiveFailures": 0,
        "nextProbeAt": None,
    }
    empty = {**sub, "id": "erp", "latency": {"count": 0, "p99Ms": None}, "lastError": None}
    ingest = {"received": 4, "accepted": 4, "duplicates": 0, "rejected": {}}
    out = io.StringIO()
    print_status({"ingest": ingest, "subscriptions": [sub, empty]}, out)
    wms = next(line for line in out.getvalue().splitlines() if line.startswith("wms"))
    assert "1.6 min" in wms and "15 min" in wms and "888346" not in wms
    assert "HTTP 500, " in wms and " d ago" in wms
    erp = next(line for line in out.getvalue().splitlines() if line.startswith("erp"))
    assert "—" in erp

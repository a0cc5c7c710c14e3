"""The dashboard's pure parts: health colours, latency and last-error cells, the refresh script
and its Content-Security-Policy hash."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import pytest

from app.ops import dashboard

NOW = 1_800_000_000.0
NO_LATENCY = {"count": 0, "p50Ms": None, "p95Ms": None, "p99Ms": None}


def sub(**changes: Any) -> dict[str, Any]:
    base = {
        "id": "erp",
        "url": "https://erp.example.com/hook",
        "state": "enabled",
        "reason": None,
        "delivered": 3,
        "stale": 0,
        "retried": 0,
        "queued": 0,
        "held": 0,
        "inFlight": 0,
        "deadLetters": 0,
        "oldestUndeliveredAgeS": None,
        "latency": NO_LATENCY,
        "lastError": None,
        "lastErrorAt": None,
        "lastDeliveredAt": None,
        "breaker": "closed",
        "consecutiveFailures": 0,
        "nextProbeAt": None,
    }
    return {**base, **changes}


@pytest.mark.parametrize(
    ("changes", "colour"),
    [
        ({}, "ok"),
        # an error a success followed is history, however recent: it was amber for 5 minutes
        ({"lastErrorAt": NOW - 30, "lastDeliveredAt": NOW - 20}, "ok"),
        ({"lastErrorAt": NOW - 30, "lastDeliveredAt": NOW - 40}, "warn"),  # failing now
        ({"lastErrorAt": NOW - 30}, "warn"),  # never delivered yet
        ({"lastErrorAt": NOW - 301, "lastDeliveredAt": NOW - 4000}, "ok"),  # long quiet since
        ({"oldestUndeliveredAgeS": 61, "lastDeliveredAt": NOW}, "warn"),  # a backlog
        ({"deadLetters": 1, "lastDeliveredAt": NOW}, "bad"),
        ({"state": "disabled"}, "bad"),
    ],
)
def test_health_class(changes: dict[str, Any], colour: str) -> None:
    assert dashboard.health_class(sub(**changes), NOW) == colour


def test_empty_latency_reads_a_dash_not_slashes() -> None:
    row = dashboard.subscriptions_table([sub()], can_replay=False)
    assert "/ /" not in row and "—" in row and "no deliveries in the last 5 min" in row


def test_latency_and_waiting_in_human_units() -> None:
    latency = {"count": 9, "p50Ms": 42, "p95Ms": 2500, "p99Ms": 888_346}
    row = dashboard.subscriptions_table(
        [sub(latency=latency, oldestUndeliveredAgeS=5400.0)], can_replay=False
    )
    assert "42 ms / 2.5 s / 15 min" in row and "1.5 h" in row
    assert "888346" not in row


def test_last_error_shows_its_age() -> None:
    row = dashboard.subscriptions_table(
        [sub(lastError="HTTP 500", lastErrorAt=dashboard.time.time() - 180)], can_replay=False
    )
    assert "HTTP 500, 3 min ago" in row


def page(order_id: str | None = None) -> str:
    stats = {
        "ingest": {"received": 0, "accepted": 0, "duplicates": 0, "rejected": {}},
        "ingestPerMinute": [],
        "subscriptions": [sub()],
    }
    found = [] if order_id else None
    no_dead = dashboard.DeadLetterPage([], 0, 1, 50)
    return dashboard.page(stats, no_dead, [], "ops", order_id, found, refresh_s=2.5)


def test_the_refresh_script_is_the_one_the_policy_allows_by_its_hash() -> None:
    html = page()
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", html, re.S)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    policy = dashboard.CONTENT_SECURITY_POLICY
    assert f"script-src 'sha256-{digest}';" in policy and "unsafe-inline" not in policy
    assert 'data-refresh-s="2.5"' in html
    assert '<noscript><meta http-equiv="refresh" content="2.5"></noscript>' in html


def test_without_script_search_results_do_not_refresh() -> None:
    html = page("v1-01")
    assert "http-equiv" not in html and "<script" in html

"""Outcome decisions and Retry-After parsing."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from app.retry import Dead, Delivered, Gone, Retry, decide, parse_retry_after

SCHEDULE = (5.0, 300.0, 1800.0)


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    assert decide(status, 1, SCHEDULE) == Delivered()


def test_410_is_gone_whatever_the_attempt() -> None:
    assert decide(410, 1, SCHEDULE) == Gone()
    assert decide(410, 99, SCHEDULE) == Gone()


@pytest.mark.parametrize(("attempts", "base"), [(1, 5.0), (2, 300.0), (3, 1800.0)])
@pytest.mark.parametrize("status", [None, 301, 400, 404, 500, 502])
def test_failures_follow_the_schedule_with_20_percent_jitter(
    attempts: int, base: float, status: int | None
) -> None:
    rng = random.Random(attempts)
    delays = []
    for _ in range(200):
        outcome = decide(status, attempts, SCHEDULE, rng=rng)
        assert isinstance(outcome, Retry)
        delays.append(outcome.delay_s)
    assert base * 0.8 <= min(delays) < base * 0.9
    assert base * 1.1 < max(delays) <= base * 1.2


def test_after_the_last_retry_it_is_dead() -> None:
    assert decide(500, 4, SCHEDULE) == Dead()
    assert decide(None, 1, ()) == Dead()


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_a_floor_capped_at_a_day(status: int) -> None:
    outcome = decide(status, 1, SCHEDULE, retry_after_s=60)
    assert isinstance(outcome, Retry) and outcome.delay_s == 60
    outcome = decide(status, 3, SCHEDULE, retry_after_s=1)
    assert isinstance(outcome, Retry) and outcome.delay_s >= 1800 * 0.8
    outcome = decide(status, 1, SCHEDULE, retry_after_s=10**9)
    assert isinstance(outcome, Retry) and outcome.delay_s == 86400


def test_retry_after_only_counts_for_429_and_503() -> None:
    outcome = decide(500, 1, SCHEDULE, retry_after_s=600)
    assert isinstance(outcome, Retry) and outcome.delay_s <= 6


def test_parse_retry_after() -> None:
    assert parse_retry_after("120") == 120
    assert parse_retry_after(" 7 ") == 7
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    when = format_datetime(datetime.fromtimestamp(1_000_060, UTC), usegmt=True)
    assert parse_retry_after(when, now=1_000_000) == 60
    assert parse_retry_after(when, now=2_000_000) == 0

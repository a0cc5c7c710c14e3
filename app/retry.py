"""What to do after a delivery attempt: pure decisions, no I/O.

2xx                              → Delivered
410                              → Gone (the subscriber asks us to stop: disable it)
429 or 503 with Retry-After      → Retry, no sooner than Retry-After (at most a day)
anything else, timeout, refused  → Retry on the schedule with ±20% jitter
schedule exhausted               → Dead (the dead-letter queue)
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from app.params import ascii_digits

DEFAULT_RETRY_SCHEDULE_S = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)
JITTER = 0.2
MAX_RETRY_AFTER_S = 86400.0
_RNG = random.Random()


@dataclass(frozen=True)
class Delivered:
    pass


@dataclass(frozen=True)
class Retry:
    delay_s: float


@dataclass(frozen=True)
class Dead:
    pass


@dataclass(frozen=True)
class Gone:
    pass


Outcome = Delivered | Retry | Dead | Gone


def decide(
    status: int | None,
    attempts: int,
    schedule: Sequence[float],
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> Outcome:
    """`attempts` counts the attempt just made; `status` is None for a timeout or error."""
    if status is not None and 200 <= status < 300:
        return Delivered()
    if status == 410:
        return Gone()
    if attempts > len(schedule):
        return Dead()
    delay = jittered(schedule[attempts - 1], rng or _RNG)
    if status in (429, 503) and retry_after_s is not None:
        delay = max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))
    return Retry(delay)


def jittered(delay_s: float, rng: random.Random) -> float:
    return delay_s * (1 + JITTER * (2 * rng.random() - 1))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None if unusable."""
    if not value:
        return None
    value = value.strip()
    if ascii_digits(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))

"""Moments as people read them, for the dashboard and `orderhook status`: the UTC time and how
far it is from now ("2026-12-03 10:42:05 UTC (in 10 min)", "... (3 min ago)"), the length of
time in app.durations' units."""

from __future__ import annotations

from datetime import UTC, datetime

from app.durations import human_duration


def utc(at: float) -> str:
    """Unix seconds as a UTC time, to the second."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def relative(at: float, now: float) -> str:
    """`in 10 min`, `3 min ago`, or `now` (within a second)."""
    if abs(at - now) < 1:
        return "now"
    return f"in {human_duration(at - now)}" if at > now else f"{human_duration(now - at)} ago"


def moment(at: float, now: float) -> str:
    """`2026-12-03 10:42:05 UTC (in 10 min)`."""
    return f"{utc(at)} ({relative(at, now)})"

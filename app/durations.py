"""Durations as people read them: `340 ms`, `2.5 s`, `15 min`, `1.2 h`, `3 d` (the dashboard's
and `orderhook status`'s one formatter). Days only from 48 h on: "36 h" reads better than
"1.5 d" for the age of a backlog.

Each figure takes the largest unit it fills at least once, with one decimal below 10 unless
that is 0 (milliseconds always whole) and none above; nothing reads `60 s` or `1000 ms`: a
figure that rounds up to the next unit is shown in that unit.
"""

from __future__ import annotations

NONE = "—"
# (unit, its size in seconds, the figure from which the next unit takes over)
_UNITS = (("ms", 0.001, 1000.0), ("s", 1.0, 60.0), ("min", 60.0, 60.0), ("h", 3600.0, 48.0))


def _figure(value: float, unit: str) -> str:
    if value < 9.95 and unit != "ms":
        return f"{value:.1f}".removesuffix(".0")
    return f"{value:.0f}"


def human_duration(seconds: float | None) -> str:
    """`seconds` in the largest unit that reads well; "—" for None (nothing to measure)."""
    if seconds is None:
        return NONE
    seconds = max(0.0, seconds)
    for unit, size, next_at in _UNITS:
        figure = _figure(seconds / size, unit)
        if float(figure) < next_at:
            return f"{figure} {unit}"
    return f"{_figure(seconds / 86400, 'd')} d"


def human_ms(ms: float | None) -> str:
    return human_duration(None if ms is None else ms / 1000)


def with_age(text: str | None, at: float | None, now: float) -> str | None:
    """`text` and how long ago `at` (Unix seconds) was: "HTTP 500, 3 min ago"."""
    if text is None or at is None:
        return text
    return f"{text}, {human_duration(now - at)} ago"

"""A per-order delivery's position: where it sorts among its order's deliveries.

`<ticks>|<receipt ms>|<delivery id>`: the change time (change_time's rule; the receipt time
where the event has none) as 100 ns ticks, then the receipt in ms, each zero-padded to its
fixed width (and kept within it), so positions sort as text: in a Redis sorted set whose scores
are all 0, and in Lua, where 17 digits are beyond a number's exact range. The parts are found by
the separator, never by offset; the id, last, may hold the separator itself.

`encode` is the one encoder and `decode` the one decoder; order.lua's order_pos is decode's
Lua twin, built from `lua_constants` (tests/test_ordering_position.py holds them to agree).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from app.events import event_change_time, iso_ticks

SEPARATOR = "|"
TICKS_DIGITS = 17  # 100 ns ticks up to 2286-11-20: ingest refuses later times
MS_DIGITS = 13
MAX_TICKS = 10**TICKS_DIGITS - 1
MAX_MS = 10**MS_DIGITS - 1
_TICKS_PER_MS = 10_000
_DIGITS = re.compile(r"[0-9]+", re.ASCII)


class Position(NamedTuple):
    ticks: int  # the change time as 100 ns ticks (the receipt's where there is none)
    receipt_ms: int
    delivery_id: str

    def encode(self) -> str:
        """The position as text; ValueError when a number does not fit its width."""
        if not (0 <= self.ticks <= MAX_TICKS and 0 <= self.receipt_ms <= MAX_MS):
            raise ValueError(f"position out of range: {self!r}")
        return SEPARATOR.join(
            (f"{self.ticks:0{TICKS_DIGITS}d}", f"{self.receipt_ms:0{MS_DIGITS}d}", self.delivery_id)
        )


def of_event(event: dict[str, Any], delivery_id: str) -> Position:
    """Where a delivery of `event` sorts: by its change time, then by receipt."""
    received = _fit(iso_ticks(event["receivedAt"]) or 0, MAX_TICKS)
    changed = iso_ticks(event_change_time(event))
    ticks = _fit(changed if changed is not None else received, MAX_TICKS)
    return Position(ticks, _fit(received // _TICKS_PER_MS, MAX_MS), delivery_id)


def encode(event: dict[str, Any], delivery_id: str) -> str:
    """The position of a delivery of `event`, as text."""
    return of_event(event, delivery_id).encode()


def decode(text: str) -> Position | None:
    """The parts of a position; None when `text` is not one."""
    parts = text.split(SEPARATOR, 2)
    if len(parts) != 3:
        return None
    ticks, ms, delivery_id = parts
    if not (_digits(ticks, TICKS_DIGITS) and _digits(ms, MS_DIGITS) and delivery_id):
        return None
    return Position(int(ticks), int(ms), delivery_id)


def lua_constants() -> str:
    """What order.lua's order_pos needs of this module, as Lua locals."""
    return (
        f"local POSITION_SEPARATOR = '{SEPARATOR}'\n"
        f"local POSITION_TICKS_DIGITS = {TICKS_DIGITS}\n"
        f"local POSITION_MS_DIGITS = {MS_DIGITS}\n"
    )


def _digits(text: str, width: int) -> bool:
    return len(text) == width and _DIGITS.fullmatch(text) is not None


def _fit(number: int, largest: int) -> int:
    return min(max(number, 0), largest)

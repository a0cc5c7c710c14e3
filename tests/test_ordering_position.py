"""app/ordering/position.py: a per-order delivery's position, its one encoder and decoder, and
order.lua's order_pos (the Lua decoder) agreeing with them."""

from __future__ import annotations

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from app.ordering.position import (
    MAX_MS,
    MAX_TICKS,
    MS_DIGITS,
    TICKS_DIGITS,
    Position,
    decode,
    encode,
    of_event,
)
from app.store.schema import Keys, lua_prelude
from app.store.scripts import shared_rules

# Delivery ids of any text Redis can hold (UTF-8: no lone surrogates), the separator included.
IDS = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40),
    st.sampled_from(["e.sub", "a|b", "|", "||x|", "a:b:c", "ordem-ç-東京|:", "x\ny", "\x00"]),
)
POSITIONS = st.builds(Position, st.integers(0, MAX_TICKS), st.integers(0, MAX_MS), IDS)

MALFORMED = [
    "",
    "|",
    "||",
    "x",
    "0" * TICKS_DIGITS + "|" + "0" * MS_DIGITS,  # no id
    "0" * TICKS_DIGITS + "|" + "0" * MS_DIGITS + "|",  # an empty id
    "0" * (TICKS_DIGITS + 1) + "|" + "0" * MS_DIGITS + "|id",  # 18-digit ticks
    "0" * (TICKS_DIGITS - 1) + "|" + "0" * MS_DIGITS + "|id",
    "0" * TICKS_DIGITS + "|" + "0" * (MS_DIGITS - 1) + "|id",
    "0" * TICKS_DIGITS + "|" + "0" * (MS_DIGITS + 1) + "|id",
    "0" * (TICKS_DIGITS - 1) + "x|" + "0" * MS_DIGITS + "|id",
    "0" * TICKS_DIGITS + "|" + "0" * (MS_DIGITS - 1) + "-|id",
    "\u0661" * TICKS_DIGITS + "|" + "0" * MS_DIGITS + "|id",  # Arabic-Indic digits
    "0" * TICKS_DIGITS + ":" + "0" * MS_DIGITS + ":id",  # another separator
    " " + "0" * TICKS_DIGITS + "|" + "0" * MS_DIGITS + "|id",
    "|" + "0" * TICKS_DIGITS + "|" + "0" * MS_DIGITS + "|id",
]


@given(POSITIONS)
def test_a_position_decodes_to_what_was_encoded(position: Position) -> None:
    text = position.encode()
    assert decode(text) == position
    assert text.endswith("|" + position.delivery_id)


@pytest.mark.parametrize("text", MALFORMED)
def test_what_is_not_a_position_decodes_to_none(text: str) -> None:
    assert decode(text) is None


@given(POSITIONS, POSITIONS)
def test_positions_sort_as_text_by_change_then_receipt(a: Position, b: Position) -> None:
    """As Redis sorts a sorted set's members of equal score: by their bytes."""
    if (a.ticks, a.receipt_ms) != (b.ticks, b.receipt_ms):
        earlier = (a.ticks, a.receipt_ms) < (b.ticks, b.receipt_ms)
        assert (a.encode() < b.encode()) == earlier
        assert (a.encode().encode() < b.encode().encode()) == earlier


@pytest.mark.parametrize(
    "ticks, receipt_ms", [(-1, 0), (MAX_TICKS + 1, 0), (0, -1), (0, MAX_MS + 1)]
)
def test_a_number_beyond_its_width_is_not_encoded(ticks: int, receipt_ms: int) -> None:
    with pytest.raises(ValueError):
        Position(ticks, receipt_ms, "id").encode()


@pytest.mark.parametrize(
    "event, ticks, receipt_ms",
    [
        (
            {
                "receivedAt": "2026-11-27T10:00:01.5Z",
                "currentChange": "2026-11-27T10:00:00.1234567Z",
            },
            17_957_736_001_234_567,
            1_795_773_601_500,
        ),
        (  # no change time: the receipt's
            {"receivedAt": "2026-11-27T10:00:01.5Z", "lastChange": None},
            17_957_736_015_000_000,
            1_795_773_601_500,
        ),
        (  # beyond the ticks' width: kept within it
            {"receivedAt": "1970-01-01T00:00:00Z", "currentChange": "2999-01-01T00:00:00Z"},
            MAX_TICKS,
            0,
        ),
    ],
)
def test_an_event_is_placed_by_its_change_time_then_its_receipt(
    event: dict[str, str | None], ticks: int, receipt_ms: int
) -> None:
    assert of_event(event, "e.s") == Position(ticks, receipt_ms, "e.s")
    assert decode(encode(event, "e.s")) == Position(ticks, receipt_ms, "e.s")


# ── order.lua's order_pos, run in Redis with the real prelude and rules ────────────────────────

ORDER_POS = """
local out = {}
for i, text in ipairs(ARGV) do
    local ticks, ms, id = order_pos(text)
    out[3 * i - 2] = ticks or false
    out[3 * i - 1] = ms or false
    out[3 * i] = id or false
end
return out
"""


def lua_decoded(rdb: redis.Redis, texts: list[str]) -> list[Position | None]:
    """order_pos of each text, as a Position (None where it returned nil)."""
    script = rdb.register_script(lua_prelude(Keys("test-position")) + shared_rules() + ORDER_POS)
    flat = script(keys=[], args=[t.encode() for t in texts]) if texts else []
    found: list[Position | None] = []
    for i in range(0, 3 * len(texts), 3):
        ticks, ms, delivery_id = flat[i : i + 3]
        found.append(None if ticks is None else Position(int(ticks), ms, delivery_id.decode()))
    return found


@settings(max_examples=50, deadline=None)
@given(st.lists(POSITIONS, max_size=20))
def test_order_lua_decodes_positions_as_python_does(
    rdb: redis.Redis, positions: list[Position]
) -> None:
    texts = [p.encode() for p in positions]
    assert lua_decoded(rdb, texts) == [decode(t) for t in texts] == positions


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(st.characters(exclude_categories=["Cs"]), max_size=40), max_size=20))
def test_order_lua_and_python_agree_on_any_text(rdb: redis.Redis, texts: list[str]) -> None:
    assert lua_decoded(rdb, texts) == [decode(t) for t in texts]


def test_order_lua_refuses_what_python_refuses(rdb: redis.Redis) -> None:
    assert lua_decoded(rdb, MALFORMED) == [None] * len(MALFORMED)

"""Per-order delivery, for subscriptions with ordering = "per-order": each order's deliveries
one at a time, by change time, without holding back other orders.

The package owns the whole concern: the position (position.py, its one encoder and decoder),
the rules in Redis (order.lua, prepended to the delivery scripts, which call it only through its
hooks: ordering_turn, ordering_enqueue, ordering_unroute, ordering_release_due,
ordering_settled, ordering_requeue) and, here, the router's hook: `place`.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

import msgspec

from app.ordering import position

if TYPE_CHECKING:
    from app.subscriptions.spec import Subscription


class OrderPlace(msgspec.Struct, rename="camel"):
    """A per-order delivery's place in its order, as order.lua's ordering_enqueue reads it: its
    position, its reorder window and whether it is dropped when older than the order's last
    delivered."""

    position: str
    window_ms: int = 0
    drop_stale: bool = False


def place(event: dict[str, Any], delivery_id: str, sub: Subscription) -> OrderPlace:
    """The place of `sub`'s delivery `delivery_id` of `event` in its order."""
    return OrderPlace(
        position.encode(event, delivery_id),
        int(sub.reorder_window_s * 1000),
        sub.drop_stale,
    )


def lua_rules() -> str:
    """The Lua side, for the delivery scripts: the position's constants and order.lua."""
    source = resources.files(__name__).joinpath("order.lua").read_text(encoding="utf-8")
    return position.lua_constants() + source

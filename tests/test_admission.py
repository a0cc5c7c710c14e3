"""One admission rule (app/store/admission.lua) for every path that puts a delivery in flight:
route.lua, for a delivery this process's worker has a slot for, and claim.lua, for due ones."""

from __future__ import annotations

import time

import orjson
import pytest
import redis

from app.events import normalize, parse_body, utc_now_iso
from app.ordering import OrderPlace
from app.ordering.position import encode as order_position
from app.store.client import Store, open_store
from app.store.deliveries import Deliveries
from app.store.routing import Planned, Routed, Routing
from app.store.schema import Enablement, Keys, State
from tests.catalogued import catalogue
from tests.test_ordering import state_notification

pytestmark = pytest.mark.anyio
RATE = 5  # max_per_second: a bucket of 5 tokens


async def routed(store: Store, steps: list[tuple[str, int]]) -> list[Routed]:
    routing = Routing(store, 3600)
    await routing.ensure_group()
    await catalogue(store, "r")
    events = [
        normalize(parse_body(orjson.dumps(state_notification(o, s))), utc_now_iso())
        for o, s in steps
    ]
    await store.append(events)
    entries = await routing.read_new("router-1", 10, 100)
    return [Routed(entry_id, orjson.loads(raw), raw, []) for entry_id, raw, _ in entries]


def planned(entries: list[Routed], sub: str, ordered: bool) -> list[Routed]:
    """Each entry with one delivery to `sub`, leased to this process (its worker has a slot)."""
    lease = int(time.time() * 1000) + 60_000
    with_plans = []
    for entry in entries:
        delivery_id = f"{entry.event['id']}.{sub}"
        place = OrderPlace(order_position(entry.event, delivery_id)) if ordered else None
        plan = Planned(delivery_id, sub, lease, max_per_second=RATE, ordered=place)
        with_plans.append(Routed(entry.entry_id, entry.event, entry.event_json, [plan]))
    return with_plans


def tokens(rdb: redis.Redis, keys: Keys, sub: str) -> float:
    return float(rdb.hget(keys.state(sub), State.TOKENS) or RATE)


async def test_a_rate_limited_delivery_routed_in_flight_pays_one_token(
    redis_url: str, keys: Keys, rdb: redis.Redis
) -> None:
    async with open_store(redis_url, keys, 2.0, 3600) as store:
        entries = planned(await routed(store, [("o-1", 0), ("o-2", 0)]), "r", ordered=False)
        claimed, _ = await Routing(store, 3600).route(entries)
    assert len(claimed) == 2 and rdb.zcard(keys.inflight("r")) == 2
    assert RATE - 2 <= tokens(rdb, keys, "r") < RATE - 1.9  # two paid (plus a trickle back)


async def test_an_ordered_delivery_held_behind_its_order_pays_nothing_until_it_goes(
    redis_url: str, keys: Keys, rdb: redis.Redis
) -> None:
    """Its order's first delivery is out: the second waits in the order's line, and the token
    bucket pays for it only when claim.lua puts it in flight."""
    async with open_store(redis_url, keys, 2.0, 3600) as store:
        entries = planned(await routed(store, [("o-1", 0), ("o-1", 1)]), "r", ordered=True)
        claimed, _ = await Routing(store, 3600).route(entries)
        assert len(claimed) == 1
        assert RATE - 1 <= tokens(rdb, keys, "r") < RATE - 0.9
        nothing, _ = await Deliveries(store, 3600).claim("r", 10, 30, RATE)
    assert nothing == []  # the order's first is in flight: its second is held
    assert rdb.zcard(keys.order_waiting("r", "mystore:o-1")) == 1


async def test_a_disabled_subscription_admits_no_delivery_at_routing(
    redis_url: str, keys: Keys, rdb: redis.Redis
) -> None:
    async with open_store(redis_url, keys, 2.0, 3600) as store:
        await Deliveries(store, 3600).set_state("r", Enablement.DISABLED, "by hand")
        entries = planned(await routed(store, [("o-1", 0)]), "r", ordered=False)
        claimed, _ = await Routing(store, 3600).route(entries)
    assert claimed == set() and rdb.zcard(keys.ready("r")) == 1

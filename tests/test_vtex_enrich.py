"""Enrichment (Get Order) and the Feed v3 backup, against the fake VTEX."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import notification
from tests.fake_vtex import APP_KEY, APP_TOKEN, FakeVtex
from tests.relaying import Gateway, body, subscription
from tests.subscribers import Sink

pytestmark = pytest.mark.anyio

ENRICH = {"X-Enrich": "enrich-token", "Content-Type": "application/json"}
CREDENTIALS = {"VTEX_APP_KEY": APP_KEY, "VTEX_APP_TOKEN": APP_TOKEN}


BIG = """{ type = "FromOrders", expression = 'value > 10000' }"""
ITEMS = """{ type = "FromOrders", expression = '$count(items[price >= 7000]) > 0' }"""


@pytest.fixture
def vtex() -> Iterator[FakeVtex]:
    with FakeVtex() as fake:
        yield fake


SOURCE = """
[[sources]]
account = "mystore"
auth_header = "X-Enrich"
auth_token = "enrich-token"
app_key_env = "VTEX_APP_KEY"
app_token_env = "VTEX_APP_TOKEN"
"""


def config(vtex: FakeVtex, sink: Sink, give_up_s: float = 60) -> str:
    settings = f"""enrich = true

[vtex]
base_url = "{vtex.base_url}"
enrich_give_up_s = {give_up_s}

[delivery]
router_claim_idle_s = 0.4
"""
    return (
        SOURCE
        + settings
        + subscription(sink, "big", filter=BIG)
        + subscription(sink, "items", filter=ITEMS)
    )


async def post(client: httpx.AsyncClient, **changes: Any) -> str:
    r = await client.post("/hooks/vtex", json=notification(**changes), headers=ENRICH)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


async def test_from_orders_sees_the_full_order(
    vtex: FakeVtex, sink: Sink, gateway: Gateway
) -> None:
    vtex.order_values["small-1"] = 500
    async with gateway(config(vtex, sink), **CREDENTIALS) as client:
        await post(client, OrderId="big-1")
        await post(client, OrderId="small-1")
        [got] = await sink.wait_for("/big", 1)
        await sink.wait_for("/items", 2)
        await asyncio.sleep(0.3)
    data = body(got)["data"]
    assert data["orderId"] == "big-1" and data["order"]["value"] == 25970
    assert data["order"]["items"][0]["name"] == "Camiseta Basica 1 Azul M"
    assert len(sink.at("/big")) == 1  # small-1's value is 500
    assert sorted(o for o, _ in vtex.order_requests) == ["big-1", "small-1"]  # once per event


async def test_429_retry_after_is_honoured_then_enriched(
    vtex: FakeVtex, sink: Sink, gateway: Gateway
) -> None:
    vtex.order_failures = [(429, {"Retry-After": "1"}), (503, {})]
    async with gateway(config(vtex, sink), **CREDENTIALS) as client:
        await post(client, OrderId="big-2")
        [got] = await sink.wait_for("/big", 1, timeout=15)
    (_, first), *_, (_, last) = vtex.order_requests
    assert last - first >= 1.0  # nothing asked during the Retry-After
    assert len(vtex.order_requests) == 3  # 429, 503, then the order
    assert body(got)["data"]["order"]["orderId"] == "big-2"


async def test_never_dropped_when_enrichment_fails(
    vtex: FakeVtex, sink: Sink, gateway: Gateway
) -> None:
    vtex.order_failures = [(500, {})] * 1000
    subs = config(vtex, sink, give_up_s=1) + subscription(sink, "all")
    async with gateway(subs, **CREDENTIALS) as client:
        await post(client, OrderId="big-3")
        await post(client, OrderId="gone-4")  # 404s mark at once, but the 500s come first
        got = await sink.wait_for("/all", 2, timeout=15)
    reasons = sorted(body(g)["data"]["orderUnavailable"] for g in got)
    assert reasons == ["HTTP 500 from VTEX Get Order"] * 2
    assert all("order" not in body(g)["data"] for g in got)


def feed_config(vtex: FakeVtex, sink: Sink) -> str:
    return (
        SOURCE
        + f"""feed_backup = true

[vtex]
base_url = "{vtex.base_url}"
feed_poll_s = 0.2
"""
        + subscription(sink, "all")
    )


def feed_item(order_id: str, state: str = "ready-for-handling") -> dict[str, Any]:
    spec = notification(OrderId=order_id, State=state)
    return {
        "eventId": f"E-{order_id}",
        "domain": spec["Domain"],
        "state": state,
        "lastState": spec["LastState"],
        "orderId": order_id,
        "lastChange": spec["LastChange"],
        "currentChange": spec["CurrentChange"],
    }


async def test_feed_backup_relays_what_the_hook_missed_once(
    vtex: FakeVtex, sink: Sink, gateway: Gateway
) -> None:
    vtex.add_feed_item(**feed_item("both-1"))  # came by hook and by feed
    vtex.add_feed_item(**feed_item("feed-only-2"))  # the hook missed it
    async with gateway(feed_config(vtex, sink), **CREDENTIALS) as client:
        hook_id = await post(client, OrderId="both-1")
        got = await sink.wait_for("/all", 2, timeout=10)
        for _ in range(100):  # committed once appended: wait for the poller's commit
            if not vtex.feed_items:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.6)  # more polls: nothing more arrives
        assert len(sink.at("/all")) == 2
    orders = sorted(body(g)["data"]["orderId"] for g in got)
    assert orders == ["both-1", "feed-only-2"]
    assert hook_id in {g.headers["webhook-id"] for g in got}  # the same event, relayed once
    assert vtex.feed_items == []  # both committed, after they were appended

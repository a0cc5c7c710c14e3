"""Single fire: a FromOrders filter with `disableSingleFire: false` (VTEX's default) notifies an
order once, at its first match, per subscription, whichever process routes it; with `true`,
every matching change. Push and pull subscriptions, enriched or not."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
import redis

from app.config import load_settings
from app.dev.fake_vtex import FakeVtex
from app.events import normalize, order_key, parse_body, utc_now_iso
from app.filters import SINGLE_FIRE_RETENTION_S, single_fire_s
from app.store.client import open_store
from app.store.queries import Queries
from app.store.routing import Planned, Routed, Routing
from app.store.schema import Keys
from tests.catalogued import catalogue
from tests.conftest import AUTH, CONFIG_TOML, notification
from tests.conftest import Gateway as Process
from tests.relaying import ADMIN, Gateway, body, hook, subscription, until
from tests.subscribers import Reply, Sink
from tests.test_vtex_enrich import CREDENTIALS, ENRICH, SOURCE

pytestmark = pytest.mark.anyio

INVOICED = 'status = "invoiced"'


def from_orders(expression: str, disable: bool | None = None, **extra: int) -> str:
    fields = [f"type = {orjson.dumps('FromOrders').decode()}"]
    fields.append(f"expression = {orjson.dumps(expression).decode()}")
    if disable is not None:
        fields.append(f"disableSingleFire = {str(disable).lower()}")
    fields += [f"{key} = {value}" for key, value in extra.items()]
    return "{ " + ", ".join(fields) + " }"


def once_and_every(sink: Sink, expression: str = INVOICED) -> str:
    """`once`: disableSingleFire left at its default (false); `every`: true."""
    return subscription(sink, "once", filter=from_orders(expression)) + subscription(
        sink, "every", filter=from_orders(expression, disable=True)
    )


def invoiced(order: str, second: int, **changes: Any) -> dict[str, Any]:
    """An `invoiced` notification of `order` (a split order is invoiced more than once)."""
    change = f"2026-11-27T10:00:{second:02d}.1234567Z"
    return {"OrderId": order, "State": "invoiced", "CurrentChange": change, **changes}


async def counters(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    stats = (await client.get("/ops/stats", headers=ADMIN)).json()
    return {s["id"]: s for s in stats["subscriptions"]}


async def settled(client: httpx.AsyncClient, every: int, suppressed: int) -> None:
    """Wait until `every` has `every` deliveries and `once` counted `suppressed`: all routed."""

    async def fetch() -> Any:
        return await client.get("/ops/stats", headers=ADMIN)

    def done(r: httpx.Response) -> bool:
        subs = {s["id"]: s for s in r.json()["subscriptions"]}
        return (subs["every"]["delivered"], subs["once"]["singleFireSuppressed"]) == (
            every,
            suppressed,
        )

    await until(fetch, done, timeout=10)


def orders_of(sink: Sink, path: str) -> Counter[str]:
    return Counter(body(r)["data"]["orderId"] for r in sink.at(path))


# ── push, without enrichment ───────────────────────────────────────────────────────────────────


async def test_an_order_matching_twice_is_sent_once_and_every_time_with_disable(
    gateway: Gateway, sink: Sink
) -> None:
    """The issue's `status = "invoiced"`: two orders, each invoiced twice (split orders), and
    a change that does not match in between."""
    async with gateway(once_and_every(sink)) as client:
        first_a = await hook(client, **invoiced("sf-a", 1))
        first_b = await hook(client, **invoiced("sf-b", 2))
        await hook(client, OrderId="sf-a", State="handling")  # no match: neither counts it
        await hook(client, **invoiced("sf-a", 3))
        await hook(client, **invoiced("sf-b", 4))
        await settled(client, every=4, suppressed=2)
        await asyncio.sleep(0.2)
        stats = await counters(client)
        metrics = (await client.get("/metrics", headers=ADMIN)).text
    assert orders_of(sink, "/once") == {"sf-a": 1, "sf-b": 1}
    assert orders_of(sink, "/every") == {"sf-a": 2, "sf-b": 2}
    assert {r.headers["webhook-id"] for r in sink.at("/once")} == {first_a, first_b}
    assert stats["once"]["singleFireSuppressed"] == 2
    assert stats["every"]["singleFireSuppressed"] == 0
    assert 'orderhook_single_fire_suppressed_total{subscription="once"} 2.0' in metrics


async def test_duplicates_and_late_earlier_changes_do_not_fire_twice(
    gateway: Gateway, sink: Sink
) -> None:
    """VTEX retries a notification (the same again: a duplicate at ingest), and changes arrive
    out of order: the later change first, then the earlier one. One delivery per order."""
    async with gateway(once_and_every(sink)) as client:
        for _ in range(3):  # VTEX retrying the same notification
            r = await client.post(
                "/hooks/vtex", json=notification(**invoiced("dup-1", 5)), headers=AUTH
            )
            assert r.status_code == 200
        later = await hook(client, **invoiced("late-2", 9))
        await hook(client, **invoiced("late-2", 1))  # the earlier change, arriving late
        await settled(client, every=3, suppressed=1)
        await asyncio.sleep(0.2)
    assert orders_of(sink, "/once") == {"dup-1": 1, "late-2": 1}
    assert [r.headers["webhook-id"] for r in sink.at("/once") if b"late-2" in r.body] == [later]


async def test_the_same_order_id_in_two_accounts_is_two_orders(
    gateway: Gateway, sink: Sink
) -> None:
    wildcard = {"X-Any-Account": "wildcard-token", "Content-Type": "application/json"}
    async with gateway(once_and_every(sink)) as client:
        for second, account in enumerate(("mystore", "otherstore", "otherstore")):
            origin = {"Account": account, "Key": "vtexappkey-appvtex"}
            doc = notification(**invoiced("same-1", second), Origin=origin)
            headers = AUTH if account == "mystore" else wildcard
            assert (await client.post("/hooks/vtex", json=doc, headers=headers)).status_code == 200
        await settled(client, every=3, suppressed=1)
    sources = Counter(body(r)["source"] for r in sink.at("/once"))
    assert sources == {
        "https://mystore.vtexcommercestable.com.br": 1,
        "https://otherstore.vtexcommercestable.com.br": 1,
    }


async def test_a_dead_lettered_first_fire_is_replayed_and_later_matches_stay_suppressed(
    gateway: Gateway, sink: Sink
) -> None:
    sink.script("/once", Reply(500), Reply(500))  # the first fire dies (one retry)
    subs = subscription(sink, "once", filter=from_orders(INVOICED), retry_schedule="[0.05]")
    async with gateway(subs) as client:
        first = await hook(client, **invoiced("dl-1", 1))
        await until(
            lambda: client.get("/admin/dlq?subscription=once", headers=ADMIN),
            lambda r: r.json()["total"] == 1,
        )
        r = await client.post("/admin/dlq/replay", json={"subscription": "once"}, headers=ADMIN)
        assert r.json() == {"replayed": 1}
        await hook(client, **invoiced("dl-1", 2))  # the order matches again
        await until(
            lambda: client.get("/ops/stats", headers=ADMIN),
            lambda r: (
                r.json()["subscriptions"][0]["delivered"] == 1
                and r.json()["subscriptions"][0]["singleFireSuppressed"] == 1
            ),
        )
        await asyncio.sleep(0.2)
    assert [(r.headers["webhook-id"], r.status) for r in sink.at("/once")] == [
        (first, 500),
        (first, 500),
        (first, 200),
    ]


async def test_the_order_is_remembered_for_the_retention_then_fires_again(
    gateway: Gateway, sink: Sink, rdb: redis.Redis, keys: Keys
) -> None:
    short = from_orders(INVOICED, single_fire_retention_s=1)
    subs = subscription(sink, "once", filter=short) + subscription(
        sink, "long", filter=from_orders(INVOICED)
    )
    async with gateway(subs) as client:
        await hook(client, **invoiced("ret-1", 1))
        await sink.wait_for("/long", 1)
        await sink.wait_for("/once", 1)
        ttl = rdb.ttl(keys.fired("long", order_key({"account": "mystore", "orderId": "ret-1"})))
        assert SINGLE_FIRE_RETENTION_S - 60 < ttl <= SINGLE_FIRE_RETENTION_S  # two years
        await asyncio.sleep(1.2)  # `once` forgets the order
        await hook(client, **invoiced("ret-1", 2))
        await sink.wait_for("/once", 2)
        await asyncio.sleep(0.2)
    assert len(sink.at("/long")) == 1


# ── push, enriched: the expression reads the whole order ───────────────────────────────────────


@pytest.fixture
def vtex() -> Iterator[FakeVtex]:
    with FakeVtex() as fake:
        yield fake


async def test_enriched_orders_fire_once_and_every_time_with_disable(
    gateway: Gateway, sink: Sink, vtex: FakeVtex
) -> None:
    """`value > 10000` reads the order from Get Order: every change of a big order matches."""
    source = SOURCE + f'enrich = true\n\n[vtex]\nbase_url = "{vtex.base_url}"\n'
    vtex.order_values["small-2"] = 500
    subs = source + once_and_every(sink, "value > 10000")
    async with gateway(subs, **CREDENTIALS) as client:
        for order, state in [("big-1", "handling"), ("small-2", "handling"), ("big-1", "invoiced")]:
            doc = notification(OrderId=order, State=state)
            assert (await client.post("/hooks/vtex", json=doc, headers=ENRICH)).status_code == 200
            await asyncio.sleep(0.05)
        await settled(client, every=2, suppressed=1)
        await asyncio.sleep(0.2)
    assert orders_of(sink, "/once") == {"big-1": 1}
    assert orders_of(sink, "/every") == {"big-1": 2}
    [got] = sink.at("/once")
    assert body(got)["data"]["state"] == "handling" and body(got)["data"]["order"]["value"] > 10000


# ── pull (Feed v3 style) ───────────────────────────────────────────────────────────────────────


async def test_a_pull_subscription_gets_an_order_once(gateway: Gateway) -> None:
    feed = {"Authorization": "Bearer feed-token"}
    subs = "".join(
        f"""
[[subscriptions]]
id = "{sub}"
mode = "pull"
token = "feed-token"
filter = {flt}
"""
        for sub, flt in [("once", from_orders(INVOICED)), ("every", from_orders(INVOICED, True))]
    )
    async with gateway(subs) as client:
        for second in (1, 2, 3):
            await hook(client, **invoiced("pull-1", second))
        await hook(client, **invoiced("pull-2", 4))

        async def take(sub: str) -> list[Any]:
            r = await client.get(f"/feed/{sub}?maxlot=10", headers=feed)
            return list(r.json())

        every: list[Any] = []
        for _ in range(100):
            every += await take("every")
            if len(every) == 4:
                break
            await asyncio.sleep(0.05)
        once = await take("once")
    assert sorted(i["orderId"] for i in every) == ["pull-1"] * 3 + ["pull-2"]
    assert sorted(i["orderId"] for i in once) == ["pull-1", "pull-2"]


# ── many routers on one Redis ──────────────────────────────────────────────────────────────────


async def test_two_gateway_processes_send_each_order_once(
    redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """Each order's matching changes are posted at once to two gateway processes (each routes
    what it reads): `once` gets one delivery per order, `every` all of them."""
    orders, changes = 40, 4
    with Sink() as sink:
        config = tmp_path / "orderhook.toml"
        config.write_text(CONFIG_TOML.replace("{prefix}", keys.prefix) + once_and_every(sink))
        env = {**os.environ, "REDIS_URL": redis_url, "ORDERHOOK_ADMIN_TOKEN": "admin-token"}
        logs = [tmp_path / f"gateway-{n}.log" for n in range(2)]
        gateways = [Process(config, env, log).start() for log in logs]
        try:
            sends = [(o, c) for o in range(orders) for c in range(changes)]
            random.Random(7).shuffle(sends)
            async with aiohttp.ClientSession() as session:

                async def post(n: int, order: int, change: int) -> int:
                    doc = notification(**invoiced(f"two-{order}", change))
                    url = gateways[n % 2].url + "/hooks/vtex"
                    async with session.post(url, data=orjson.dumps(doc), headers=AUTH) as r:
                        return r.status

                statuses = await asyncio.gather(*(post(n, o, c) for n, (o, c) in enumerate(sends)))
            assert set(statuses) == {200}
            await sink.wait_for("/every", orders * changes, timeout=60)
            stats_url = gateways[0].url + "/ops/stats"
            async with httpx.AsyncClient() as client:
                await until(
                    lambda: client.get(stats_url, headers=ADMIN),
                    lambda r: (
                        {s["id"]: s for s in r.json()["subscriptions"]}["once"][
                            "singleFireSuppressed"
                        ]
                        == orders * (changes - 1)
                    ),
                    timeout=30,
                )
            await asyncio.sleep(0.3)
        finally:
            for g in gateways:
                g.stop()
    assert orders_of(sink, "/once") == {f"two-{o}": 1 for o in range(orders)}
    assert len(sink.at("/every")) == orders * changes


async def test_concurrent_routers_decide_each_order_once(redis_url: str, keys: Keys) -> None:
    """Eight routers (each its own connection) route the same orders' entries at once."""
    events = [
        normalize(parse_body(orjson.dumps(notification(**invoiced(f"cr-{o}", s)))), utc_now_iso())
        for o in range(5)
        for s in range(8)
    ]
    async with contextlib.AsyncExitStack() as stack:
        stores = [
            await stack.enter_async_context(open_store(redis_url, keys, 2.0, 3600))
            for _ in range(8)
        ]
        routers = [Routing(store, 3600) for store in stores]
        await routers[0].ensure_group()
        await catalogue(stores[0], "once")
        await stores[0].append(events)
        entries = await routers[0].read_new("reader", len(events), 100)

        async def route(n: int, entry_id: str, raw: bytes) -> None:
            event = orjson.loads(raw)
            planned = Planned(f"{event['id']}.once", "once", single_fire_s=60)
            routed = [Routed(entry_id, event, raw, [planned])]
            while (await routers[n % 8].route(routed))[1]:  # deferred: its order's earlier
                await asyncio.sleep(0.001)  # entry is not routed yet (as the router retries)

        await asyncio.gather(*(route(n, e.entry_id, e.raw) for n, e in enumerate(entries)))
    client = redis.Redis.from_url(redis_url)
    try:
        ready = {m.decode() for m in client.zrange(keys.ready("once"), 0, -1)}
        fired = [client.get(keys.fired("once", f"mystore:cr-{o}")) for o in range(5)]
        suppressed = int(client.hget(keys.stats, "once:single_fire_suppressed") or 0)
    finally:
        client.close()
    assert len(ready) == 5 and suppressed == 35
    assert {f"{event_id.decode()}.once" for event_id in fired if event_id} == ready


async def test_a_single_fire_value_route_lua_cannot_use_is_dead_lettered_and_the_rest_go_on(
    redis_url: str, keys: Keys
) -> None:
    """route.lua stays total: a retention Redis refuses (here -1 s) dead-letters that delivery
    with the reason; the entry's other delivery is created."""
    doc = orjson.dumps(notification(**invoiced("bad-1", 1)))
    async with open_store(redis_url, keys, 2.0, 3600) as store:
        deliveries = Routing(store, 3600)
        await deliveries.ensure_group()
        await catalogue(store, "bad", "good")
        await store.append([normalize(parse_body(doc), utc_now_iso())])
        [(entry_id, raw, _)] = await deliveries.read_new("reader", 10, 100)
        event = orjson.loads(raw)
        bad = Planned(f"{event['id']}.bad", "bad", single_fire_s=-1)
        good = Planned(f"{event['id']}.good", "good", single_fire_s=60)
        await deliveries.route([Routed(entry_id, event, raw, [bad, good])])
        dead, total = await Queries(store).dead_letters(["bad"], 0, 10)
    assert total == 1 and "not routed" in dead[0]["lastError"]
    assert "expire" in dead[0]["lastError"].lower()
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.zcard(keys.ready("good")) == 1
        assert client.xlen(keys.ingest_stream) == 0
    finally:
        client.close()


# ── configuration ─────────────────────────────────────────────────────────────────────────────


def test_single_fire_is_the_default_and_disable_turns_it_off(tmp_path: Path) -> None:
    sink = Sink()  # only its URL: not started
    path = tmp_path / "orderhook.toml"
    path.write_text(
        CONFIG_TOML.replace("{prefix}", "single")
        + once_and_every(sink)
        + subscription(sink, "short", filter=from_orders(INVOICED, single_fire_retention_s=60))
        + subscription(sink, "flow", filter='{ type = "FromWorkflow", status = ["invoiced"] }')
    )
    subs = load_settings(path, {}).subscriptions
    assert [single_fire_s(s.filter) for s in subs] == [SINGLE_FIRE_RETENTION_S, 0, 60, 0]

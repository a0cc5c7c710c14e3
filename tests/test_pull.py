"""Pull subscriptions in VTEX Feed v3 style: maxlot, handles, visibility, retention."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis

from app.api_types import MAX_HANDLES
from app.store.schema import Keys
from tests.relaying import Gateway, hook

pytestmark = pytest.mark.anyio

FEED = {"Authorization": "Bearer feed-token"}
PULL = """
[[subscriptions]]
id = "pull"
mode = "pull"
token = "feed-token"
visibility_timeout = 0.5
retention = {retention}
filter = {{ type = "FromWorkflow", status = ["invoiced", "handling", "canceled"] }}
"""


async def take(client: httpx.AsyncClient, maxlot: int = 10) -> list[dict]:  # type: ignore[type-arg]
    r = await client.get(f"/feed/pull?maxlot={maxlot}", headers=FEED)
    assert r.status_code == 200, r.text
    return list(r.json())


async def commit(client: httpx.AsyncClient, items: list[dict]) -> int:  # type: ignore[type-arg]
    handles = [item["handle"] for item in items]
    r = await client.post("/feed/pull/commit", json={"handles": handles}, headers=FEED)
    return int(r.json()["committed"])


async def test_items_hide_come_back_unless_committed(gateway: Gateway) -> None:
    async with gateway(PULL.format(retention=60)) as client:
        ids = [await hook(client, State=s) for s in ("invoiced", "handling", "canceled")]
        await hook(client, State="ready-for-handling")  # filtered out
        await asyncio.sleep(0.2)  # routed
        first = await take(client, maxlot=2)
        rest = await take(client)
        assert await take(client) == []  # all hidden now
        assert len(first) == 2 and len(rest) == 1
        item = first[0]
        assert set(item) == {
            "eventId",
            "handle",
            "domain",
            "state",
            "lastState",
            "orderId",
            "lastChange",
            "currentChange",
            "event",
        }
        assert item["event"]["specversion"] == "1.0" and item["event"]["id"] == item["eventId"]
        assert {i["eventId"] for i in first + rest} == set(ids)
        assert await commit(client, first) == 2
        await asyncio.sleep(0.6)  # the uncommitted one's visibility timeout passes
        back = await take(client)
        assert [i["eventId"] for i in back] == [rest[0]["eventId"]]
        assert back[0]["handle"] != rest[0]["handle"]
        assert await commit(client, rest) == 0  # taken again: the old handle is stale
        assert await commit(client, back) == 1
        await asyncio.sleep(0.6)
        assert await take(client) == []


async def test_items_older_than_the_retention_are_dropped_and_counted(
    gateway: Gateway, rdb: redis.Redis, keys: Keys
) -> None:
    async with gateway(PULL.format(retention=1)) as client:
        await hook(client, State="invoiced")
        await asyncio.sleep(1.3)
        assert await take(client) == []
    assert int(rdb.hget(keys.stats, "pull:expired") or 0) == 1


async def test_feed_errors(gateway: Gateway) -> None:
    async with gateway(PULL.format(retention=60)) as client:
        for maxlot in ("0", "11", "x"):
            r = await client.get(f"/feed/pull?maxlot={maxlot}", headers=FEED)
            assert r.status_code == 400 and "maxlot" in r.json()["error"]
        wrong = {"Authorization": "Bearer admin-token"}
        assert (await client.get("/feed/pull", headers=wrong)).status_code == 401
        assert (await client.get("/feed/nope", headers=FEED)).status_code == 404
        r = await client.post("/feed/pull/commit", json={"handles": "x"}, headers=FEED)
        assert r.status_code == 400
        r = await client.post("/feed/pull/commit", json={"handles": ["junk!"]}, headers=FEED)
        assert r.json() == {"committed": 0}
        too_many = {"handles": ["h"] * (MAX_HANDLES + 1)}  # the most the type takes, and one
        r = await client.post("/feed/pull/commit", json=too_many, headers=FEED)
        assert r.status_code == 400 and f"length <= {MAX_HANDLES}" in r.json()["error"]
        assert "$.handles" in r.json()["error"]
        r = await client.post("/feed/pull/commit", json={"handle": []}, headers=FEED)
        assert r.status_code == 400 and "handles" in r.json()["error"]


async def test_pull_transforms_run_in_the_transform_pool_and_a_memory_bomb_stays_there(
    gateway: Gateway,
) -> None:
    """12.12: a pull subscription's transform ran in the gateway, bounded in time only; now it
    runs in the transforms' worker pool: one that allocates without bound reaches the memory
    limit there, and the consumer still gets its event untransformed, with the reason."""
    subs = PULL.format(retention=60).replace("filter = ", "transform = '{\"order\": orderId}'\n#")
    bomb = subs.replace('id = "pull"', 'id = "bomb"').replace("feed-token", "bomb-token")
    bomb = bomb.replace("'{\"order\": orderId}'", "'$pad(orderId, 100000000)'")
    async with gateway(subs + bomb) as client:
        await hook(client, OrderId="v5227774100atmc-01")
        await asyncio.sleep(0.3)  # routed
        light = await take(client)
        r = await client.get("/feed/bomb?maxlot=10", headers={"Authorization": "Bearer bomb-token"})
    assert light[0]["event"]["data"] == {"order": "v5227774100atmc-01"}
    assert r.status_code == 200, r.text
    [item] = r.json()
    assert "memory limit" in item["event"]["transformerror"]
    assert item["event"]["data"]["orderId"] == "v5227774100atmc-01"  # untransformed

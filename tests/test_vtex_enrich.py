"""Enrichment (Get Order) and the Feed v3 backup, against the fake VTEX."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import psutil
import pytest
from starlette.datastructures import Secret

from app.config import Settings, Source, load_settings
from app.dev.fake_vtex import APP_KEY, APP_TOKEN, FakeVtex
from app.errors import ConfigError
from app.events import utc_now_iso
from app.store.client import open_store
from app.store.routing import StreamEntry
from app.store.schema import Keys
from app.vtex.api import MAX_ORDER_BYTES
from app.vtex.enrich import Enricher
from tests.conftest import WILDCARD_HEADER, WILDCARD_TOKEN, notification
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


@pytest.fixture
def elsewhere() -> Iterator[FakeVtex]:
    """Another host, on another port: no VTEX credential may ever reach it."""
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


# Issue 12, items 7 to 9: the app key and token go to the account's own VTEX host, for the
# path asked, and nowhere else; no VTEX answer can take the gateway's memory.


def test_enrich_with_any_account_is_refused(tmp_path: Path) -> None:
    """With account "*" the hook sender would choose the account whose API gets the app key
    and token: enrich, like feed_backup, needs a named account."""
    path = tmp_path / "orderhook.toml"
    path.write_text(
        'account = "*"\n'.join(SOURCE.split('account = "mystore"\n')) + "enrich = true\n"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, CREDENTIALS)
    assert str(info.value) == f"config {path}: `sources[0].enrich` needs a named account, not *"


async def test_hook_account_that_is_a_url_reaches_no_host(
    vtex: FakeVtex, elsewhere: FakeVtex, sink: Sink, gateway: Gateway
) -> None:
    """The issue's `"evil.example/x#"`, aimed at a host of the test's: refused at ingest, for
    the wildcard source too; nothing reaches that host."""
    evil = f"127.0.0.1:{elsewhere.port}/x#"
    wildcard = {WILDCARD_HEADER: WILDCARD_TOKEN, "Content-Type": "application/json"}
    async with gateway(config(vtex, sink) + subscription(sink, "all"), **CREDENTIALS) as client:
        for account in (evil, "evil.example/x#"):
            doc = notification(Origin={"Account": account, "Key": None})
            r = await client.post("/hooks/vtex", json=doc, headers=wildcard)
            assert r.status_code == 400, r.text
            assert "`Origin.Account` must be a VTEX account name" in r.json()["error"]
        await post(client, OrderId="big-7")  # the named source is still enriched
        [got] = await sink.wait_for("/all", 1)
    assert body(got)["data"]["order"]["orderId"] == "big-7"
    assert elsewhere.requests == []


async def test_order_id_path_traversal_is_refused_at_ingest(
    vtex: FakeVtex, sink: Sink, gateway: Gateway
) -> None:
    traversal = "../../../../api/dataentities/CL/search?_where=email=x"
    async with gateway(config(vtex, sink), **CREDENTIALS) as client:
        r = await client.post("/hooks/vtex", json=notification(OrderId=traversal), headers=ENRICH)
        assert r.status_code == 400, r.text
        assert "`OrderId` must not contain the character '/'" in r.json()["error"]
        await asyncio.sleep(0.5)  # the router's turn: nothing to enrich
    assert vtex.requests == []


async def enrich_one(
    vtex: FakeVtex, redis_url: str, keys: Keys, order_id: str, **event: Any
) -> dict[str, Any]:
    """An event the router holds (appended before ingest checked order ids, say) through the
    Enricher, in-process: the event as it would be routed, {} if it stays pending."""
    source = Source("mystore", "x-enrich", Secret("t"), Secret(APP_KEY), Secret(APP_TOKEN), True)
    settings = Settings(sources=(source,), vtex_base_url=vtex.base_url, enrich_give_up_s=60)
    raw = {"id": "e-1", "account": "mystore", "orderId": order_id, "receivedAt": utc_now_iso()}
    async with open_store(redis_url, keys, 2.0, 60) as store, aiohttp.ClientSession() as http:
        ready = await Enricher(settings, store, http).ready(
            [StreamEntry("1-0", orjson.dumps(raw | event))]
        )
    return dict(orjson.loads(ready[0][1])) if ready else {}


@pytest.mark.parametrize("order_id", ["../../../../api/dataentities/CL/search?_where=x", ".."])
async def test_order_id_is_one_path_segment_of_get_order(
    vtex: FakeVtex, redis_url: str, keys: Keys, order_id: str
) -> None:
    """Past ingest's check, the Get Order URL still holds the order id as one segment."""
    routed = await enrich_one(vtex, redis_url, keys, order_id)
    assert "order" not in routed
    if order_id == "..":  # no URL is built: routed without its order at once
        assert vtex.requests == []
        assert routed["orderUnavailable"] == "refused to call VTEX with the path segment '..'"
        return
    [seen] = vtex.requests
    assert seen.raw_path == (
        "/mystore/api/oms/pvt/orders/..%2F..%2F..%2F..%2Fapi%2Fdataentities%2FCL%2Fsearch%3F_where%3Dx"
    )
    assert seen.query == ""
    assert routed["orderUnavailable"] == "HTTP 404 from VTEX Get Order"


async def test_get_order_redirect_is_not_followed(
    vtex: FakeVtex, elsewhere: FakeVtex, sink: Sink, gateway: Gateway
) -> None:
    """A 302 to another origin: the app key and token stay home; the redirect counts as a 5xx
    (asked again until enrich_give_up_s), then the event goes on without its order."""
    vtex.order_failures = [(302, {"Location": f"{elsewhere.url}/steal?token=x"})] * 1000
    async with gateway(
        config(vtex, sink, give_up_s=1) + subscription(sink, "all"), **CREDENTIALS
    ) as client:
        await post(client, OrderId="big-9")
        [got] = await sink.wait_for("/all", 1, timeout=15)
    assert body(got)["data"]["orderUnavailable"] == (
        f"HTTP 302 from VTEX Get Order: a redirect to {elsewhere.url}, not followed"
    )
    assert len(vtex.order_requests) >= 2  # asked again, as after a 5xx
    assert elsewhere.requests == []


class PeakRss:
    """This process's resident memory, sampled every 10 ms in a thread: the peak over start."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    @property
    def grown_mb(self) -> float:
        return (self.peak - self.start) / 2**20


@pytest.mark.parametrize("declared", [False, True], ids=["streamed", "content-length"])
async def test_huge_order_answer_is_cut_at_the_size_limit(
    vtex: FakeVtex, sink: Sink, gateway: Gateway, declared: bool
) -> None:
    """A 300 MB "order" (valid JSON): read no further than MAX_ORDER_BYTES, memory bounded,
    the event routed at once without it."""
    vtex.order_bytes["huge-9"] = (300 * 2**20, declared)
    async with gateway(config(vtex, sink) + subscription(sink, "all"), **CREDENTIALS) as client:
        with PeakRss() as rss:
            await post(client, OrderId="huge-9")
            [got] = await sink.wait_for("/all", 1, timeout=30)
    assert body(got)["data"]["orderUnavailable"] == (
        f"VTEX Get Order answer over {MAX_ORDER_BYTES} bytes (the size limit)"
    )
    assert rss.grown_mb < 50, f"RSS grew by {rss.grown_mb:.0f} MB"
    assert len(vtex.order_requests) == 1  # not asked again: the same answer would come


async def test_feed_backup_never_follows_a_redirect(
    vtex: FakeVtex, elsewhere: FakeVtex, sink: Sink, gateway: Gateway
) -> None:
    vtex.add_feed_item(**feed_item("feed-9"))
    vtex.redirect_to = elsewhere.url
    async with gateway(feed_config(vtex, sink), **CREDENTIALS):
        for _ in range(100):
            if vtex.requests:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    assert [(s.method, s.raw_path) for s in vtex.requests] == [("GET", "/mystore/api/orders/feed")]
    assert elsewhere.requests == []
    assert sink.at("/all") == []


async def test_feed_items_are_checked_as_hook_bodies(
    vtex: FakeVtex, sink: Sink, gateway: Gateway
) -> None:
    """VTEX's feed is an input like the hook: an item the hook would refuse is not appended,
    and is committed, so it is not handed out again for ever."""
    vtex.add_feed_item(**feed_item("../../api/dataentities/CL/search"))
    vtex.add_feed_item(**{**feed_item("bad-time-8"), "currentChange": "yesterday"})
    vtex.add_feed_item(**{**feed_item("inexact-8"), "value": 2**60})  # beyond I-JSON
    vtex.add_feed_item(**feed_item("good-8"))
    async with gateway(feed_config(vtex, sink), **CREDENTIALS):
        [got] = await sink.wait_for("/all", 1, timeout=10)
        for _ in range(100):
            if not vtex.feed_items:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    assert body(got)["data"]["orderId"] == "good-8"
    assert len(sink.at("/all")) == 1
    assert vtex.feed_items == []  # all four committed

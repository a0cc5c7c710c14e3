"""Operator actions in an outage: the circuit breaker shown and "retry now" (API, dashboard,
CLI), and every dead letter reachable, a page at a time, each replayed or deleted on its own."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from app.store.client import open_store
from app.store.deliveries import Deliveries
from app.store.schema import Keys
from tests.conftest import AUTH, CONFIG_TOML, notification
from tests.conftest import Gateway as LiveGateway
from tests.relaying import ADMIN, Gateway, hook, subscription, until
from tests.subscribers import Sink
from tests.test_cli import orderhook
from tests.test_ops import SAME_ORIGIN
from tests.test_ordering import STATES, ordered, received_per_order, state_notification

pytestmark = pytest.mark.anyio

OPS = {"Authorization": "Bearer ops-token"}
OUTAGE = {"breaker_threshold": 2, "breaker_cooldown": 600, "retry_schedule": "[600, 600]"}
DEAD_AT_ONCE = {"retry_schedule": "[]", "breaker_threshold": 100_000}
FORM_ROWS = re.compile(r'action="/ops/dlq/replay"><input type="hidden" name="id" value="([^"]+)"')


def failing(sink: Sink, path: str) -> None:
    sink.rule(path, fail=lambda body: True)


def recovered(sink: Sink, path: str) -> None:
    sink.rule(path)


async def stats_of(client: httpx.AsyncClient, sub: str) -> dict[str, object]:
    subs = (await client.get("/ops/stats", headers=OPS)).json()["subscriptions"]
    found: dict[str, object] = next(s for s in subs if s["id"] == sub)
    return found


async def breaker_open(client: httpx.AsyncClient, sub: str) -> None:
    await until(
        lambda: client.get("/ops/stats", headers=OPS),
        lambda r: any(s["breaker"] == "open" for s in r.json()["subscriptions"] if s["id"] == sub),
    )


# ── the breaker, shown, and retry now ──────────────────────────────────────────────────────────


async def test_open_breaker_is_shown_and_retry_now_closes_it_and_sends_now(
    gateway: Gateway, sink: Sink
) -> None:
    """In an outage /ops showed "queued 3, in flight 0" and nothing of a breaker open for 10
    minutes; the only way out was to wait. Now the breaker, its failures and its next probe
    show, and retry-now closes it: the queue goes at once."""
    failing(sink, "/wms")
    async with gateway(subscription(sink, "wms", **OUTAGE)) as client:
        for n in range(3):
            await hook(client, OrderId=f"v{n}-01")
        await breaker_open(client, "wms")
        await sink.wait_for("/wms", 3)
        wms = await stats_of(client, "wms")
        page = (await client.get("/ops", headers=ADMIN)).text
        ops_page = (await client.get("/ops", headers=OPS)).text
        recovered(sink, "/wms")
        r = await client.post("/admin/subscriptions/wms/retry-now", headers=ADMIN)
        await sink.wait_for("/wms", 6, timeout=5)  # not 10 minutes from now
        after = await stats_of(client, "wms")
    assert (wms["breaker"], wms["consecutiveFailures"], wms["queued"]) == ("open", 3, 3)
    assert isinstance(wms["nextProbeAt"], float)
    assert 590 < wms["nextProbeAt"] - time.time() <= 600
    assert re.search(r"next probe 20[-\d]{8} [:\d]{8} UTC \(in (9\.\d|9|10) min\)", page)
    assert "3 failures in a row" in page
    assert 'id="retry-now-wms"' in page
    assert "next probe" in ops_page and "retry-now" not in ops_page  # read-only: no button
    assert r.status_code == 200
    assert r.json() == {
        "subscription": "wms",
        "breaker": "closed",
        "breakerWas": "open",
        "madeDue": 3,
        "state": "enabled",
    }
    assert (after["breaker"], after["consecutiveFailures"], after["nextProbeAt"]) == (
        "closed",
        0,
        None,
    )
    assert [r.status for r in sink.at("/wms")] == [500, 500, 500, 200, 200, 200]


async def test_retry_now_is_for_admins_and_known_subscriptions(
    gateway: Gateway, sink: Sink
) -> None:
    async with gateway(subscription(sink, "wms")) as client:
        ops = await client.post("/admin/subscriptions/wms/retry-now", headers=OPS)
        nobody = await client.post("/admin/subscriptions/wms/retry-now")
        unknown = await client.post("/admin/subscriptions/nope/retry-now", headers=ADMIN)
        weird = await client.post("/admin/subscriptions/%2F..%2Fx/retry-now", headers=ADMIN)
        form_ops = await client.post(
            "/ops/retry-now", data={"subscription": "wms"}, headers={**OPS, **SAME_ORIGIN}
        )
        form_unknown = await client.post(
            "/ops/retry-now", data={"subscription": "nope"}, headers={**ADMIN, **SAME_ORIGIN}
        )
        form_empty = await client.post("/ops/retry-now", headers={**ADMIN, **SAME_ORIGIN})
        closed = await client.post("/admin/subscriptions/wms/retry-now", headers=ADMIN)
    assert ops.status_code == 403 and "read-only" in ops.json()["error"]
    assert nobody.status_code == 401
    assert unknown.status_code == 404 and unknown.json() == {"error": "no subscription 'nope'"}
    assert weird.status_code == 404 and "error" in weird.json()
    assert form_ops.status_code == 403
    assert form_unknown.status_code == 404 and "nope" in form_unknown.json()["error"]
    assert form_empty.status_code == 400 and "subscription" in form_empty.json()["error"]
    assert closed.json()["breakerWas"] == "closed" and closed.json()["madeDue"] == 0


async def test_retry_now_keeps_each_orders_later_events_behind_its_first(
    gateway: Gateway, sink: Sink
) -> None:
    """Only each order's released delivery is made due: while the subscriber still fails, a
    retry-now sends the two heads again and nothing after them; once it is back, each order's
    events arrive in their order."""
    failing(sink, "/po")
    options = {**OUTAGE, "breaker_threshold": 1}
    async with gateway(ordered(sink, "po", **options)) as client:
        for order, steps in (("v1-01", 3), ("v2-01", 2)):
            for step in range(steps):
                r = await client.post(
                    "/hooks/vtex", json=state_notification(order, step), headers=AUTH
                )
                assert r.status_code == 200
        await sink.wait_for("/po", 2)
        await breaker_open(client, "po")
        held = await stats_of(client, "po")
        first = await client.post("/admin/subscriptions/po/retry-now", headers=ADMIN)
        await sink.wait_for("/po", 4)
        await breaker_open(client, "po")  # the heads failed again
        failed_states = {orderhook_state(r.body) for r in sink.at("/po")}
        recovered(sink, "/po")
        second = await client.post("/admin/subscriptions/po/retry-now", headers=ADMIN)
        await sink.wait_for("/po", 9)
    assert (held["queued"], held["held"]) == (2, 3)
    assert first.json()["madeDue"] == 2 and second.json()["madeDue"] == 2
    assert failed_states == {STATES[0]}  # the later events stayed held
    assert received_per_order(sink, "/po") == {"v1-01": STATES[:3], "v2-01": STATES[:2]}


async def test_retry_now_makes_a_queue_larger_than_one_run_due_and_no_more(
    redis_url: str, keys: Keys, rdb: redis.Redis
) -> None:
    """2,500 retries waiting behind an open breaker (three runs of the script), 10 already due
    and 3 in flight: all 2,500 made due now, nothing else moved."""
    later = time.time() * 1000 + 600_000
    rdb.zadd(keys.ready("s"), {f"d{n}": later + n for n in range(2500)})
    rdb.zadd(keys.ready("s"), {f"due{n}": 1000 + n for n in range(10)})
    rdb.zadd(keys.inflight("s"), {f"f{n}": later for n in range(3)})
    state = {"state": "enabled", "breaker": "open", "failures": 40, "opens": 3}
    rdb.hset(keys.state("s"), mapping={**state, "openUntil": int(later), "failingSinceMs": 1})
    async with open_store(redis_url, keys, 2.0, 3600) as store:
        before = int(time.time() * 1000)  # as now_ms: whole milliseconds
        done = await Deliveries(store, 3600).retry_now("s")
    ready = dict(rdb.zrange(keys.ready("s"), 0, -1, withscores=True))
    assert (done.breaker_was, done.made_due, done.state) == ("open", 2500, "enabled")
    assert all(before <= ready[f"d{n}".encode()] <= time.time() * 1000 for n in range(2500))
    assert [ready[f"due{n}".encode()] for n in range(10)] == [1000 + n for n in range(10)]
    assert rdb.zcard(keys.inflight("s")) == 3
    after = {k.decode(): v.decode() for k, v in rdb.hgetall(keys.state("s")).items()}
    assert after == {"state": "enabled", "breaker": "closed", "failures": "0", "opens": "0"}


def orderhook_state(body: bytes) -> str:
    return str(orjson.loads(body)["data"]["state"])


# ── dead letters, a page at a time ─────────────────────────────────────────────────────────────


async def dead_letters(client: httpx.AsyncClient, sink: Sink, orders: int) -> list[str]:
    """`orders` events dead-lettered at once at both `a` and `b`; their ids, newest first."""
    failing(sink, "/a")
    failing(sink, "/b")
    for n in range(orders):
        await hook(client, OrderId=f"v{n}-01")
    listing = await until(
        lambda: client.get("/admin/dlq?limit=500", headers=ADMIN),
        lambda r: r.json()["total"] == 2 * orders,
    )
    return [item["id"] for item in listing.json()["items"]]


async def test_dashboard_pages_through_every_dead_letter_with_when_it_died(
    gateway: Gateway, sink: Sink
) -> None:
    """The table showed the newest 50 of 60 and said nothing of the rest."""
    subs = subscription(sink, "a", **DEAD_AT_ONCE) + subscription(sink, "b", **DEAD_AT_ONCE)
    async with gateway(subs) as client:
        every = await dead_letters(client, sink, 30)
        pages = [(await client.get(path, headers=ADMIN)).text for path in ("/ops", "/ops?page=2")]
        past = (await client.get("/ops?page=3", headers=ADMIN)).text
        ops_page = (await client.get("/ops", headers=OPS)).text
        bad = [
            await client.get(f"/ops?page={raw}", headers=ADMIN)
            for raw in ("0", "-1", "abc", "²", "1e3", "100001", "9" * 5000, "")
        ]
    first, second = (FORM_ROWS.findall(page) for page in pages)
    assert first + second == every  # all 60, newest first, none twice
    assert "<b>60</b> dead letters — 1 to 50, page 1 of 2" in pages[0]
    assert 'id="dlq-older" href="/ops?page=2"' in pages[0] and "dlq-newer" not in pages[0]
    assert "<b>60</b> dead letters — 51 to 60, page 2 of 2" in pages[1]
    assert 'id="dlq-newer" href="/ops"' in pages[1] and "dlq-older" not in pages[1]
    died = re.compile(
        r"<td>(now|[\d.]+ (s|min) ago)<br><small>20\d\d-\d\d-\d\d [\d:]{8} UTC</small></td>"
    )
    assert len(died.findall(pages[0])) == 50  # each row: how long ago and when (UTC)
    assert "page 3 of 2 is past the end" in past and 'href="/ops?page=2"' in past
    assert "<b>60</b> dead letters" in ops_page and "/ops/dlq/" not in ops_page  # read-only
    assert [r.status_code for r in bad] == [400] * 8
    assert all(r.json()["error"] == "`page` must be an integer from 1 to 100000" for r in bad)


async def test_admin_api_pages_merge_every_queue_newest_first(gateway: Gateway, sink: Sink) -> None:
    subs = subscription(sink, "a", **DEAD_AT_ONCE) + subscription(sink, "b", **DEAD_AT_ONCE)
    async with gateway(subs) as client:
        every = await dead_letters(client, sink, 12)
        paged: list[str] = []
        offset: int | None = 0
        while offset is not None:
            page = (await client.get(f"/admin/dlq?limit=5&offset={offset}", headers=ADMIN)).json()
            assert page["total"] == 24
            paged += [item["id"] for item in page["items"]]
            offset = page["next"]
        one = (
            await client.get("/admin/dlq?subscription=b&offset=10&limit=5", headers=ADMIN)
        ).json()
        full = (await client.get("/admin/dlq?limit=500", headers=ADMIN)).json()["items"]
    assert paged == every
    died = [item["deadAt"] for item in full]
    assert died == sorted(died, reverse=True)
    assert [item["id"] for item in one["items"]] == [i for i in every if i.endswith(".b")][10:]
    assert (one["total"], one["next"]) == (12, None)


async def test_one_dead_letter_replayed_or_deleted_from_its_row(
    gateway: Gateway, sink: Sink
) -> None:
    subs = subscription(sink, "a", **DEAD_AT_ONCE) + subscription(sink, "b", **DEAD_AT_ONCE)
    admin_form = {**ADMIN, **SAME_ORIGIN}
    async with gateway(subs) as client:
        every = await dead_letters(client, sink, 30)
        replayed, deleted = every[55], every[56]
        recovered(sink, "/a")
        recovered(sink, "/b")
        ops = await client.post(
            "/ops/dlq/replay", data={"id": replayed}, headers={**OPS, **SAME_ORIGIN}
        )
        r1 = await client.post(
            "/ops/dlq/replay", data={"id": replayed, "page": "2"}, headers=admin_form
        )
        r2 = await client.post(
            "/ops/dlq/delete", data={"id": deleted, "page": "2"}, headers=admin_form
        )
        await until(
            lambda: client.get("/admin/dlq?limit=500", headers=ADMIN),
            lambda r: r.json()["total"] == 58,
        )
        path = "/" + replayed.rsplit(".", 1)[1]
        replay_sent = await sink.wait_for(path, len(sink.at(path)) + 1)
        again = await client.post("/ops/dlq/delete", data={"id": deleted}, headers=admin_form)
        refused = [
            await client.post("/ops/dlq/delete", data=form, headers=admin_form)
            for form in (
                {},
                {"id": every[0], "page": "0"},
                {"id": every[0], "extra": "1"},
                {"id": "x" * 201},
            )
        ]
        left = [
            i["id"]
            for i in (await client.get("/admin/dlq?limit=500", headers=ADMIN)).json()["items"]
        ]
        page_two = (await client.get("/ops?page=2", headers=ADMIN)).text
    assert ops.status_code == 403
    assert replay_sent[-1].status == 200 and replayed.startswith(
        replay_sent[-1].headers["webhook-id"]
    )
    assert (r1.status_code, r1.headers["location"]) == (303, "/ops?page=2")
    assert (r2.status_code, r2.headers["location"]) == (303, "/ops?page=2")
    assert left == [i for i in every if i not in (replayed, deleted)]  # the others untouched
    assert "<b>58</b> dead letters" in page_two
    assert (again.status_code, again.headers["location"]) == (303, "/ops")  # already gone
    assert [r.status_code for r in refused] == [400] * 4
    assert [r.json()["error"] for r in refused] == [
        "the form needs `id`",
        "`page` must be an integer from 1 to 100000",
        "unknown form field 'extra'",
        "form field `id` is over 200 characters",
    ]
    assert left == [i for i in every if i not in (replayed, deleted)]


# ── the CLI ────────────────────────────────────────────────────────────────────────────────────


@pytest.fixture
def outage(redis_url: str, keys: Keys, tmp_path: Path) -> Iterator[tuple[LiveGateway, Sink]]:
    """A live gateway whose `wms` fails: its breaker open, 3 deliveries waiting, 3 dead."""
    with Sink() as sink:
        failing(sink, "/wms")
        text = CONFIG_TOML.replace("{prefix}", keys.prefix)
        text += subscription(sink, "wms", **{**OUTAGE, "breaker_threshold": 6})
        text += subscription(sink, "dead", **DEAD_AT_ONCE)
        failing(sink, "/dead")
        config = tmp_path / "orderhook.toml"
        config.write_text(text)
        env = {**os.environ, "REDIS_URL": redis_url, "ORDERHOOK_ADMIN_TOKEN": "admin-token"}
        gateway = LiveGateway(config, env, tmp_path / "gw.log").start()
        try:
            for n in range(6):
                r = httpx.post(gateway.url + "/hooks/vtex", json=notification_of(n), headers=AUTH)
                assert r.status_code == 200
            sink.wait_for_sync(lambda: len(sink.at("/wms")) >= 6, 10, "the failures")
            sink.wait_for_sync(lambda: len(sink.at("/dead")) >= 6, 10, "the dead letters")
            yield gateway, sink
        finally:
            gateway.stop()


def notification_of(n: int) -> dict[str, object]:
    return notification(OrderId=f"v{n}-01")


def test_cli_shows_the_breaker_retries_now_and_pages_dead_letters(
    outage: tuple[LiveGateway, Sink],
) -> None:
    gateway, sink = outage
    status = orderhook("status", url=gateway.url)
    page_two = orderhook("dlq", "list", "--limit", "4", "--page", "2", url=gateway.url)
    all_dead = orderhook("dlq", "list", "--limit", "500", url=gateway.url)
    first_id = all_dead.stdout.splitlines()[2].split()[0]
    deleted = orderhook("dlq", "delete", first_id, url=gateway.url)
    deleted_again = orderhook("dlq", "delete", first_id, url=gateway.url)
    recovered(sink, "/wms")
    retried = orderhook("subscriptions", "retry-now", "wms", url=gateway.url)
    sink.wait_for_sync(lambda: len(sink.at("/wms")) >= 12, 5, "the retried deliveries")
    unknown = orderhook("subscriptions", "retry-now", "nope", url=gateway.url)
    after = orderhook("status", url=gateway.url)
    wms = next(line for line in status.stdout.splitlines() if line.startswith("wms"))
    head = status.stdout.splitlines()[1].split()
    assert head[:6] == ["subscription", "state", "breaker", "failures", "next", "probe"]
    assert wms.split()[:4] == ["wms", "enabled", "open", "6"], status.stdout
    assert re.search(r" UTC \(in (9\.\d|9|10) min\)", wms), wms
    assert page_two.stdout.splitlines()[-1] == "5 to 6 of 6 dead letters (page 2 of 2)"
    assert " UTC (" in page_two.stdout and " ago)" in page_two.stdout  # when each died
    assert deleted.returncode == 0 and deleted.stdout == f"deleted {first_id}\n"
    assert deleted_again.returncode == 1 and "HTTP 404" in deleted_again.stderr
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout == "wms: breaker closed (was open), 6 deliveries made due now\n"
    assert unknown.returncode == 1
    assert unknown.stderr == "orderhook: HTTP 404: no subscription 'nope'\n"
    line = next(line for line in after.stdout.splitlines() if line.startswith("wms"))
    assert line.split()[2:4] == ["closed", "0"]

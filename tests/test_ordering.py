"""ordering = "per-order": each order's events one at a time, in currentChange order, without
holding back other orders; reorder_window sorts late arrivals; drop_stale skips older states."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import statistics
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.events import normalize, parse_body, utc_now_iso
from app.ordering import OrderPlace
from app.ordering.position import encode as order_position
from app.store.client import open_store
from app.store.routing import Planned, Routed, Routing
from app.store.schema import Keys
from tests.catalogued import catalogue
from tests.conftest import AUTH, CONFIG_TOML, Gateway, notification
from tests.relaying import ADMIN, SECRET, hook, subscription, until
from tests.relaying import Gateway as InProcess
from tests.subscribers import Sink

STATES = [
    "order-created",
    "payment-approved",
    "ready-for-handling",
    "handling",
    "invoiced",
    "delivered",
]


def change(minute: int, step: int) -> str:
    """The currentChange of an order's `step`-th state (7 decimals, as VTEX sends)."""
    return f"2026-11-27T10:{minute % 60:02d}:{step:02d}.{1234567 + step:07d}Z"


def state_notification(order: str, step: int, minute: int = 0) -> dict[str, Any]:
    return notification(OrderId=order, State=STATES[step], CurrentChange=change(minute, step))


def received_per_order(sink: Sink, path: str) -> dict[str, list[str]]:
    """Each order's states in the order the subscriber accepted them (2xx only)."""
    orders: dict[str, list[str]] = defaultdict(list)
    for r in sink.at(path):
        if 200 <= r.status < 300:
            event = orjson.loads(r.body)
            orders[event["subject"]].append(event["data"]["state"])
    return orders


def ordered(sink: Sink, sub_id: str, **options: Any) -> str:
    return subscription(sink, sub_id, ordering='"per-order"', **options)


# ── interleavings ──────────────────────────────────────────────────────────────────────────────

ORDERS, STEPS = 50, 6


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    duplicates=st.lists(
        st.tuples(st.integers(0, ORDERS - 1), st.integers(0, STEPS - 1)), max_size=60
    ),
    failure_ratio=st.sampled_from([0.0, 0.1, 0.3]),
)
def test_any_interleaving_with_duplicates_and_failures_arrives_in_order(
    gateway: InProcess,
    sink: Sink,
    seed: int,
    duplicates: list[tuple[int, int]],
    failure_ratio: float,
) -> None:
    tag = uuid.uuid4().hex[:8]
    path = f"/ord-{tag}"
    sink.flaky(path, failure_ratio, seed=seed)
    sends = [(o, s) for o in range(ORDERS) for s in range(STEPS)] + duplicates
    random.Random(seed).shuffle(sends)
    options = {"retry_schedule": "[0.05, 0.05, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]"}
    toml = ordered(sink, f"ord-{tag}", reorder_window=1.5, breaker_threshold=1000, **options)

    async def scenario() -> None:
        async with gateway(toml) as client:
            await asyncio.gather(
                *(
                    client.post(
                        "/hooks/vtex", json=state_notification(f"{tag}-{o}", s), headers=AUTH
                    )
                    for o, s in sends
                )
            )
            await sink.wait_for(path, ORDERS * STEPS, timeout=60)
            while sum(map(len, received_per_order(sink, path).values())) < ORDERS * STEPS:
                await asyncio.sleep(0.05)

    asyncio.run(scenario())
    gc.collect()  # this example's app, here on the main thread (see conftest)
    got = received_per_order(sink, path)
    assert len(got) == ORDERS
    for order, states in got.items():
        assert states == STATES, f"{order}: {states}"


# ── no head-of-line blocking ───────────────────────────────────────────────────────────────────


@pytest.mark.anyio
async def test_one_failing_order_does_not_delay_the_others(gateway: InProcess, sink: Sink) -> None:
    bad = "bad-order-01"
    sink.rule("/ord", fail=lambda body: orjson.loads(body)["subject"] == bad)
    toml = ordered(sink, "control", max_in_flight=32)
    toml += ordered(sink, "ord", retry_schedule=str([0.2] * 200), max_in_flight=32)
    async with gateway(toml) as client:
        for step in range(3):
            await hook(client, **state_notification(bad, step))
        events = [state_notification(f"order-{i:04d}", s) for i in range(1000) for s in (0, 1)]
        for start in range(0, len(events), 100):
            await asyncio.gather(
                *(
                    client.post("/hooks/vtex", json=e, headers=AUTH)
                    for e in events[start : start + 100]
                )
            )
        await sink.wait_for("/control", 2003, timeout=60)
        while sum(map(len, received_per_order(sink, "/ord").values())) < 2000:
            await asyncio.sleep(0.05)
        counts = (await client.get("/admin/subscriptions", headers=ADMIN)).json()
        page = (await client.get("/ops", headers=ADMIN)).text
    arrivals: dict[str, dict[str, float]] = defaultdict(dict)
    for path in ("/ord", "/control"):
        for r in sink.at(path):
            if r.status == 200:
                arrivals[path][orjson.loads(r.body)["id"]] = r.at
    lags = [arrivals["/ord"][i] - arrivals["/control"][i] for i in arrivals["/ord"]]
    lags.sort()
    print(
        f"\n  2,000 events of 1,000 orders, beside a failing order vs without: "
        f"lag median {statistics.median(lags) * 1000:.1f} ms, "
        f"p95 {lags[int(len(lags) * 0.95)] * 1000:.1f} ms"
    )
    # Blocked behind the failing order, they would wait for its 200 retries (40 s): a lag of
    # seconds. What is left is noise and the second subscription's place in the config.
    assert statistics.median(lags) < 0.25 and lags[int(len(lags) * 0.95)] < 1.0
    assert bad not in received_per_order(sink, "/ord")
    failing = [r for r in sink.at("/ord") if orjson.loads(r.body)["subject"] == bad]
    assert {orjson.loads(r.body)["data"]["state"] for r in failing} == {STATES[0]}  # only it
    assert len(failing) >= 2  # retried
    row = next(s for s in counts["subscriptions"] if s["id"] == "ord")
    assert row["held"] == 2  # its later two wait
    assert "<small>2 held for their order</small>" in page


@pytest.mark.anyio
async def test_a_dead_event_lets_its_order_go_on_and_the_entry_says_who_overtook(
    gateway: InProcess, sink: Sink
) -> None:
    failing = {"on": True}
    sink.rule(
        "/ord", fail=lambda body: failing["on"] and orjson.loads(body)["data"]["state"] == STATES[0]
    )
    async with gateway(ordered(sink, "ord", retry_schedule="[0.05, 0.05]")) as client:
        ids = [await hook(client, **state_notification("o-1", step)) for step in range(3)]
        await until(
            lambda: client.get("/admin/dlq", headers=ADMIN),
            lambda r: r.json()["total"] == 1 and len(r.json()["items"][0]["overtakenBy"]) == 2,
        )
        entry = (await client.get("/admin/dlq", headers=ADMIN)).json()["items"][0]
        assert received_per_order(sink, "/ord")["o-1"] == STATES[1:3]
        assert entry["eventId"] == ids[0] and entry["overtakenBy"] == ids[1:]
        failing["on"] = False
        r = await client.post("/admin/dlq/replay", json={"ids": [entry["id"]]}, headers=ADMIN)
        assert r.json() == {"replayed": 1}
        await sink.wait_for("/ord", 6)  # 3 attempts of the first, then 2 others, then replay
        assert received_per_order(sink, "/ord")["o-1"] == [*STATES[1:3], STATES[0]]


# ── reorder window and stale states ────────────────────────────────────────────────────────────


@pytest.mark.anyio
async def test_reorder_window_sends_a_late_earlier_state_first(
    gateway: InProcess, sink: Sink
) -> None:
    async with gateway(ordered(sink, "ord", reorder_window=0.5)) as client:
        await hook(client, **state_notification("o-1", 4))
        await asyncio.sleep(0.2)
        await hook(client, **state_notification("o-1", 2))
        assert not sink.at("/ord")  # both held for the window
        await sink.wait_for("/ord", 2)
    assert received_per_order(sink, "/ord")["o-1"] == [STATES[2], STATES[4]]


@pytest.mark.anyio
async def test_drop_stale_skips_an_older_state_and_logs_it(gateway: InProcess, sink: Sink) -> None:
    async with gateway(ordered(sink, "ord", drop_stale="true")) as client:

        def settled(delivered: int, stale: int) -> Any:
            return until(
                lambda: client.get("/ops/stats", headers=ADMIN),
                lambda r: (
                    (
                        r.json()["subscriptions"][0]["delivered"],
                        r.json()["subscriptions"][0]["stale"],
                    )
                    == (delivered, stale)
                ),
            )

        await hook(client, **state_notification("o-1", 4))
        await settled(1, 0)  # the last delivered is state 4
        stale = await hook(client, **state_notification("o-1", 2))
        newer = await hook(client, **state_notification("o-1", 5))
        stats = await settled(2, 1)
        log = (await client.get(f"/admin/events/{stale}", headers=ADMIN)).json()
        page = (await client.get("/ops", headers=ADMIN)).text
    assert received_per_order(sink, "/ord")["o-1"] == [STATES[4], STATES[5]]
    assert [a["outcome"] for a in log["attempts"]["ord"]] == ["stale"]
    assert "drop_stale" in log["attempts"]["ord"][0]["error"]
    assert "<small>1 stale</small>" in page
    assert stats.json()["subscriptions"][0]["delivered"] == 2
    assert newer != stale


def test_ordering_is_refused_on_a_pull_subscription(tmp_path: Path) -> None:
    from app.config import load_settings
    from app.errors import ConfigError

    path = tmp_path / "orderhook.toml"
    path.write_text(
        CONFIG_TOML.replace("{prefix}", "x")
        + '[[subscriptions]]\nid = "p"\nmode = "pull"\ntoken = "t"\nordering = "per-order"\n'
    )
    with pytest.raises(ConfigError, match="ordering"):
        load_settings(path, {})
    path.write_text(
        CONFIG_TOML.replace("{prefix}", "x")
        + f'[[subscriptions]]\nid = "p"\nurl = "http://127.0.0.1:1/"\nsecret = "{SECRET}"\n'
        + "reorder_window = 2\n"
    )
    with pytest.raises(ConfigError, match='needs ordering = "per-order"'):
        load_settings(path, {})


# ── two gateway processes ──────────────────────────────────────────────────────────────────────

WINDOW_S = 2.0


@pytest.mark.anyio
async def test_two_gateway_processes_keep_each_order_one_at_a_time_in_order(
    redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    delay = 0.03
    with Sink() as sink:
        sink.rule("/ord", delay_s=delay)
        config = tmp_path / "orderhook.toml"
        config.write_text(
            CONFIG_TOML.replace("{prefix}", keys.prefix)
            + ordered(sink, "ord", reorder_window=WINDOW_S, max_in_flight=16)
        )
        env = {**os.environ, "REDIS_URL": redis_url, "ORDERHOOK_ADMIN_TOKEN": "admin-token"}
        gateways = [Gateway(config, env, tmp_path / f"gateway-{n}.log").start() for n in range(2)]
        try:
            sends = [(o, s) for o in range(100) for s in range(4)]
            random.Random(1).shuffle(sends)
            started = time.monotonic()
            async with aiohttp.ClientSession() as client:

                async def post(n: int, order: int, step: int) -> int:
                    body = orjson.dumps(state_notification(f"two-{order}", step))
                    url = gateways[n % 2].url + "/hooks/vtex"
                    async with client.post(url, data=body, headers=AUTH) as r:
                        return r.status

                statuses = await asyncio.gather(*(post(n, o, s) for n, (o, s) in enumerate(sends)))
            assert set(statuses) == {200}
            assert time.monotonic() - started < WINDOW_S  # the window covers the shuffle
            await sink.wait_for("/ord", 400, timeout=60)
        finally:
            for g in gateways:
                g.stop()
    per_order: dict[str, list[float]] = defaultdict(list)
    for r in sink.at("/ord"):
        per_order[orjson.loads(r.body)["subject"]].append(r.at)
    got = received_per_order(sink, "/ord")
    assert len(got) == 100
    assert all(states == STATES[:4] for states in got.values()), got
    gaps = [b - a for times in per_order.values() for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= delay * 0.9  # the next one started only after the previous answer
    client = redis.Redis.from_url(redis_url)
    assert client.zcard(keys.pending_age("ord")) == 0
    client.close()


@pytest.mark.anyio
async def test_an_entry_routed_before_its_orders_earlier_one_waits_for_it(
    redis_url: str, keys: Keys
) -> None:
    """Two routers (two processes) hold an order's two entries; the later one's router gets to
    route first: it is deferred until the earlier one is routed, whoever routes it."""
    async with open_store(redis_url, keys, 2.0, 3600) as store:
        deliveries = Routing(store, 3600)
        await deliveries.ensure_group()
        events = [
            normalize(parse_body(orjson.dumps(state_notification("o-1", s))), utc_now_iso())
            for s in (0, 1)
        ]
        events.append(
            normalize(parse_body(orjson.dumps(state_notification("o-2", 0))), utc_now_iso())
        )
        await store.append(events)
        entries = await deliveries.read_new("router-1", 10, 100)
        first, second, other = (
            Routed(entry_id, orjson.loads(raw), raw, []) for entry_id, raw, _ in entries
        )
        assert await deliveries.route([second, other]) == (set(), {second.entry_id})
        assert await deliveries.route([second]) == (set(), {second.entry_id})
        assert await deliveries.route([first]) == (set(), set())
        assert await deliveries.route([second]) == (set(), set())
    client = redis.Redis.from_url(redis_url)
    assert client.xlen(keys.ingest_stream) == 0  # all three routed and removed
    client.close()


# ── issue 12: no value ingest accepts can stop an order, a batch or another subscription ──────


@pytest.mark.anyio
async def test_far_future_change_time_is_refused_and_the_order_goes_on_for_every_subscription(
    gateway: InProcess, sink: Sink
) -> None:
    """12.1: a CurrentChange of 2286-11-20 or later made an 18-digit position; order.lua failed
    on it after the entry was acknowledged, and the order's later events were lost for every
    subscription. Now ingest refuses it (400), and the order's events go on."""
    toml = ordered(sink, "ord", drop_stale="true") + subscription(sink, "all")
    async with gateway(toml) as client:
        r = await client.post(
            "/hooks/vtex",
            json=notification(OrderId="o-1", CurrentChange="2286-11-21T00:00:00.0000000Z"),
            headers=AUTH,
        )
        assert r.status_code == 400 and "ahead of the gateway's clock" in r.json()["error"]
        for step in range(3):
            await hook(client, **state_notification("o-1", step))
        await sink.wait_for("/ord", 3)
        await sink.wait_for("/all", 3)
        stats = (await client.get("/ops/stats", headers=ADMIN)).json()
    assert received_per_order(sink, "/ord")["o-1"] == STATES[:3]
    assert {s["id"]: s["held"] for s in stats["subscriptions"]} == {"ord": 0, "all": 0}


@pytest.mark.anyio
async def test_a_delivery_route_lua_cannot_handle_is_dead_lettered_and_the_rest_go_on(
    redis_url: str, keys: Keys
) -> None:
    """12.1, the class: whatever a planned delivery carries, route.lua dead-letters the one it
    cannot handle, with the reason, and routes the entry's other deliveries, the batch's other
    entries and the order's next event."""
    async with open_store(redis_url, keys, 2.0, 3600) as store:
        deliveries = Routing(store, 3600)
        await deliveries.ensure_group()
        await catalogue(store, "a", "b")
        events = [
            normalize(parse_body(orjson.dumps(state_notification(o, s))), utc_now_iso())
            for o, s in (("o-1", 0), ("o-2", 0), ("o-1", 1))
        ]
        await store.append(events)
        entries = await deliveries.read_new("router-1", 10, 100)
        routed = []
        for entry_id, raw, _ in entries:
            event = orjson.loads(raw)
            plans = []
            for sub in ("a", "b"):
                plan = Planned(f"{event['id']}.{sub}", sub)
                plan.ordered = OrderPlace(order_position(event, plan.delivery_id))
                plans.append(plan)
            routed.append(Routed(entry_id, event, raw, plans))
        first = routed[0].deliveries[0]
        first.ordered = OrderPlace("1" * 18 + "|0000000000000|" + first.delivery_id)
        routed[1].deliveries[1].error = "KeyError: 'receivedAt'"
        assert await deliveries.route(routed) == (set(), set())
    client = redis.Redis.from_url(redis_url)
    try:
        dead = {m.decode() for m in client.zrange(keys.dlq("a"), 0, -1)}
        dead |= {m.decode() for m in client.zrange(keys.dlq("b"), 0, -1)}
        assert dead == {first.delivery_id, routed[1].deliveries[1].delivery_id}
        reason = client.hget(keys.delivery(first.delivery_id), "lastError").decode()
        assert reason.startswith("not routed: ") and "order position" in reason
        assert client.hget(keys.delivery(routed[1].deliveries[1].delivery_id), "lastError") == (
            b"not routed: KeyError: 'receivedAt'"
        )
        ready = {m.decode() for s in ("a", "b") for m in client.zrange(keys.ready(s), 0, -1)}
        # o-1's next event went on for "a" (its first is dead); o-2 and o-1 went on for "b"
        assert ready == {
            routed[2].deliveries[0].delivery_id,
            routed[0].deliveries[1].delivery_id,
            routed[1].deliveries[0].delivery_id,
        }
        assert client.xlen(keys.ingest_stream) == 0
    finally:
        client.close()


@pytest.mark.anyio
async def test_drop_stale_orders_an_event_without_current_change_by_its_last_change(
    gateway: InProcess, sink: Sink
) -> None:
    """12.2: VTEX's Marketplace example has no CurrentChange. Ordering fell back to the receipt
    time (now), so after such an event the order's later states counted as stale and were
    skipped. One rule now: CurrentChange, else LastChange — as the dedupe key and the
    CloudEvent's time."""
    async with gateway(ordered(sink, "ord", drop_stale="true")) as client:
        # VTEX's Marketplace example: no CurrentChange (None removes it)
        await hook(
            client, OrderId="o-1", State=STATES[1], LastChange=change(0, 1), CurrentChange=None
        )
        await sink.wait_for("/ord", 1)
        for step in (2, 3, 4):
            await hook(client, **state_notification("o-1", step))
        await sink.wait_for("/ord", 4)
        stats = (await client.get("/ops/stats", headers=ADMIN)).json()["subscriptions"][0]
    assert received_per_order(sink, "/ord")["o-1"] == STATES[1:5]
    assert stats["stale"] == 0
    times = [orjson.loads(r.body)["time"] for r in sink.at("/ord")]
    assert times == [change(0, step) for step in (1, 2, 3, 4)]


@pytest.mark.anyio
async def test_every_appender_numbers_each_orders_events(redis_url: str, keys: Keys) -> None:
    """12.6: only the hook's store was opened with the sequencing flag; events that feed backup
    appended from `orderhook worker` had no per-order number, so two routers could hand them on
    out of order. There is no flag now: the store that feed backup and the hook share numbers
    every append."""
    async with open_store(redis_url, keys, 2.0, 3600) as store:  # as app/relay.py opens it
        events = [
            normalize(parse_body(orjson.dumps(state_notification(o, s))), utc_now_iso())
            for o, s in (("o-1", 0), ("o-2", 0), ("o-1", 1))
        ]
        await store.append(events)
    client = redis.Redis.from_url(redis_url)
    try:
        entries = [fields for _, fields in client.xrange(keys.ingest_stream)]
    finally:
        client.close()
    assert [(f[b"ord"], f[b"seq"]) for f in entries] == [
        (b"mystore:o-1", b"1"),
        (b"mystore:o-2", b"1"),
        (b"mystore:o-1", b"2"),
    ]


@pytest.mark.anyio
async def test_an_unreadable_ingest_entry_stops_none_of_its_batch(
    gateway: InProcess, sink: Sink, rdb: redis.Redis, keys: Keys
) -> None:
    """12.1, the class: an entry the router cannot read (not an event this gateway wrote) is
    left pending and logged; the entries read in the same batch are routed."""
    rdb.xadd(keys.ingest_stream, {"id": "x", "event": b"\xff not json", "seq": 1, "ord": "m:x"})
    async with gateway(ordered(sink, "ord") + subscription(sink, "all")) as client:
        await hook(client, **state_notification("o-1", 0))
        await sink.wait_for("/ord", 1)
        await sink.wait_for("/all", 1)
    assert rdb.xlen(keys.ingest_stream) == 1  # the unreadable one, still there to look at

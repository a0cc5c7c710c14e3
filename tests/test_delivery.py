"""Fan-out end to end: hook POST → Redis → router → signed CloudEvent at a real subscriber."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from standardwebhooks.webhooks import Webhook

from app.config import load_settings
from app.server import create_app
from app.store.schema import Keys
from tests.conftest import CONFIG_TOML, notification
from tests.relaying import (
    ADMIN,
    OLD_SECRET,
    SECRET,
    Gateway,
    body,
    hook,
    subscription,
    until,
)
from tests.subscribers import Reply, Sink

pytestmark = pytest.mark.anyio


async def test_delivers_a_signed_structured_cloudevent(gateway: Gateway, sink: Sink) -> None:
    async with gateway(subscription(sink, "erp")) as client:
        event_id = await hook(client)
        [got] = await sink.wait_for("/erp", 1)
    assert got.headers["Content-Type"] == "application/cloudevents+json"
    Webhook(SECRET).verify(got.body, got.headers)  # the third-party verifier accepts it
    event = from_http_event(HTTPMessage(headers=got.headers, body=got.body))
    assert event.get_id() == event_id == got.headers["webhook-id"]
    assert event.get_source() == "https://mystore.vtexcommercestable.com.br"
    assert event.get_type() == "vtex.order.status-changed"
    assert event.get_subject() == "v52277740atmc-01"
    assert event.get_time().isoformat().startswith("2019-08-14T17:12:48.096589")
    data = event.get_data()
    assert data["state"] == "ready-for-handling"
    assert data["raw"] == notification()


async def test_rotating_secrets_sign_with_each_newest_first(gateway: Gateway, sink: Sink) -> None:
    async with gateway(subscription(sink, "erp", secret=[SECRET, OLD_SECRET])) as client:
        await hook(client)
        [got] = await sink.wait_for("/erp", 1)
    signatures = got.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    for secret, signature in zip([SECRET, OLD_SECRET], signatures, strict=True):
        Webhook(secret).verify(got.body, {**got.headers, "webhook-signature": signature})


async def test_from_workflow_filter_passes_only_listed_states(gateway: Gateway, sink: Sink) -> None:
    flt = '{ type = "FromWorkflow", status = ["invoiced", "canceled"] }'
    subs = subscription(sink, "wms", filter=flt) + subscription(sink, "all")
    async with gateway(subs) as client:
        for state in ["ready-for-handling", "invoiced", "handling", "canceled"]:
            await hook(client, State=state)
        await sink.wait_for("/all", 4)
        await asyncio.sleep(0.3)
    states = [body(r)["data"]["state"] for r in sink.at("/wms")]
    assert sorted(states) == ["canceled", "invoiced"]


async def test_from_orders_filter_and_transform(
    gateway: Gateway, sink: Sink, rdb: redis.Redis, keys: Keys
) -> None:
    flt = """{ type = "FromOrders", expression = 'status = "invoiced" and hostname = "mystore"' }"""
    broken = """{ type = "FromOrders", expression = '$number(orderId) > 1' }"""
    transform = """'{"orderId": orderId, "state": status, "account": hostname}'"""
    subs = subscription(sink, "erp", filter=flt, transform=transform)
    subs += subscription(sink, "broken", filter=broken) + subscription(sink, "all")
    async with gateway(subs) as client:
        await hook(client, State="handling")
        await hook(client, State="invoiced")
        await sink.wait_for("/all", 2)
        [got] = await sink.wait_for("/erp", 1)
        await asyncio.sleep(0.3)
    assert body(got)["data"] == {
        "orderId": "v52277740atmc-01",
        "state": "invoiced",
        "account": "mystore",
    }
    assert sink.at("/broken") == []  # "v5227…" is no number: a run-time error, no match
    assert int(rdb.hget(keys.stats, "broken:filter_errors") or 0) == 2


async def test_accounts_limit_a_subscription_to_some_sources(gateway: Gateway, sink: Sink) -> None:
    subs = subscription(sink, "only-other", accounts='["otherstore"]') + subscription(sink, "all")
    async with gateway(subs) as client:
        await hook(client)  # account mystore
        await sink.wait_for("/all", 1)
        await asyncio.sleep(0.3)
    assert sink.at("/only-other") == []


async def test_retry_then_success_keeps_the_webhook_id(gateway: Gateway, sink: Sink) -> None:
    sink.script("/erp", Reply(500), Reply(502))
    async with gateway(subscription(sink, "erp")) as client:
        event_id = await hook(client)
        attempts = await sink.wait_for("/erp", 3)
    assert {a.headers["webhook-id"] for a in attempts} == {event_id}
    assert len({a.headers["webhook-timestamp"] for a in attempts}) >= 1
    for attempt in attempts:
        Webhook(SECRET).verify(attempt.body, attempt.headers)


async def test_exhausted_schedule_dead_letters_then_replay_delivers(
    gateway: Gateway, sink: Sink
) -> None:
    sink.script("/erp", Reply(500), Reply(500), Reply(503))
    async with gateway(subscription(sink, "erp")) as client:
        event_id = await hook(client)
        await sink.wait_for("/erp", 3)
        dlq = await until(
            lambda: client.get("/admin/dlq?subscription=erp", headers=ADMIN),
            lambda r: r.json()["total"] == 1,
        )
        [entry] = dlq.json()["items"]
        assert (entry["eventId"], entry["subscription"]) == (event_id, "erp")
        assert (entry["attempts"], entry["lastStatus"], entry["lastError"]) == (3, 503, "HTTP 503")
        subs = (await client.get("/admin/subscriptions", headers=ADMIN)).json()["subscriptions"]
        assert subs[0]["deadLetters"] == 1
        r = await client.post("/admin/dlq/replay", json={"ids": [entry["id"]]}, headers=ADMIN)
        assert r.json() == {"replayed": 1}
        [*_, delivered] = await sink.wait_for("/erp", 4)
        assert delivered.headers["webhook-id"] == event_id
        r = await client.get("/admin/dlq?subscription=erp", headers=ADMIN)
        assert r.json()["total"] == 0


async def test_410_disables_keeps_queued_events_and_replay_reenables(
    gateway: Gateway, sink: Sink
) -> None:
    sink.script("/erp", Reply(410))
    async with gateway(subscription(sink, "erp")) as client:
        first = await hook(client, State="handling")
        await sink.wait_for("/erp", 1)
        state = await until(
            lambda: client.get("/admin/subscriptions", headers=ADMIN),
            lambda r: r.json()["subscriptions"][0]["state"] == "disabled",
        )
        assert state.json()["subscriptions"][0]["reason"] == "HTTP 410"
        second = await hook(client, State="invoiced")
        await asyncio.sleep(0.5)
        assert len(sink.at("/erp")) == 1  # nothing is sent while disabled
        queued = (await client.get("/admin/subscriptions", headers=ADMIN)).json()
        assert queued["subscriptions"][0]["queued"] == 2
        r = await client.post("/admin/dlq/replay", json={"subscription": "erp"}, headers=ADMIN)
        assert r.status_code == 200
        got = await sink.wait_for("/erp", 3)
    assert {g.headers["webhook-id"] for g in got[1:]} == {first, second}


async def test_retry_after_is_honoured(gateway: Gateway, sink: Sink) -> None:
    sink.script("/erp", Reply(429, {"Retry-After": "1"}))
    async with gateway(subscription(sink, "erp")) as client:
        await hook(client)
        first, second = await sink.wait_for("/erp", 2, timeout=5)
    assert second.at - first.at >= 1.0  # the schedule alone would have waited 0.05 s


async def test_a_hung_subscriber_does_not_slow_another(gateway: Gateway, sink: Sink) -> None:
    sink.script("/hung", *[Reply(hang=True)] * 100)
    subs = subscription(sink, "hung", max_in_flight=2, timeout=6) + subscription(sink, "fast")
    async with gateway(subs) as client:
        started = time.monotonic()
        for i in range(40):
            await hook(client, OrderId=f"o-{i}")
        got = await sink.wait_for("/fast", 40, timeout=5)
        assert got[-1].at - started < 4.0  # before even one of the hung attempts times out
        assert len(sink.at("/hung")) == 2  # it only ever holds its own two slots


async def test_admin_api_needs_the_token(gateway: Gateway, sink: Sink) -> None:
    async with gateway(subscription(sink, "erp")) as client:
        assert (await client.get("/admin/subscriptions")).status_code == 401
        bad = {"Authorization": "Bearer nope"}
        assert (await client.get("/admin/dlq", headers=bad)).status_code == 401
        r = await client.get("/admin/dlq?subscription=zzz", headers=ADMIN)
        assert r.status_code == 404
        r = await client.delete("/admin/dlq/unknown", headers=ADMIN)
        assert (r.status_code, "unknown" in r.json()["error"]) == (404, True)
        r = await client.post("/admin/dlq/replay", json={"nope": 1}, headers=ADMIN)
        assert r.status_code == 400


async def test_dead_letter_can_be_deleted(gateway: Gateway, sink: Sink) -> None:
    sink.script("/erp", Reply(500), Reply(500), Reply(500))
    async with gateway(subscription(sink, "erp")) as client:
        await hook(client)
        dlq = await until(
            lambda: client.get("/admin/dlq", headers=ADMIN), lambda r: r.json()["total"] == 1
        )
        entry_id = dlq.json()["items"][0]["id"]
        r = await client.delete(f"/admin/dlq/{entry_id}", headers=ADMIN)
        assert r.json() == {"deleted": entry_id}
        assert (await client.get("/admin/dlq", headers=ADMIN)).json()["total"] == 0


async def test_admin_api_without_a_configured_token_is_forbidden(
    client: httpx.AsyncClient,
) -> None:
    for method, path in [
        ("GET", "/admin/subscriptions"),
        ("GET", "/admin/dlq"),
        ("POST", "/admin/dlq/replay"),
        ("DELETE", "/admin/dlq/x"),
    ]:
        r = await client.request(method, path, headers=ADMIN)
        assert r.status_code == 403, path
        assert "ORDERHOOK_ADMIN_TOKEN" in r.json()["error"]


async def test_a_transform_failing_at_run_time_dead_letters_the_delivery(
    gateway: Gateway, sink: Sink
) -> None:
    transform = """'$number(orderId)'"""
    async with gateway(subscription(sink, "erp", transform=transform)) as client:
        event_id = await hook(client)
        dlq = await until(
            lambda: client.get("/admin/dlq", headers=ADMIN), lambda r: r.json()["total"] == 1
        )
    [entry] = dlq.json()["items"]
    assert entry["eventId"] == event_id
    assert entry["lastError"].startswith("transform failed: D3030")
    assert sink.at("/erp") == []


async def test_router_recovers_when_its_stream_is_deleted(
    gateway: Gateway, sink: Sink, rdb: redis.Redis, keys: Keys
) -> None:
    async with gateway(subscription(sink, "erp")) as client:
        await hook(client, State="handling")
        await sink.wait_for("/erp", 1)
        rdb.delete(keys.ingest_stream)  # the router is blocked reading it: UNBLOCKED error
        await asyncio.sleep(0.2)
        await hook(client, State="invoiced")
        got = await sink.wait_for("/erp", 2, timeout=10)
    assert body(got[1])["data"]["state"] == "invoiced"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/erp",  # loopback: not in this config's allow_networks
        "http://localhost:{port}/erp",  # a name that resolves to loopback
        "http://169.254.169.254/latest/meta-data",  # cloud metadata
        "http://10.1.2.3/erp",  # private
        "http://[::ffff:127.0.0.1]:{port}/erp",  # loopback in IPv6 clothing
    ],
)
async def test_ssrf_guard_refuses_private_targets_without_retrying(
    redis_url: str, keys: Keys, tmp_path: Path, sink: Sink, url: str
) -> None:
    text = CONFIG_TOML.replace('allow_networks = ["127.0.0.0/8"]', "allow_networks = []")
    text = text.replace("{prefix}", keys.prefix) + (
        f'\n[[subscriptions]]\nid = "erp"\nurl = "{url.format(port=sink.port)}"\n'
        f'secret = "{SECRET}"\nretry_schedule = [0.05, 0.05]\ntimeout = 2\n'
    )
    path = tmp_path / "ssrf.toml"
    path.write_text(text)
    env = {"REDIS_URL": redis_url, "ORDERHOOK_ADMIN_TOKEN": "admin-token"}
    app = create_app(load_settings(path, env))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            await hook(client)
            dlq = await until(
                lambda: client.get("/admin/dlq", headers=ADMIN), lambda r: r.json()["total"] == 1
            )
    [entry] = dlq.json()["items"]
    assert entry["attempts"] == 1  # dead at once: no retry storm
    assert entry["lastError"].startswith("refused by the SSRF guard")
    assert sink.at("/erp") == []


async def test_circuit_breaker_opens_probes_and_closes(gateway: Gateway, sink: Sink) -> None:
    sink.script("/erp", Reply(500), Reply(500), Reply(500))
    options = {"breaker_threshold": 3, "breaker_cooldown": 1, "max_in_flight": 1}
    async with gateway(subscription(sink, "erp", **options)) as client:
        ids = [await hook(client, OrderId=f"b-{i}") for i in range(4)]
        state = await until(
            lambda: client.get("/admin/subscriptions", headers=ADMIN),
            lambda r: r.json()["subscriptions"][0]["breaker"] == "open",
        )
        assert state.json()["subscriptions"][0]["consecutiveFailures"] == 3
        await hook(client, OrderId="b-4")  # keeps queueing while open
        got = await sink.wait_for("/erp", 3 + 5, timeout=10)
        final = (await client.get("/admin/subscriptions", headers=ADMIN)).json()
    gap = got[3].at - got[2].at
    assert gap >= 0.8  # nothing sent while open, then one probe
    assert final["subscriptions"][0]["breaker"] == "closed"
    delivered = {g.headers["webhook-id"] for g in got[3:]}
    assert set(ids) <= delivered and len(delivered) == 5  # nothing dropped


async def test_failing_for_too_long_disables(gateway: Gateway, sink: Sink) -> None:
    sink.script("/erp", *[Reply(500)] * 1000)
    options = {
        "retry_schedule": "[0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]",
        "disable_after": 0.5,
    }
    async with gateway(subscription(sink, "erp", **options)) as client:
        await hook(client)
        state = await until(
            lambda: client.get("/admin/subscriptions", headers=ADMIN),
            lambda r: r.json()["subscriptions"][0]["state"] == "disabled",
        )
    reason = state.json()["subscriptions"][0]["reason"]
    assert reason.startswith("failing for ") and reason.endswith("HTTP 500")


async def test_max_per_second_spreads_deliveries(gateway: Gateway, sink: Sink) -> None:
    async with gateway(subscription(sink, "erp", max_per_second=5)) as client:
        for i in range(10):
            await hook(client, OrderId=f"r-{i}")
        got = await sink.wait_for("/erp", 10, timeout=10)
    span = got[-1].at - got[0].at
    assert span >= 0.8  # a burst of 5, then 5 a second
    windows = [sum(1 for g in got if 0 <= g.at - start < 0.5) for start in (g.at for g in got)]
    assert max(windows) <= 5 + 3  # never much above the rate, burst included


async def test_a_re_enabled_subscription_is_not_disabled_again_by_its_next_failure(
    gateway: Gateway, sink: Sink
) -> None:
    """12.4: enabling kept the old failingSinceMs (only a replay with dead letters cleared it),
    so the first failure after an operator's re-enable disabled the subscription again."""
    sink.script("/erp", *[Reply(500)] * 1000)
    options = {"retry_schedule": "[" + ", ".join(["0.1"] * 30) + "]", "disable_after": 0.5}
    async with gateway(subscription(sink, "erp", **options)) as client:
        event = await hook(client)
        await until(
            lambda: client.get("/admin/subscriptions", headers=ADMIN),
            lambda r: r.json()["subscriptions"][0]["state"] == "disabled",
        )
        sink.script("/erp", Reply(500))  # one more failure, then 200s
        r = await client.post("/admin/dlq/replay", json={"subscription": "erp"}, headers=ADMIN)
        assert r.json() == {"replayed": 0}  # nothing dead: the re-enable alone
        await until(
            lambda: client.get("/ops/stats", headers=ADMIN),
            lambda r: r.json()["subscriptions"][0]["delivered"] == 1,
        )
        state = (await client.get("/admin/subscriptions", headers=ADMIN)).json()
    assert state["subscriptions"][0]["state"] == "enabled"
    assert sink.at("/erp")[-1].headers["webhook-id"] == event


async def test_the_breaker_probe_is_the_oldest_due_delivery_so_a_first_attempt_failer_drains(
    gateway: Gateway, sink: Sink
) -> None:
    """12.5: a subscriber that answers 500 to each event's first attempt and 200 to its retry.
    The probe was the lowest due time, always a new event's first attempt: every probe failed
    and the cooldown doubled for ever. Now the probe is the due delivery created first."""
    seen: set[str] = set()

    def first_attempt(body: bytes) -> bool:
        event_id = orjson.loads(body)["id"]
        if event_id in seen:
            return False
        seen.add(event_id)
        return True

    sink.rule("/erp", fail=first_attempt)
    options = {
        "retry_schedule": "[2, 2, 2, 2, 2, 2, 2, 2, 2, 2]",  # retries due after new events
        "breaker_threshold": 3,
        "breaker_cooldown": 0.2,
    }
    async with gateway(subscription(sink, "erp", **options)) as client:
        for i in range(30):
            await hook(client, OrderId=f"f-{i}")
            await asyncio.sleep(0.1)
        drained = await until(
            lambda: client.get("/ops/stats", headers=ADMIN),
            lambda r: r.json()["subscriptions"][0]["delivered"] == 30,
            timeout=20,
        )
    assert drained.json()["subscriptions"][0]["deadLettered"] == 0

"""Subscriptions managed at run time through the admin API (app/ops/subscriptions.py,
app/subscriptions/manage.py): against a real Redis and real subscribers."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import httpx
import msgspec
import orjson
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.api_types import (
    AuditPage,
    Deleted,
    Rotated,
    StateChanged,
    Subscriptions,
    SubscriptionView,
)
from app.sealing import new_key
from app.subscriptions.spec import SECRET_FIELDS, SubscriptionSpec
from tests.relaying import ADMIN, OLD_SECRET, SECRET, Gateway, hook, subscription, until
from tests.subscribers import Sink

pytestmark = pytest.mark.anyio

OPS = {"Authorization": "Bearer ops-token"}
KEY = {"ORDERHOOK_SECRET_KEY": new_key()}
NEW_SECRET = "whsec_bmV3LXNlY3JldC1vZi10aGlydHktdHdvLWJ5dGVzIQ=="


def spec(sink: Sink, sub_id: str, **fields: Any) -> dict[str, Any]:
    """A push subscription's JSON body, to the sink's path /`sub_id`."""
    return {"id": sub_id, "url": sink.url("/" + sub_id), "retry_schedule": [0.05], **fields}


async def create(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/admin/subscriptions", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def state_of(client: httpx.AsyncClient, sub_id: str) -> dict[str, Any]:
    r = await client.get(f"/admin/subscriptions/{sub_id}", headers=ADMIN)
    assert r.status_code == 200, r.text
    return dict(r.json())


# ── create, show, list ───────────────────────────────────────────────────────────────────────


async def test_a_created_subscription_gets_the_next_event_signed_with_its_new_secret(
    gateway: Gateway, sink: Sink
) -> None:
    async with gateway(subscription(sink, "erp"), **KEY) as client:
        created = await create(client, spec(sink, "wms"))
        await hook(client)
        got = (await sink.wait_for("/wms", 1))[0]
        shown = await state_of(client, "wms")
        listed = (await client.get("/admin/subscriptions", headers=ADMIN)).json()
    assert created["secret"].startswith("whsec_") and created["version"] == 1
    Webhook(created["secret"]).verify(got.body, got.headers)
    assert (shown["secret"], shown["origin"], shown["version"], shown["state"]) == (
        "***",
        "api",
        1,
        "enabled",
    )
    assert shown["retry_schedule"] == [0.05] and shown["max_in_flight"] == 8
    msgspec.json.decode(orjson.dumps(shown), type=SubscriptionView)
    msgspec.json.decode(orjson.dumps(listed), type=Subscriptions)
    rows = {row["id"]: row for row in listed["subscriptions"]}
    assert (rows["erp"]["origin"], rows["wms"]["origin"]) == ("config", "api")
    assert rows["erp"]["secret"] == "***" and created["secret"] not in orjson.dumps(listed).decode()


async def test_a_given_secret_is_kept_and_never_shown(gateway: Gateway, sink: Sink) -> None:
    async with gateway("", **KEY) as client:
        created = await create(client, spec(sink, "wms", secret=SECRET))
        await hook(client)
        got = (await sink.wait_for("/wms", 1))[0]
    assert created["secret"] == "***"
    Webhook(SECRET).verify(got.body, got.headers)


async def test_a_pull_subscription_is_created_with_its_token(gateway: Gateway) -> None:
    async with gateway("", **KEY) as client:
        created = await create(client, {"id": "feed", "mode": "pull", "token": "t0k3n-feed"})
        await hook(client)
        feed = await until(
            lambda: client.get("/feed/feed", headers={"Authorization": "Bearer t0k3n-feed"}),
            lambda r: r.status_code == 200 and len(r.json()) == 1,
        )
    assert (created["token"], created["url"], created["secret"]) == ("***", None, None)
    assert feed.json()[0]["orderId"] == "v52277740atmc-01"


@pytest.mark.parametrize(
    ("fields", "status", "said"),
    [
        ({"filter": {"type": "FromOrders", "expression": "status = "}}, 400, None),
        ({"colour": "red"}, 400, "unknown field 'colour'"),
        ({"timeout": "soon"}, 400, "expected `float`, got `str` - at `$.timeout`"),
        ({"timeout": 0}, 400, "`timeout` must be positive"),
        ({"url": "http://10.1.2.3/hook"}, 400, "`url` cannot be delivered to: refused by the SSRF"),
        ({"url": "ftp://example.com/"}, 400, "`url` must be an http or https URL"),
        ({"id": "Not_An_Id"}, 400, "`id` must match"),
        ({"secret": "not-a-secret"}, 400, "`secret` is not a valid Standard Webhooks secret"),
        ({"secret_env": "HOME"}, 400, "`secret_env` is for the config file"),
        ({"id": "erp"}, 409, "subscription 'erp' exists"),
    ],
)
async def test_a_spec_the_config_loader_would_refuse_is_refused_naming_the_field(
    gateway: Gateway, sink: Sink, fields: dict[str, Any], status: int, said: str | None
) -> None:
    async with gateway(subscription(sink, "erp"), **KEY) as client:
        r = await client.post(
            "/admin/subscriptions", json=spec(sink, "wms") | fields, headers=ADMIN
        )
        listed = (await client.get("/admin/subscriptions", headers=ADMIN)).json()
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    if said is None:  # JSONata's message, with its position
        said = "`filter.expression` is not valid JSONata: S0207: Unexpected end of expression "
        said += "(at character 9)"
    assert r.json()["error"].startswith(said), r.json()
    assert [row["id"] for row in listed["subscriptions"]] == ["erp"]


async def test_a_secret_without_orderhook_secret_key_is_refused_saying_how_to_make_one(
    gateway: Gateway, sink: Sink
) -> None:
    async with gateway(subscription(sink, "erp")) as client:
        created = await client.post("/admin/subscriptions", json=spec(sink, "wms"), headers=ADMIN)
        rotated = await client.post("/admin/subscriptions/erp/rotate-secret", headers=ADMIN)
        patched = await client.patch(
            "/admin/subscriptions/erp", json={"secret": NEW_SECRET}, headers=ADMIN
        )
    for r in (created, rotated, patched):
        assert r.status_code == 409
        assert r.json()["error"] == (
            "set ORDERHOOK_SECRET_KEY to store secrets through the API; make one with "
            "`orderhook secret key`"
        )


async def test_every_endpoint_needs_the_admin_token(gateway: Gateway, sink: Sink) -> None:
    calls = [
        ("GET", "/admin/subscriptions"),
        ("POST", "/admin/subscriptions"),
        ("GET", "/admin/subscriptions/erp"),
        ("PATCH", "/admin/subscriptions/erp"),
        ("DELETE", "/admin/subscriptions/erp"),
        ("POST", "/admin/subscriptions/erp/pause"),
        ("POST", "/admin/subscriptions/erp/resume"),
        ("POST", "/admin/subscriptions/erp/rotate-secret"),
        ("GET", "/admin/audit"),
    ]
    async with gateway(subscription(sink, "erp"), **KEY) as client:
        for method, path in calls:
            anonymous = await client.request(method, path, json={})
            ops = await client.request(method, path, json={}, headers=OPS)
            assert anonymous.status_code == 401, (method, path)
            assert ops.status_code == 403 and "read-only" in ops.json()["error"], (method, path)
        for path in ("/admin/subscriptions/nope", "/admin/subscriptions/nope/pause"):
            method = "GET" if path.endswith("nope") else "POST"
            missing = await client.request(method, path, headers=ADMIN)
            assert (
                missing.status_code == 404 and missing.json()["error"] == "no subscription 'nope'"
            )
        assert (await state_of(client, "erp"))["version"] == 1  # nothing was changed


# ── patch ────────────────────────────────────────────────────────────────────────────────────


async def test_the_next_delivery_uses_the_patched_url(gateway: Gateway, sink: Sink) -> None:
    async with gateway("", **KEY) as client:
        await create(client, spec(sink, "wms", timeout=3))
        await hook(client, OrderId="v1-01")
        await sink.wait_for("/wms", 1)
        r = await client.patch(
            "/admin/subscriptions/wms",
            json={"url": sink.url("/moved"), "timeout": None, "max_in_flight": 2},
            headers=ADMIN,
        )
        await hook(client, OrderId="v2-01")
        await sink.wait_for("/moved", 1)
    patched = r.json()
    assert r.status_code == 200 and patched["version"] == 2 and patched["origin"] == "api"
    assert patched["url"] == sink.url("/moved")
    assert (patched["timeout"], patched["max_in_flight"]) == (10.0, 2)  # null: the default
    assert len(sink.at("/wms")) == 1 and len(sink.at("/moved")) == 1


async def test_a_config_subscription_is_patched_and_keeps_its_origin(
    gateway: Gateway, sink: Sink
) -> None:
    async with gateway(subscription(sink, "erp"), **KEY) as client:
        filtered = {"filter": {"type": "FromWorkflow", "status": ["invoiced"]}}
        r = await client.patch("/admin/subscriptions/erp", json=filtered, headers=ADMIN)
        await hook(client, State="ready-for-handling", OrderId="v1-01")
        await hook(client, State="invoiced", OrderId="v2-01")
        got = await sink.wait_for("/erp", 1)
        await asyncio.sleep(0.3)
    assert r.status_code == 200 and (r.json()["origin"], r.json()["version"]) == ("config", 2)
    assert len(sink.at("/erp")) == 1 and orjson.loads(got[0].body)["data"]["orderId"] == "v2-01"


@pytest.mark.parametrize(
    ("patch", "said"),
    [
        ({"mode": "pull"}, "`mode` cannot change: delete the subscription and create it anew"),
        ({"id": "other"}, "`id` cannot change"),
        ({"transform": "$$.("}, "`transform` is not valid JSONata"),
        ({"url": "http://[::1]:8080/x"}, "`url` cannot be delivered to: refused by the SSRF"),
        ({"retry_schedule": [-1]}, "`retry_schedule` must hold seconds from 0 to"),
        ({"flavour": 1}, "unknown field 'flavour'"),
        ({"secret": None}, "a secret cannot be removed"),
    ],
)
async def test_a_patch_is_checked_as_a_new_spec(
    gateway: Gateway, sink: Sink, patch: dict[str, Any], said: str
) -> None:
    async with gateway(subscription(sink, "erp"), **KEY) as client:
        r = await client.patch("/admin/subscriptions/erp", json=patch, headers=ADMIN)
        after = await state_of(client, "erp")
    assert r.status_code == 400 and r.json()["error"].startswith(said), r.json()
    assert after["version"] == 1


async def test_a_patched_secret_signs_the_next_delivery(gateway: Gateway, sink: Sink) -> None:
    async with gateway(subscription(sink, "erp"), **KEY) as client:
        r = await client.patch(
            "/admin/subscriptions/erp", json={"secret": NEW_SECRET, "token": "***"}, headers=ADMIN
        )
        await hook(client)
        got = (await sink.wait_for("/erp", 1))[0]
    assert r.status_code == 200 and r.json()["secret"] == "***"
    Webhook(NEW_SECRET).verify(got.body, got.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(got.body, got.headers)


# ── pause, resume, delete ────────────────────────────────────────────────────────────────────


async def test_paused_events_queue_and_resume_sends_the_backlog(
    gateway: Gateway, sink: Sink
) -> None:
    async with gateway(subscription(sink, "erp"), **KEY) as client:
        paused = await client.post("/admin/subscriptions/erp/pause", headers=ADMIN)
        for n in range(3):
            await hook(client, OrderId=f"v{n}-01")
        queued = await until(
            lambda: client.get("/admin/subscriptions/erp", headers=ADMIN),
            lambda r: r.json()["queued"] == 3,
        )
        await asyncio.sleep(0.5)
        sent_while_paused = len(sink.at("/erp"))
        resumed = await client.post("/admin/subscriptions/erp/resume", headers=ADMIN)
        await sink.wait_for("/erp", 3)
    assert paused.json() == {"id": "erp", "state": "paused"}
    assert queued.json()["state"] == "paused" and sent_while_paused == 0
    assert msgspec.json.decode(resumed.content, type=StateChanged).state == "enabled"


async def test_delete_drops_waiting_and_dead_deliveries(gateway: Gateway, sink: Sink) -> None:
    sink.rule("/wms", fail=lambda body: True)
    async with gateway("", **KEY) as client:
        await create(client, spec(sink, "wms", retry_schedule=[], breaker_threshold=100))
        for n in range(2):
            await hook(client, OrderId=f"v{n}-01")
        await until(
            lambda: client.get("/admin/subscriptions/wms", headers=ADMIN),
            lambda r: r.json()["deadLetters"] == 2,
        )
        await client.post("/admin/subscriptions/wms/pause", headers=ADMIN)
        for n in range(2, 5):
            await hook(client, OrderId=f"v{n}-01")
        await until(
            lambda: client.get("/admin/subscriptions/wms", headers=ADMIN),
            lambda r: r.json()["queued"] == 3,
        )
        deleted = await client.delete("/admin/subscriptions/wms", headers=ADMIN)
        gone = await client.get("/admin/subscriptions/wms", headers=ADMIN)
        again = await client.delete("/admin/subscriptions/wms", headers=ADMIN)
        dlq = (await client.get("/admin/dlq", headers=ADMIN)).json()
        anew = await create(client, spec(sink, "wms"))
    assert msgspec.json.decode(deleted.content, type=Deleted) == Deleted("wms", 5)
    assert gone.status_code == 404 and again.status_code == 404 and dlq["total"] == 0
    assert (anew["version"], anew["queued"], anew["deadLetters"], anew["state"]) == (
        1,
        0,
        0,
        "enabled",
    )


# ── rotate-secret ────────────────────────────────────────────────────────────────────────────


def signatures(received: Any) -> list[str]:
    return str(received.headers["webhook-signature"]).split()


async def test_rotated_secret_signs_beside_the_old_one_until_the_grace_ends(
    gateway: Gateway, sink: Sink
) -> None:
    async with gateway(subscription(sink, "erp", secret=OLD_SECRET), **KEY) as client:
        r = await client.post(
            "/admin/subscriptions/erp/rotate-secret", json={"grace_s": 1}, headers=ADMIN
        )
        rotated = msgspec.json.decode(r.content, type=Rotated)
        await hook(client, OrderId="v1-01")
        within = (await sink.wait_for("/erp", 1))[0]
        await asyncio.sleep(max(0.0, grace_end(rotated) - time.time() + 0.1))
        await hook(client, OrderId="v2-01")
        after = (await sink.wait_for("/erp", 2))[1]
    assert rotated.secret.startswith("whsec_") and rotated.secret != OLD_SECRET
    assert len(signatures(within)) == 2 and all(s.startswith("v1,") for s in signatures(within))
    Webhook(OLD_SECRET).verify(within.body, within.headers)
    Webhook(rotated.secret).verify(within.body, within.headers)
    assert len(signatures(after)) == 1
    Webhook(rotated.secret).verify(after.body, after.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(OLD_SECRET).verify(after.body, after.headers)


def grace_end(rotated: Rotated) -> float:
    return datetime.fromisoformat(rotated.grace_until).timestamp()


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"grace_s": -1}, "expected `float` >= 0.0 - at `$.grace_s`"),
        ({"grace_s": 31 * 86400}, "expected `float` <= 2592000"),
        ({"grace": 5}, "unknown field 'grace'"),
    ],
)
async def test_rotate_refuses_a_grace_out_of_range(
    gateway: Gateway, sink: Sink, body: dict[str, Any], said: str
) -> None:
    async with gateway(subscription(sink, "erp"), **KEY) as client:
        r = await client.post("/admin/subscriptions/erp/rotate-secret", json=body, headers=ADMIN)
    assert r.status_code == 400 and said in r.json()["error"].lower()


async def test_a_pull_subscription_has_no_secret_to_rotate(gateway: Gateway) -> None:
    async with gateway("", **KEY) as client:
        await create(client, {"id": "feed", "mode": "pull", "token": "t0k3n-feed"})
        r = await client.post("/admin/subscriptions/feed/rotate-secret", headers=ADMIN)
    assert r.status_code == 400 and r.json()["error"].startswith("rotate-secret is for push")


# ── audit ────────────────────────────────────────────────────────────────────────────────────


async def test_every_change_is_audited_newest_first_without_a_secret(
    gateway: Gateway, sink: Sink
) -> None:
    async with gateway(subscription(sink, "erp"), **KEY) as client:
        made = (await create(client, spec(sink, "wms")))["secret"]
        await client.patch(
            "/admin/subscriptions/wms", json={"secret": NEW_SECRET, "timeout": 4}, headers=ADMIN
        )
        rotated = await client.post("/admin/subscriptions/wms/rotate-secret", headers=ADMIN)
        await client.post("/admin/subscriptions/wms/pause", headers=ADMIN)
        await client.post("/admin/subscriptions/wms/resume", headers=ADMIN)
        await client.delete("/admin/subscriptions/wms", headers=ADMIN)
        page = await client.get("/admin/audit?limit=4", headers=ADMIN)
        rest = await client.get(f"/admin/audit?offset={page.json()['next']}", headers=ADMIN)
        bad = await client.get("/admin/audit?limit=0", headers=ADMIN)
    first = msgspec.json.decode(page.content, type=AuditPage)
    last = msgspec.json.decode(rest.content, type=AuditPage)
    entries = first.items + last.items
    assert [e.action for e in entries] == [
        "delete",
        "resume",
        "pause",
        "rotate-secret",
        "update",
        "create",
        "create",  # the config file's, at start-up
    ]
    assert [e.by for e in entries][-2:] == ["api", "config"] and last.next is None
    assert all(e.role == "admin" for e in entries[:-1])
    assert entries[4].changes == {
        "timeout": {"from": None, "to": 4.0},  # (from the default)
        "secret": "changed",
    }
    assert entries[3].changes == {"secret": "changed"}
    assert entries[2].changes == {"state": {"from": "enabled", "to": "paused"}}
    text = page.text + rest.text
    for secret in (made, NEW_SECRET, rotated.json()["secret"], SECRET):
        assert secret not in text
    assert bad.status_code == 400


def test_the_view_shows_every_field_of_the_spec_but_secret_variables() -> None:
    """A field added to the spec must be shown too (masked, if it holds a secret)."""
    shown = set(SubscriptionView.__struct_fields__)
    public = set(SubscriptionSpec.__struct_fields__) - set(SECRET_FIELDS)
    assert public <= shown and {"secret", "token"} <= shown


async def test_outbound_headers_and_auth_are_sealed_masked_and_kept_when_shown_back(
    gateway: Gateway, sink: Sink
) -> None:
    outbound = {"headers": {"X-Api-Key": "k3y-value"}, "auth": {"type": "bearer", "token": "t0k"}}
    async with gateway("", **KEY) as client:
        created = await create(client, spec(sink, "erp", **outbound))
        shown = {name: created[name] for name in ("headers", "auth")}
        r = await client.patch(
            "/admin/subscriptions/erp", json=shown | {"timeout": 3}, headers=ADMIN
        )
        await hook(client)
        got = (await sink.wait_for("/erp", 1))[0]
        listed = (await client.get("/admin/subscriptions", headers=ADMIN)).text
    assert shown == {"headers": {"X-Api-Key": "***"}, "auth": {"type": "bearer", "token": "***"}}
    assert r.status_code == 200 and r.json()["version"] == 2
    assert got.headers["X-Api-Key"] == "k3y-value" and got.headers["Authorization"] == "Bearer t0k"
    assert "k3y-value" not in listed and "t0k" not in listed


# ── backfill at creation ─────────────────────────────────────────────────────────────────────


async def test_a_new_subscription_with_backfill_since_gets_the_retained_events_since_then(
    gateway: Gateway, sink: Sink
) -> None:
    """`backfill_since`: the events received before it existed (here routed to another
    subscription) reach it too, as a replay job, with their own webhook-ids."""
    async with gateway(subscription(sink, "erp"), **KEY) as client:
        first = await hook(client, OrderId="bf-1")
        second = await hook(client, OrderId="bf-2")
        await sink.wait_for("/erp", 2)
        body = spec(sink, "late", backfill_since="2000-01-01T00:00:00Z")
        created = await create(client, body)
        job = created["backfill"]["job"]
        got = await sink.wait_for("/late", 2)
        status = (await client.get(f"/admin/jobs/{job}", headers=ADMIN)).json()
        refused = await client.post(
            "/admin/subscriptions",
            json=spec(sink, "never", backfill_since="next tuesday"),
            headers=ADMIN,
        )
        absent = await client.get("/admin/subscriptions/never", headers=ADMIN)
    assert {r.headers["webhook-id"] for r in got} == {first, second}
    assert status["subscription"] == "late" and status["total"] == 2
    assert refused.status_code == 400 and "backfill_since" in refused.json()["error"]
    assert absent.status_code == 404  # a refused backfill makes no subscription


async def test_a_patched_filter_and_transform_are_used_from_the_next_event(
    gateway: Gateway, sink: Sink
) -> None:
    """The filters' and the transforms' worker pools are made again when a subscription's
    expressions change (app/router.py, app/delivery.py): the next event meets the new ones."""
    erp = subscription(
        sink, "erp", filter='{type = "FromOrders", expression = "status = \\"invoiced\\""}'
    )
    async with gateway(erp, **KEY) as client:
        await hook(client, OrderId="pf-1", State="invoiced")
        await sink.wait_for("/erp", 1)
        patch = {
            "filter": {"type": "FromOrders", "expression": 'status = "canceled"'},
            "transform": '{"order": orderId}',
        }
        r = await client.patch("/admin/subscriptions/erp", json=patch, headers=ADMIN)
        assert r.status_code == 200, r.text
        await hook(client, OrderId="pf-2", State="invoiced")  # no longer matches
        await hook(client, OrderId="pf-3", State="canceled")
        got = await sink.wait_for("/erp", 2)
    assert orjson.loads(got[1].body)["data"] == {"order": "pf-3"}
    assert "pf-2" not in {orjson.loads(r.body)["subject"] for r in sink.at("/erp")}

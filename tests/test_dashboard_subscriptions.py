"""The dashboard's subscription pages and forms (app/ops/subscription_routes.py): pause, resume,
rotate the secret (shown once), replay a range, the page's config, version, origin and changes;
against a real Redis and real subscribers."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.sealing import new_key
from app.subscriptions.replay import rfc3339
from tests.relaying import ADMIN, SECRET, Gateway, hook, subscription, until
from tests.subscribers import Sink
from tests.test_ops import SAME_ORIGIN

pytestmark = pytest.mark.anyio

OPS = {"Authorization": "Bearer ops-token"}
KEY = {"ORDERHOOK_SECRET_KEY": new_key()}
AS_ADMIN = {**ADMIN, **SAME_ORIGIN}
AS_OPS = {**OPS, **SAME_ORIGIN}
NEW_SECRET = re.compile(r'<code id="new-secret">(whsec_[^<]+)</code>')
HOSTILE = '"<script>alert(1)</script>"'


async def act(client: httpx.AsyncClient, sub_id: str, action: str, **fields: str) -> httpx.Response:
    return await client.post(f"/ops/subscriptions/{sub_id}/{action}", data=fields, headers=AS_ADMIN)


async def page_of(client: httpx.AsyncClient, sub_id: str, as_: dict[str, str] = ADMIN) -> str:
    r = await client.get(f"/ops/subscriptions/{sub_id}", headers=as_)
    assert r.status_code == 200, r.text
    return r.text


def cell(html: str, cell_id: str) -> str:
    found = re.search(rf'<td id="{cell_id}">(.*?)</td>', html)
    assert found, cell_id
    return found[1]


async def test_pause_queues_events_and_resume_delivers_them(gateway: Gateway, sink: Sink) -> None:
    async with gateway(subscription(sink, "erp")) as client:
        paused = await act(client, "erp", "pause")
        await hook(client)
        await asyncio.sleep(0.5)
        sent_while_paused = len(sink.at("/erp"))
        while_paused = await page_of(client, "erp")
        resumed = await act(client, "erp", "resume")
        got = await sink.wait_for("/erp", 1)
        after = await page_of(client, "erp")
    assert paused.status_code == resumed.status_code == 303
    assert paused.headers["location"] == "/ops/subscriptions/erp"
    assert sent_while_paused == 0 and len(got) == 1
    assert cell(while_paused, "state") == "paused" and cell(while_paused, "queued") == "1"
    assert 'id="resume"' in while_paused and 'id="pause"' not in while_paused
    assert cell(after, "state") == "enabled" and 'id="pause"' in after
    changes = after.split('id="changes"')[1]
    assert changes.index("resume") < changes.index("pause")  # newest first
    assert (
        "dashboard (admin)" in changes
        and "{&quot;from&quot;:&quot;paused&quot;,&quot;to&quot;:&quot;enabled&quot;}" in changes
    )


async def test_rotate_shows_the_new_secret_once_and_the_next_delivery_is_signed_with_it(
    gateway: Gateway, sink: Sink
) -> None:
    async with gateway(subscription(sink, "erp"), **KEY) as client:
        rotated = await act(client, "erp", "rotate-secret", grace_s="0")
        shown_after = await page_of(client, "erp")
        dashboard = (await client.get("/ops", headers=ADMIN)).text
        await hook(client)
        got = (await sink.wait_for("/erp", 1))[0]
    assert rotated.status_code == 200 and "location" not in rotated.headers
    assert "set-cookie" not in rotated.headers and "no-store" in rotated.headers["cache-control"]
    found = NEW_SECRET.search(rotated.text)
    assert found and found[1] != SECRET
    secret = found[1]
    assert secret not in shown_after and secret not in dashboard
    assert cell(shown_after, "version") == "2"
    assert "<th>secret</th><td><code>***</code>" in shown_after
    assert "rotate-secret" in shown_after.split('id="changes"')[1]
    Webhook(secret).verify(got.body, got.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(got.body, got.headers)  # no grace: the old one signs no more


async def test_the_replay_form_starts_a_job_that_delivers_again(
    gateway: Gateway, sink: Sink
) -> None:
    async with gateway(subscription(sink, "erp")) as client:
        await hook(client)
        first = (await sink.wait_for("/erp", 1))[0]
        since = rfc3339(int((time.time() - 600) * 1000))
        started = await act(client, "erp", "replay", since=since)
        job_url = started.headers["location"]
        done = await until(
            lambda: client.get(job_url, headers=OPS),
            lambda r: '<td id="job-state">done</td>' in r.text,
        )
        again = (await sink.wait_for("/erp", 2))[1]
    assert started.status_code == 303 and job_url.startswith("/ops/jobs/")
    assert cell(done.text, "job-total") == "1" and cell(done.text, "job-replayed") == "1"
    assert "<script" not in done.text.split("</head>")[1]  # a done job stops reloading
    assert again.headers["webhook-id"] == first.headers["webhook-id"]


@pytest.mark.parametrize(
    ("action", "fields"),
    [
        ("pause", {}),
        ("resume", {}),
        ("retry-now", {}),
        ("rotate-secret", {"grace_s": "0"}),
        ("replay", {"since": "2020-01-01T00:00:00Z"}),
    ],
)
async def test_the_ops_role_may_not_act(
    gateway: Gateway, sink: Sink, action: str, fields: dict[str, str]
) -> None:
    async with gateway(subscription(sink, "erp"), **KEY) as client:
        r = await client.post(f"/ops/subscriptions/erp/{action}", data=fields, headers=AS_OPS)
        shown = await page_of(client, "erp", OPS)
    assert r.status_code == 403 and r.json()["error"].startswith("this needs the admin token")
    assert cell(shown, "state") == "enabled" and cell(shown, "version") == "1"


async def test_the_ops_role_sees_the_page_without_secrets_or_forms(
    gateway: Gateway, sink: Sink
) -> None:
    async with gateway(subscription(sink, "erp"), **KEY) as client:
        created = await client.post(
            "/admin/subscriptions",
            json={
                "id": "wms",
                "url": sink.url("/wms?token=s3cr3t-query"),
                "headers": {"X-Api-Key": "k3y-v4lue"},
                "auth": {"type": "bearer", "token": "b34r3r-t0k3n"},
            },
            headers=ADMIN,
        )
        shown = await page_of(client, "wms", OPS)
    made = created.json()["secret"]
    assert created.status_code == 201 and made.startswith("whsec_")
    for secret in (made, "s3cr3t-query", "k3y-v4lue", "b34r3r-t0k3n", "/wms"):
        assert secret not in shown
    assert "<form" not in shown.split("</h1>", 1)[1] and "signed in as ops" in shown
    assert cell(shown, "origin") == "api"


async def test_the_page_shows_version_origin_and_changes_all_escaped(
    gateway: Gateway, sink: Sink
) -> None:
    hostile: dict[str, Any] = {"type": "FromOrders", "expression": f"State = {HOSTILE}"}
    async with gateway(subscription(sink, "erp"), **KEY) as client:
        created = await client.post(
            "/admin/subscriptions",
            json={"id": "wms", "url": sink.url("/wms"), "filter": hostile},
            headers=ADMIN,
        )
        patched = await client.patch("/admin/subscriptions/wms", json={"timeout": 3}, headers=ADMIN)
        shown = await page_of(client, "wms")
        config_sub = await page_of(client, "erp")
    assert created.status_code == 201 and patched.status_code == 200, patched.text
    assert (cell(shown, "version"), cell(shown, "origin")) == ("2", "api")
    assert (cell(config_sub, "version"), cell(config_sub, "origin")) == ("1", "config")
    assert "<script>alert" not in shown and "&lt;script&gt;alert(1)&lt;/script&gt;" in shown
    changes = shown.split('id="changes"')[1]
    assert changes.index("update") < changes.index("create") and "api (admin)" in changes
    assert "<b>timeout</b>" in changes


@pytest.mark.parametrize(
    ("action", "fields", "said"),
    [
        ("pause", {"colour": "red"}, "unknown form field 'colour'"),
        ("replay", {}, "the form needs `since`"),
        ("replay", {"since": "yesterday"}, "`since` must be an RFC 3339 date-time"),
        ("rotate-secret", {"grace_s": "-1"}, "`grace_s` must be a number of seconds"),
        ("rotate-secret", {"grace_s": "nan"}, "`grace_s` must be a number of seconds"),
    ],
)
async def test_a_bad_form_is_refused_with_400(
    gateway: Gateway, sink: Sink, action: str, fields: dict[str, str], said: str
) -> None:
    async with gateway(subscription(sink, "erp"), **KEY) as client:
        r = await act(client, "erp", action, **fields)
    assert r.status_code == 400 and r.json()["error"].startswith(said), r.text


async def test_an_unknown_subscription_or_job_is_404_and_a_stranger_signs_in(
    gateway: Gateway, sink: Sink
) -> None:
    async with gateway(subscription(sink, "erp"), **KEY) as client:
        answers = [
            await client.get("/ops/subscriptions/nope", headers=ADMIN),
            await act(client, "nope", "pause"),
            await act(client, "nope", "rotate-secret"),
            await act(client, "nope", "replay", since="2020-01-01T00:00:00Z"),
            await client.get("/ops/jobs/nope", headers=OPS),
        ]
        stranger = await client.get("/ops/subscriptions/erp")
    assert [r.status_code for r in answers] == [404] * len(answers)
    assert all("error" in r.json() for r in answers)
    assert stranger.status_code == 401 and 'id="token"' in stranger.text

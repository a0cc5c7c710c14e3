"""The control plane's edges, as an attacker and an unlucky operator find them: secrets that
must not follow a subscription to another host, a process that cannot open a secret, a token
endpoint slower than the attempt, a rotated secret from the environment, headers no receiver
takes, an id re-created while its deletion is still running, a replay into the future."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from standardwebhooks import Webhook

from app.config import load_settings
from app.errors import BadRequest, ConfigError
from app.sealing import new_key
from app.store.schema import Keys
from app.subscriptions.replay import replay_range
from tests.relaying import ADMIN, OLD_SECRET, SECRET, Gateway, hook, subscription
from tests.subscribers import Sink
from tests.test_outbound import Answer, TokenEndpoint

pytestmark = pytest.mark.anyio

KEY = {"ORDERHOOK_SECRET_KEY": new_key()}


def body(sink: Sink, sub_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": sub_id, "url": sink.url("/" + sub_id), "retry_schedule": [0.05], **fields}


async def test_a_secret_does_not_follow_the_subscription_to_another_host(
    gateway: Gateway, sink: Sink
) -> None:
    """A config subscription's header from the environment, an API one's bearer token: a PATCH
    that sends deliveries elsewhere, or swaps the auth's token URL, must give them anew."""
    with Sink() as elsewhere:
        erp = subscription(sink, "erp", headers='{"X-Api-Key" = {env = "ERP_KEY"}}')
        async with gateway(erp, ERP_KEY="env-secret-value", **KEY) as client:
            auth = {"type": "bearer", "token": "bearer-secret"}
            made = await client.post(
                "/admin/subscriptions", json=body(sink, "wms", auth=auth), headers=ADMIN
            )
            moved = await client.patch(
                "/admin/subscriptions/erp", json={"url": elsewhere.url("/steal")}, headers=ADMIN
            )
            swapped = await client.patch(
                "/admin/subscriptions/wms",
                json={
                    "auth": {
                        "type": "oauth2",
                        "token_url": elsewhere.url("/token"),
                        "client_id": "x",
                        "client_secret": "***",
                    }
                },
                headers=ADMIN,
            )
            given = await client.patch(
                "/admin/subscriptions/erp",
                json={"url": elsewhere.url("/new"), "headers": {"X-Api-Key": "a-new-key"}},
                headers=ADMIN,
            )
            await hook(client)
            await elsewhere.wait_for("/new", 1)
    assert made.status_code == 201, made.text
    assert moved.status_code == 400 and "`headers` must be given again" in moved.json()["error"]
    assert swapped.status_code == 400 and "`auth.client_secret`" in swapped.json()["error"]
    assert given.status_code == 200, given.text
    assert elsewhere.at("/new")[0].headers["X-Api-Key"] == "a-new-key"
    assert not elsewhere.at("/steal") and not elsewhere.at("/token")


async def test_a_token_url_the_ssrf_guard_refuses_is_refused_at_creation(
    gateway: Gateway, sink: Sink
) -> None:
    auth = {
        "type": "oauth2",
        "token_url": "http://169.254.169.254/token",  # the cloud metadata service
        "client_id": "x",
        "client_secret": "s",
    }
    async with gateway("", **KEY) as client:
        r = await client.post(
            "/admin/subscriptions", json=body(sink, "wms", auth=auth), headers=ADMIN
        )
    assert r.status_code == 400 and "`auth.token_url` cannot be reached" in r.json()["error"]


async def test_a_process_that_cannot_open_a_secret_still_routes_the_subscriptions_events(
    gateway: Gateway, sink: Sink, rdb: redis.Redis, keys: Keys
) -> None:
    """Made under one key, read by a process with another: that process queues its events
    (another process, with the key, delivers them); it never acknowledges one without."""
    async with gateway(subscription(sink, "erp"), **KEY) as client:
        auth = {"type": "bearer", "token": "bearer-secret"}
        r = await client.post(
            "/admin/subscriptions", json=body(sink, "wms", auth=auth), headers=ADMIN
        )
        assert r.status_code == 201, r.text
        await client.post("/admin/subscriptions/wms/pause", headers=ADMIN)
    async with gateway(subscription(sink, "erp"), ORDERHOOK_SECRET_KEY=new_key()) as client:
        await hook(client)
        await sink.wait_for("/erp", 1)
        deadline = time.monotonic() + 5
        while not rdb.zcard(keys.pending_age("wms")):
            assert time.monotonic() < deadline, "the event made no delivery for wms"
            await asyncio.sleep(0.05)
    async with gateway(subscription(sink, "erp"), **KEY) as client:
        await client.post("/admin/subscriptions/wms/resume", headers=ADMIN)
        got = await sink.wait_for("/wms", 1)
    assert got[0].headers["Authorization"] == "Bearer bearer-secret"


async def test_a_token_endpoint_slower_than_the_attempt_never_makes_a_duplicate(
    gateway: Gateway, sink: Sink
) -> None:
    with TokenEndpoint(expires_in=3600) as tokens:
        tokens.answers.append(Answer(delay_s=2.5))
        auth = (
            f'{{type = "oauth2", token_url = "{tokens.token_url}", client_id = "erp", '
            'client_secret = "s"}'
        )
        async with gateway(subscription(sink, "erp", auth=auth, timeout=1), **KEY) as client:
            await hook(client)
            await sink.wait_for("/erp", 1, timeout=10)
            await asyncio.sleep(1.5)  # a second attempt would have come by now
    assert len(sink.at("/erp")) == 1


async def test_a_rotated_secret_from_the_environment_with_two_values_keeps_signing(
    gateway: Gateway, sink: Sink
) -> None:
    """`secret_env` may hold several secrets (space-separated); after a rotation each of them
    signs until the grace ends, beside the new one."""
    toml = subscription(sink, "erp").replace(f'secret = "{SECRET}"', 'secret_env = "ERP_SECRETS"')
    async with gateway(toml, ERP_SECRETS=f"{SECRET} {OLD_SECRET}", **KEY) as client:
        r = await client.post(
            "/admin/subscriptions/erp/rotate-secret", json={"grace_s": 3600}, headers=ADMIN
        )
        await hook(client)
        got = (await sink.wait_for("/erp", 1))[0]
    assert r.status_code == 200, r.text
    assert len(got.headers["webhook-signature"].split()) == 3
    for secret in (SECRET, OLD_SECRET, r.json()["secret"]):
        Webhook(secret).verify(got.body, got.headers)


@pytest.mark.parametrize(
    ("headers", "said"),
    [
        ('{"X Api" = "v"}', "a name is letters"),
        ('{"X-Ünï" = "v"}', "a name is letters"),
        ('{"X-A:" = "v"}', "a name is letters"),
        ('{"X-A" = "ünï"}', "a value is printable ASCII"),
        ('{"Host" = "internal.admin"}', "is the gateway's (or HTTP's) own"),
        ('{"Transfer-Encoding" = "chunked"}', "is the gateway's (or HTTP's) own"),
        ('{"webhook-signature" = "v1,forged"}', "is the gateway's (or HTTP's) own"),
    ],
)
def test_headers_no_receiver_takes_are_refused(tmp_path: Path, headers: str, said: str) -> None:
    path = tmp_path / "orderhook.toml"
    path.write_text(
        f'[[subscriptions]]\nid = "erp"\nurl = "https://erp.example/hook"\n'
        f'secret = "{SECRET}"\nheaders = {headers}\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(path, {})
    assert "`subscriptions[0].headers`" in str(raised.value) and said in str(raised.value)


async def test_an_id_still_being_dropped_cannot_be_made_again_until_it_is_gone(
    gateway: Gateway, sink: Sink, rdb: redis.Redis, keys: Keys
) -> None:
    async with gateway("", **KEY) as client:
        rdb.sadd(keys.subscriptions_dropping, "erp")  # a delete still removing what it had
        refused = await client.post("/admin/subscriptions", json=body(sink, "erp"), headers=ADMIN)
    async with gateway("", **KEY) as client:  # a start finishes a delete cut short
        made = await client.post("/admin/subscriptions", json=body(sink, "erp"), headers=ADMIN)
    assert refused.status_code == 409 and "still being removed" in refused.json()["error"]
    assert made.status_code == 201, made.text


def test_a_replay_range_never_reaches_past_now() -> None:
    """Events received while the job runs were delivered already: not replayed again."""
    now = 1_800_000_000_000
    wanted = replay_range("2027-01-15T07:00:00Z", "2099-01-01T00:00:00Z", now, 86400)
    assert wanted.until_ms == now
    with pytest.raises(BadRequest):
        replay_range("2099-01-01T00:00:00Z", None, now, 86400)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("breaker_cooldown_max = 1e308", "breaker_cooldown_max"),
        ("disable_after = 1e308", "disable_after"),
        ("retry_schedule = [1e308]", "retry_schedule"),
        ("timeout = 1e308", "timeout"),
        ("max_in_flight = 1000000000", "max_in_flight"),
        ("max_per_second = 1e308", "max_per_second"),
        ("breaker_threshold = 9223372036854775807", "breaker_threshold"),
    ],
)
def test_a_number_past_its_bound_is_refused_naming_it(
    tmp_path: Path, line: str, field: str
) -> None:
    """1e308 s passed every `> 0` check and overflowed a time in ms (an infinite cooldown)."""
    path = tmp_path / "orderhook.toml"
    path.write_text(
        f'[[subscriptions]]\nid = "erp"\nurl = "https://erp.example/hook"\n'
        f'secret = "{SECRET}"\n{line}\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(path, {})
    assert f"`subscriptions[0].{field}` must " in str(raised.value)

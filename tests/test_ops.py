"""Stats, metrics, the delivery log, access rules and the dashboard's HTML."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from app import logs
from app.ops.when import moment
from app.redaction import origin
from app.store.schema import Keys
from tests.conftest import Gateway as LiveGateway
from tests.conftest import free_port, gateway_config, notification
from tests.relaying import ADMIN, Gateway, hook, subscription, until
from tests.subscribers import Reply, Sink

pytestmark = pytest.mark.anyio

OPS = {"Authorization": "Bearer ops-token"}
ROOT = Path(__file__).resolve().parent.parent


async def flow(client: httpx.AsyncClient, sink: Sink) -> tuple[str, str]:
    """One event delivered to both; one dead-lettered at `down` after 3 attempts of 500."""
    sink.script("/down", Reply(200), Reply(500), Reply(500), Reply(500))
    first = await hook(client, State="handling")
    await hook(client, State="handling")  # a duplicate
    r = await client.post("/hooks/vtex", json=notification(), headers={"X-Orderhook-Token": "x"})
    assert r.status_code == 401
    second = await hook(client, State="invoiced")
    await until(
        lambda: client.get("/ops/stats", headers=OPS),
        lambda r: r.json()["subscriptions"][1]["deadLetters"] == 1,
    )
    await sink.wait_for("/up", 2)
    return first, second


async def test_stats_move_as_events_flow(gateway: Gateway, sink: Sink) -> None:
    subs = subscription(sink, "up") + subscription(sink, "down")
    async with gateway(subs) as client:
        await flow(client, sink)
        stats = (await client.get("/ops/stats", headers=OPS)).json()
    assert stats["ingest"] == {
        "received": 4,
        "accepted": 2,
        "duplicates": 1,
        "rejected": {"unauthorized": 1},
    }
    up, down = stats["subscriptions"]
    assert (up["delivered"], up["retried"], up["deadLettered"], up["queued"]) == (2, 0, 0, 0)
    assert (down["delivered"], down["retried"], down["deadLettered"]) == (1, 2, 1)
    assert down["lastError"] == "HTTP 500"
    assert up["latency"]["count"] == 2 and up["latency"]["p50Ms"] is not None
    assert up["oldestUndeliveredAgeS"] is None
    assert sum(count for _, count in stats["ingestPerMinute"]) == 2


async def test_metrics_in_prometheus_format(gateway: Gateway, sink: Sink) -> None:
    subs = subscription(sink, "up") + subscription(sink, "down")
    async with gateway(subs) as client:
        await flow(client, sink)
        text = (await client.get("/metrics", headers=OPS)).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert (
        samples[("orderhook_ingest_events_total", (("outcome", "accepted"), ("reason", "")))] == 2
    )
    assert (
        samples[
            ("orderhook_ingest_events_total", (("outcome", "rejected"), ("reason", "unauthorized")))
        ]
        == 1
    )
    key = ("orderhook_deliveries_total", (("outcome", "dead_lettered"), ("subscription", "down")))
    assert samples[key] == 1
    assert samples[("orderhook_dead_letters", (("subscription", "down"),))] == 1
    assert samples[("orderhook_subscription_enabled", (("subscription", "up"),))] == 1


async def test_delivery_log_shows_each_attempt(gateway: Gateway, sink: Sink) -> None:
    subs = subscription(sink, "up") + subscription(sink, "down")
    async with gateway(subs) as client:
        _, second = await flow(client, sink)
        log = (await client.get(f"/admin/events/{second}", headers=ADMIN)).json()
        found = (await client.get("/admin/events?orderId=v52277740atmc-01", headers=ADMIN)).json()
        missing = await client.get("/admin/events/nope", headers=ADMIN)
    assert log["event"]["state"] == "invoiced"
    assert [a["status"] for a in log["attempts"]["down"]] == [500, 500, 500]
    assert [a["outcome"] for a in log["attempts"]["down"]] == ["retry", "retry", "dead"]
    assert [a["attempt"] for a in log["attempts"]["down"]] == [1, 2, 3]
    assert [a["status"] for a in log["attempts"]["up"]] == [200]
    assert log["attempts"]["up"][0]["response"] == "ok"
    assert [e["state"] for e in found["events"]] == ["handling", "invoiced"]
    assert missing.status_code == 404


async def test_ops_token_reads_but_cannot_administer(gateway: Gateway, sink: Sink) -> None:
    async with gateway(subscription(sink, "up")) as client:
        assert (await client.get("/ops/stats", headers=OPS)).status_code == 200
        assert (await client.get("/metrics", headers=OPS)).status_code == 200
        assert (await client.get("/ops", headers=OPS)).status_code == 200
        r = await client.get("/admin/subscriptions", headers=OPS)
        assert r.status_code == 403 and "read-only" in r.json()["error"]
        assert (await client.post("/ops/replay", headers=OPS)).status_code == 403
        assert (await client.get("/ops/stats")).status_code == 401
        assert (
            await client.get("/metrics", headers={"Authorization": "Bearer x"})
        ).status_code == 401
        page = await client.get("/ops")
        assert page.status_code == 401 and 'name="token"' in page.text  # the login form


async def test_login_form_sets_a_session_cookie(gateway: Gateway, sink: Sink) -> None:
    async with gateway(subscription(sink, "up")) as client:
        bad = await client.post("/ops/login", data={"token": "wrong"})
        assert bad.status_code == 401 and "not valid" in bad.text
        r = await client.post("/ops/login", data={"token": "admin-token"})
        assert r.status_code == 303
        assert "httponly" in r.headers["set-cookie"].lower()
        page = await client.get("/ops")
        assert page.status_code == 200 and "signed in as admin" in page.text


async def test_script_in_an_order_id_is_shown_as_text(gateway: Gateway, sink: Sink) -> None:
    evil = "<script>alert(1)"  # no "/": ingest refuses it in an order id
    async with gateway(subscription(sink, "up")) as client:
        await hook(client, OrderId=evil)
        await sink.wait_for("/up", 1)
        await until(
            lambda: client.get("/ops/stats", headers=OPS),
            lambda r: r.json()["subscriptions"][0]["delivered"] == 1,
        )
        page = (await client.get("/ops", headers=ADMIN)).text
        search = (await client.get("/ops", params={"orderId": evil}, headers=ADMIN)).text
    assert "&lt;script&gt;alert(1)" in page
    assert evil not in page and evil not in search
    assert "&lt;script&gt;" in search


async def test_credentials_in_a_subscriber_url_are_never_shown(
    gateway: Gateway, sink: Sink
) -> None:
    toml = subscription(sink, "up").replace(
        "http://127.0.0.1:", "http://erp-user:pw-s3cret@127.0.0.1:"
    )
    toml = toml.replace('/up"', '/up?token=tok-s3cret&v=2"')
    async with gateway(toml) as client:
        await hook(client)
        received = await sink.wait_for("/up", 1)
        pages = [
            (await client.get(path, headers=ADMIN)).text
            for path in ("/admin/subscriptions", "/ops/stats", "/metrics", "/ops")
        ]
    assert received[0].headers["Authorization"].startswith("Basic ")  # the URL still works
    assert "http://***@127.0.0.1:" in pages[0] and "/up?token=***&v=***" in pages[0]
    for page in pages:
        assert "s3cret" not in page and "erp-user" not in page


def secret_url(base: str, n: int) -> str:
    """`base` (http://127.0.0.1:PORT/id) with a credential in each part: user info, path, query."""
    scheme, rest = base.split("://")
    return f"{scheme}://erp-user:pw-hush-{n}@{rest}/PATH-hush-{n}?token=q-hush-{n}&v=2"


def redis_dump(rdb: redis.Redis, keys: Keys) -> str:
    """Every key of this test's prefix and everything in it, as text to search."""
    read: dict[bytes, Callable[[bytes], Any]] = {
        b"string": rdb.get,
        b"hash": rdb.hgetall,
        b"list": lambda key: rdb.lrange(key, 0, -1),
        b"set": rdb.smembers,
        b"zset": lambda key: rdb.zrange(key, 0, -1, withscores=True),
        b"stream": rdb.xrange,
    }
    dump = [repr((key, read[rdb.type(key)](key))) for key in rdb.scan_iter(match=keys.pattern)]
    assert len(dump) > 10  # the events, deliveries, dead letters, the delivery log ...
    return "\n".join(dump)


async def test_subscriber_url_secrets_never_shown_to_ops_nor_in_errors(
    gateway: Gateway,
    sink: Sink,
    rdb: redis.Redis,
    keys: Keys,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Item 10: the ops role saw a token in a URL's path; errors (a redirect's Location, an
    aiohttp error quoting the URL) put the URL whole in lastError, the logs and Redis."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(logs.outcomes, "stream", io.StringIO())  # the outcome lines
    monkeypatch.setattr(logs.outcomes, "binary", None)
    up, moved = secret_url(sink.url("/up"), 1), secret_url(sink.url("/moved"), 2)
    down = secret_url(f"http://127.0.0.1:{free_port()}/down", 3)  # nobody listens: refused
    sink.script("/moved/PATH-hush-2", *[Reply(302, headers={"Location": moved})] * 3)
    toml = "".join(
        subscription(sink, name).replace(f'url = "{sink.url("/" + name)}"', f'url = "{url}"')
        for name, url in (("up", up), ("down", down), ("moved", moved))
    )
    async with gateway(toml) as client:
        event_id = await hook(client)
        await sink.wait_for("/up/PATH-hush-1", 1)
        await until(
            lambda: client.get("/admin/dlq", headers=ADMIN), lambda r: r.json()["total"] == 2
        )
        seen = {
            path: (await client.get(path, headers=OPS)).text
            for path in ("/ops/stats", "/metrics", "/ops")
        }
        seen |= {
            f"admin {path}": (await client.get(path, headers=ADMIN)).text
            for path in ("/admin/dlq", f"/admin/events/{event_id}", "/ops")
        }
        shown = (await client.get("/admin/subscriptions", headers=ADMIN)).json()["subscriptions"]
    stats = orjson.loads(seen["/ops/stats"])["subscriptions"]
    assert [s["url"] for s in stats] == [origin(up), origin(down), origin(moved)]
    assert shown[0]["url"] == origin(up).replace("//", "//***@") + "/up/PATH-hush-1?token=***&v=***"
    dead = {
        i["subscription"]: i["lastError"] for i in orjson.loads(seen["admin /admin/dlq"])["items"]
    }
    assert dead["down"].startswith("ClientConnectorError: Cannot connect to host 127.0.0.1:")
    assert dead["moved"] == f"HTTP 302 redirect to {origin(moved)}, not followed"
    seen["logs"] = logs.outcomes.stream.getvalue() + caplog.text
    seen["redis"] = redis_dump(rdb, keys)
    for where, text in seen.items():
        assert "hush" not in text and "erp-user" not in text, where


SAME_ORIGIN = {"Origin": "http://gw"}  # the in-process client's base URL


def at(client: httpx.AsyncClient, address: str) -> httpx.AsyncClient:
    """Another client of the same in-process gateway, connecting from `address`."""
    app = client._transport.app  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=app, client=(address, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://gw")


async def sign_in(client: httpx.AsyncClient, token: str = "admin-token") -> str:
    r = await client.post("/ops/login", data={"token": token}, headers=SAME_ORIGIN)
    assert r.status_code == 303, r.text
    return r.cookies["orderhook_session"]


async def test_dashboard_cookie_is_a_session_not_the_token(
    gateway: Gateway, sink: Sink, rdb: redis.Redis, keys: Keys
) -> None:
    """The cookie was the admin token itself. Now it is a random session id; Redis keeps only
    its digest; it opens the dashboard and nothing else."""
    async with gateway(subscription(sink, "up")) as client:
        r = await client.post("/ops/login", data={"token": "admin-token"}, headers=SAME_ORIGIN)
        session = r.cookies["orderhook_session"]
        page = await client.get("/ops")
        api = [(await client.get(path)).status_code for path in ("/ops/stats", "/admin/dlq")]
    cookie = r.headers["set-cookie"]
    assert "admin-token" not in cookie and session != "admin-token" and len(session) >= 43
    assert {"httponly", "samesite=strict", "path=/ops"} <= set(cookie.lower().split("; "))
    assert page.status_code == 200 and "signed in as admin" in page.text
    assert api == [401, 401]  # the JSON endpoints take the bearer token only
    stored = {key: rdb.get(key) for key in rdb.scan_iter(match=keys.pattern) if b":session:" in key}
    assert len(stored) == 1
    assert all(session.encode() not in key + (value or b"") for key, value in stored.items())
    assert all(b"admin-token" not in (value or b"") for value in stored.values())


async def test_signed_out_or_expired_session_is_refused(gateway: Gateway, sink: Sink) -> None:
    expiring = subscription(sink, "up") + "\n[ops]\nsession_max_age_s = 1\n"
    async with gateway(expiring) as client:
        signed_out = await sign_in(client)
        r = await client.post("/ops/logout", headers=SAME_ORIGIN)
        assert r.status_code == 303 and 'orderhook_session=""' in r.headers["set-cookie"]
        expired = await sign_in(client)
        await asyncio.sleep(1.2)
        for session in (signed_out, expired):  # as a browser that kept the cookie sends it
            client.cookies.clear()
            page = await client.get("/ops", headers={"Cookie": f"orderhook_session={session}"})
            assert page.status_code == 401 and 'name="token"' in page.text, session
        fresh = await sign_in(client)
        client.cookies.clear()
        page = await client.get("/ops", headers={"Cookie": f"orderhook_session={fresh}"})
        assert page.status_code == 200


async def test_cross_origin_post_is_refused(gateway: Gateway, sink: Sink) -> None:
    async with gateway(subscription(sink, "up")) as client:
        await sign_in(client)
        cases = {
            "http://evil.example": {"Origin": "http://evil.example"},
            "null origin": {"Origin": "null"},
            "other port": {"Origin": "http://gw:8080"},
            "evil referer": {"Referer": "http://evil.example/ops"},
            "no origin, signed in": {},
        }
        for case, headers in cases.items():
            r = await client.post("/ops/replay", data={"subscription": "up"}, headers=headers)
            assert r.status_code == 403, case
            assert "origin" in r.json()["error"].lower(), case
        r = await client.post("/ops/logout", headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        assert (await client.get("/ops")).status_code == 200  # still signed in
        bearer = {**ADMIN, "Origin": "http://evil.example"}
        r = await client.post("/admin/dlq/replay", json={"subscription": "up"}, headers=bearer)
        assert r.status_code == 403
        for headers in (SAME_ORIGIN, {"Referer": "http://gw/ops?orderId=x"}):
            r = await client.post("/ops/replay", data={"subscription": "up"}, headers=headers)
            assert r.status_code == 303, headers
        client.cookies.clear()
        r = await client.post("/admin/dlq/replay", json={"subscription": "up"}, headers=ADMIN)
        assert r.status_code == 200  # a script with its bearer token sends no Origin


async def test_dashboard_and_api_answers_carry_security_headers(
    gateway: Gateway, sink: Sink
) -> None:
    async with gateway(subscription(sink, "up")) as client:
        answers = [
            await client.get("/ops"),
            await client.get("/ops", headers=ADMIN),
            await client.get("/ops/stats", headers=OPS),
            await client.post("/ops/login", data={"token": "x"}, headers=SAME_ORIGIN),
            await client.get("/healthz"),
        ]
    for r in answers:
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, r.request.url
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        script_src = csp.split("script-src ")[1].split(";")[0]  # the refresh script, by its hash
        assert script_src.startswith("'sha256-") and " " not in script_src
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
    assert "style-src 'sha256-" in answers[1].headers["content-security-policy"]
    assert 'style="' not in answers[0].text + answers[1].text  # the CSP allows no style attribute


async def test_ten_failed_sign_ins_then_429(gateway: Gateway, sink: Sink) -> None:
    """Failed sign-ins were not throttled. Now the 11th failure from one address in 10 minutes
    is a 429 with Retry-After, whatever it presents; other addresses and open sessions go on."""
    async with gateway(subscription(sink, "up")) as client:
        session = await sign_in(client)
        client.cookies.clear()
        failed = [
            (await client.post("/ops/login", data={"token": f"guess-{i}"}, headers=SAME_ORIGIN))
            for i in range(10)
        ]
        assert [r.status_code for r in failed] == [401] * 10
        for r in (
            await client.post("/ops/login", data={"token": "guess"}, headers=SAME_ORIGIN),
            await client.post("/ops/login", data={"token": "admin-token"}, headers=SAME_ORIGIN),
            await client.get("/ops/stats", headers=OPS),
        ):
            assert r.status_code == 429
            assert 0 < int(r.headers["retry-after"]) <= 600
            assert "too many failed sign-ins" in r.json()["error"]
        page = await client.get("/ops", headers={"Cookie": f"orderhook_session={session}"})
        assert page.status_code == 200  # a session opened before goes on
        async with at(client, "192.0.2.7") as other:
            assert (await other.get("/ops/stats", headers=OPS)).status_code == 200


async def test_failed_sign_ins_from_every_address_count_toward_a_total(
    gateway: Gateway, sink: Sink
) -> None:
    limits = "\n[ops]\nsign_in_failures_per_client = 3\nsign_in_failures_total = 7\n"
    async with gateway(subscription(sink, "up") + limits) as client:
        statuses = []
        for i in range(8):
            async with at(client, f"192.0.2.{i // 3 + 1}") as guesser:
                r = await guesser.get("/ops/stats", headers={"Authorization": f"Bearer g{i}"})
                statuses.append(r.status_code)
        async with at(client, "198.51.100.1") as newcomer:
            r = await newcomer.get("/ops/stats", headers=OPS)
    assert statuses == [401] * 7 + [429]
    assert r.status_code == 429 and "paused" in r.json()["error"]


def test_cookie_is_secure_behind_flys_tls_proxy(redis_url: str, keys: Keys, tmp_path: Path) -> None:
    """On Fly the TLS proxy's X-Forwarded-Proto was not trusted (uvicorn trusts 127.0.0.1
    only), so the session cookie went without `Secure`. fly.toml now trusts its proxy; the
    client address a trusted proxy names is also the one failed sign-ins are counted for."""
    fly_env = tomllib.loads((ROOT / "fly.toml").read_text())["env"]
    env = {
        **os.environ,
        **fly_env,
        "REDIS_URL": redis_url,
        "ORDERHOOK_ADMIN_TOKEN": "admin-token",
    }
    process = LiveGateway(gateway_config(tmp_path, keys.prefix), env, tmp_path / "gw.log")
    process.start()
    proxy = httpx.HTTPTransport(local_address="127.0.0.2")  # not loopback's default trust
    try:
        with httpx.Client(transport=proxy, base_url=process.url) as http:

            def login(token: str, client_ip: str) -> httpx.Response:
                headers = {
                    "X-Forwarded-Proto": "https",
                    "X-Forwarded-For": client_ip,
                    "Origin": "https://" + process.url.removeprefix("http://"),
                }
                return http.post("/ops/login", data={"token": token}, headers=headers)

            r = login("admin-token", "203.0.113.9")
            assert r.status_code == 303
            assert "secure" in r.headers["set-cookie"].lower().split("; ")
            assert [login("x", "203.0.113.9").status_code for _ in range(11)][-2:] == [401, 429]
            assert login("x", "203.0.113.10").status_code == 401  # another client
    finally:
        process.stop()


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (1_764_758_829.9, "2025-12-03 10:47:09 UTC (in 10 min)"),  # 599.9 s ahead
        (1_764_758_230.5, "2025-12-03 10:37:10 UTC (now)"),
        (1_764_758_200.0, "2025-12-03 10:36:40 UTC (30 s ago)"),
        (1_764_758_230.0 - 7200, "2025-12-03 08:37:10 UTC (2 h ago)"),
        (1_764_758_230.0 + 3 * 86400, "2025-12-06 10:37:10 UTC (in 3 d)"),
    ],
)
def test_moments_read_as_utc_time_and_from_now(at: float, expected: str) -> None:
    assert moment(at, now=1_764_758_230.0) == expected

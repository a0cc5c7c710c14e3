"""Alerts end to end: real gateways (two processes, or in-process), a real Redis, real loopback
Slack-format and CloudEvents receivers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
import redis
from cloudevents.v1.http import from_http
from standardwebhooks import Webhook

from app.alerts.unavailable import HostLock, Reachability, Unavailable, host_lock_path
from app.config import load_settings
from app.store.embedded import redis_executable
from app.store.schema import Keys
from tests.conftest import (
    AUTH,
    CONFIG_TOML,
    WILDCARD_HEADER,
    WILDCARD_TOKEN,
    Gateway,
    free_port,
    notification,
)
from tests.relaying import SECRET, hook
from tests.relaying import Gateway as InProcess
from tests.subscribers import Reply, Sink
from tests.test_check import wait_for_line

pytestmark = pytest.mark.anyio

ADMIN = {"Authorization": "Bearer admin-token"}
OPS = {"Authorization": "Bearer ops-token"}
WILDCARD = {WILDCARD_HEADER: WILDCARD_TOKEN}  # any account but mystore's: it stays silent


def alert_target(sink: Sink, path: str, **options: Any) -> str:
    lines = ["[[alerts]]", f'id = "{path.strip("/")}"', f'url = "{sink.url(path)}"']
    lines += [f"{key} = {orjson.dumps(value).decode()}" for key, value in options.items()]
    return "\n" + "\n".join(lines) + "\n"


def texts(sink: Sink, path: str) -> list[str]:
    return [str(orjson.loads(r.body)["text"]) for r in sink.at(path)]


# ── the Done-when: one outage, two gateways, one alert and one resolved ────────────────────


@pytest.fixture
def pair(redis_url: str, keys: Keys, tmp_path: Path) -> Iterator[tuple[Gateway, Gateway, Sink]]:
    """Two `serve` processes on one Redis: a subscriber /erp and an alert target /slack, one
    sink; every condition evaluated every 0.2 s by each."""
    with Sink() as sink:
        config = tmp_path / "orderhook.toml"
        config.write_text(
            CONFIG_TOML.replace("{prefix}", keys.prefix)
            + f"""
[[subscriptions]]
id = "erp"
url = "{sink.url("/erp")}"
secret = "{SECRET}"
retry_schedule = [0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]
breaker_threshold = 5
breaker_cooldown = 0.5
breaker_cooldown_max = 1
timeout = 2
"""
            + alert_target(
                sink,
                "/slack",
                events=["subscription.breaker_open", "subscription.disabled"],
            )
            + '\n[ops]\nalert_check_s = 0.2\npublic_url = "https://gw.example.com/"\n'
        )
        env = {**os.environ, "REDIS_URL": redis_url, "ORDERHOOK_ADMIN_TOKEN": "admin-token"}
        a = Gateway(config, env, tmp_path / "a.log").start()
        try:
            b = Gateway(config, env, tmp_path / "b.log").start()
            try:
                yield a, b, sink
            finally:
                b.stop()
        finally:
            a.stop()


def test_an_outage_during_a_burst_gives_one_alert_and_one_resolved_across_two_gateways(
    pair: tuple[Gateway, Gateway, Sink],
) -> None:
    a, b, sink = pair
    down = threading.Event()
    down.set()
    sink.rule("/erp", fail=lambda body: down.is_set())
    with httpx.Client(timeout=5) as client:
        for n in range(300):  # the burst, half to each gateway
            gateway = (a, b)[n % 2]
            r = client.post(
                gateway.url + "/hooks/vtex", json=notification(OrderId=f"v{n}-01"), headers=AUTH
            )
            assert r.status_code == 200, r.text
    sink.wait_for_sync(lambda: len(sink.at("/slack")) >= 1, 15, "the breaker_open alert")
    time.sleep(2)  # the breaker probes, fails, opens again: the same condition, no new alert
    assert len(sink.at("/slack")) == 1
    assert len(sink.at("/erp")) > 5
    down.clear()  # the subscriber is back
    sink.wait_for_sync(lambda: len(sink.at("/slack")) >= 2, 15, "the resolved alert")
    time.sleep(1.5)  # several more evaluations by each gateway: nothing more
    firing, resolved = texts(sink, "/slack")
    assert "circuit breaker open for subscription `erp`" in firing
    assert "https://gw.example.com/ops/subscriptions/erp" in firing
    assert "consecutive failures" in firing and "HTTP 500" in firing
    assert "What to do:" in firing and "the breaker closes by itself" in firing
    assert resolved.startswith(":white_check_mark: *Resolved:* circuit breaker open")
    assert len(sink.at("/slack")) == 2
    print("\n--- firing ---\n" + firing + "\n--- resolved ---\n" + resolved)


# ── a target that is down or hangs: retried, never in the hooks' way ────────────────────────


async def test_a_target_down_gets_the_alert_later_while_hooks_answer_fast(
    gateway: InProcess, rdb: redis.Redis, keys: Keys
) -> None:
    with Sink() as sink:
        sink.script("/slack", Reply(hang=True), Reply(status=500))
        config = alert_target(sink, "/slack", events=["ingest.silent"], silent_s=1)
        async with gateway(config + "\n[ops]\nalert_check_s = 0.2\n") as client:
            await sink.wait_for("/slack", 1, timeout=10)  # the first attempt: it hangs
            slowest = 0.0
            for n in range(20):
                started = time.monotonic()
                other = notification(OrderId=f"v{n}-01", Origin={"Account": "other", "Key": "k"})
                r = await client.post("/hooks/vtex", json=other, headers=WILDCARD)
                assert r.status_code == 200, r.text
                slowest = max(slowest, time.monotonic() - started)
            assert slowest < 1  # the target's timeout is 10 s: nothing waits on it
            got = await sink.wait_for("/slack", 3, timeout=40)  # after the timeout, a 500, then
            assert [r.status for r in got] == [200, 500, 200]  # (a hang is recorded as 200)
            assert "no notification from VTEX account `mystore`" in texts(sink, "/slack")[2]
            stats = {k.decode(): int(v) for k, v in rdb.hgetall(keys.stats).items()}
            assert (stats["slack:alerts_sent"], stats["slack:alerts_failed"]) == (1, 2)
            scraped = (await client.get("/metrics", headers=OPS)).text
            assert 'orderhook_alerts_total{outcome="sent",target="slack"} 1.0' in scraped
            assert 'orderhook_alerts_total{outcome="failed",target="slack"} 2.0' in scraped
            # ingest.silent resolves on the account's next accepted notification
            await hook(client, OrderId="v99-01")
            await sink.wait_for("/slack", 4, timeout=5)
            assert texts(sink, "/slack")[3].startswith(":white_check_mark: *Resolved:* no notif")
            assert rdb.xlen(keys.alerts_outbox) == 0  # each sent entry acked and deleted


async def test_a_cloudevents_target_gets_a_signed_cloudevent(gateway: InProcess) -> None:
    with Sink() as sink:
        config = alert_target(
            sink, "/ce", format="cloudevents", secret=SECRET, events=["ingest.silent"], silent_s=1
        )
        async with gateway(config + '\n[ops]\nalert_check_s = 0.2\npublic_url = "https://gw.x"\n'):
            [received] = await sink.wait_for("/ce", 1, timeout=10)
    payload = Webhook(SECRET).verify(received.body, received.headers)
    assert payload["type"] == "orderhook.alert.ingest.silent"
    event = from_http(received.headers, received.body)
    assert event["type"] == "orderhook.alert.ingest.silent"
    assert event["source"] == "https://gw.x" and event["subject"] == "mystore"
    data = event.data
    assert (data["event"], data["status"], data["subject"]) == (
        "ingest.silent",
        "firing",
        "mystore",
    )
    assert data["link"] == "https://gw.x/ops" and data["details"]["silentS"] >= 1


# ── /admin/alerts and the dashboard ───────────────────────────────────────────────────────────


async def test_admin_alerts_lists_active_and_resolved_and_the_dashboard_shows_them(
    gateway: InProcess, rdb: redis.Redis, keys: Keys
) -> None:
    with Sink() as sink:
        secret_url_part = "/T000/B000/XXXXsecret"
        config = alert_target(sink, secret_url_part, events=["ingest.silent"], silent_s=1)
        config = config.replace('id = "T000/B000/XXXXsecret"', 'id = "ops-slack"')
        async with gateway(config + "\n[ops]\nalert_check_s = 0.2\n") as client:
            assert (await client.get("/admin/alerts")).status_code == 401
            bad = await client.get("/admin/alerts", headers={"Authorization": "Bearer nope"})
            assert bad.status_code == 401 and "error" in bad.json()
            await sink.wait_for(secret_url_part, 1, timeout=10)
            listed = (await client.get("/admin/alerts", headers=OPS)).json()
            [active] = listed["active"]
            assert set(active) == {"event", "subject", "target", "since", "lastSent", "details"}
            assert (active["event"], active["subject"], active["target"]) == (
                "ingest.silent",
                "mystore",
                "ops-slack",
            )
            assert active["since"].endswith("Z") and listed["resolved"] == []
            page = (await client.get("/ops", headers=OPS)).text
            assert 'id="alerts"' in page and "ingest.silent" in page and "mystore" in page
            assert "XXXXsecret" not in page and "XXXXsecret" not in str(listed)
            await hook(client)
            await sink.wait_for(secret_url_part, 2, timeout=5)
            listed = (await client.get("/admin/alerts", headers=ADMIN)).json()
            assert listed["active"] == [] and listed["resolved"][0]["resolved"].endswith("Z")
            assert 'id="alerts"' not in (await client.get("/ops", headers=OPS)).text


# ── store.unavailable, from memory ────────────────────────────────────────────────────────────


async def test_store_unavailable_is_sent_from_memory_and_resolved_when_redis_answers(
    tmp_path: Path,
) -> None:
    with Sink() as sink:
        config = tmp_path / "o.toml"
        config.write_text(
            'allow_networks = ["127.0.0.0/8"]\n' + alert_target(sink, "/slack") + "\n"
        )
        settings = load_settings(config, {})
        reachability = Reachability()
        async with aiohttp.ClientSession() as session:
            watch = Unavailable(reachability, settings.alerts, session, 0.5, None)
            stopping = asyncio.Event()
            task = asyncio.create_task(watch.run(stopping))
            reachability.failed("redis is unreachable: connection refused")
            await asyncio.sleep(0.3)
            reachability.failed("redis is unreachable: connection refused")
            firing = await sink.wait_for("/slack", 1, timeout=5)
            reachability.answered()
            await sink.wait_for("/slack", 2, timeout=5)
            stopping.set()
            await task
    assert len(firing) == 1
    first, second = texts(sink, "/slack")
    assert "Redis unreachable from" in first and "connection refused" in first
    assert first.startswith(":rotating_light:") and second.startswith(":white_check_mark:")


def own_redis() -> list[str]:
    """The command of a Redis of the test's own (its port third), to stop and start again."""
    command = [redis_executable(), "--port", str(free_port()), "--bind", "127.0.0.1"]
    return command + ["--save", "", "--appendonly", "no"]


def unavailable_config(tmp_path: Path, sink: Sink) -> Path:
    """store.unavailable to the sink's /slack after 1 s without an answer (pinged every 0.2 s)."""
    config = tmp_path / "w.toml"
    config.write_text(
        'allow_networks = ["127.0.0.0/8"]\n'
        + alert_target(sink, "/slack", events=["store.unavailable"])
        + "\n[store]\nunreachable_warning_s = 0.2\n[ops]\nalert_unavailable_s = 1\n"
    )
    return config


async def test_one_process_per_host_sends_store_unavailable_and_another_takes_over(
    tmp_path: Path,
) -> None:
    """Two processes' watches (two opens of one lock file: flock tells them apart as it does
    processes) see one outage: one page. The sender stops (exits); the outage lasts: the
    other, holding the lock now, tells it."""
    with Sink() as sink:
        config = tmp_path / "o.toml"
        config.write_text('allow_networks = ["127.0.0.0/8"]\n' + alert_target(sink, "/slack"))
        settings = load_settings(config, {})
        lock = tmp_path / "unavailable.lock"
        reachability = Reachability()
        async with aiohttp.ClientSession() as session:
            watches = [
                Unavailable(reachability, settings.alerts, session, 0.3, None, HostLock(lock))
                for _ in range(2)
            ]
            stops = [asyncio.Event(), asyncio.Event()]
            tasks = [asyncio.create_task(w.run(s)) for w, s in zip(watches, stops, strict=True)]
            reachability.failed("redis is unreachable: connection refused")
            await sink.wait_for("/slack", 1, timeout=5)
            await asyncio.sleep(2.5)  # each checks twice more: still one page
            assert len(sink.at("/slack")) == 1
            sender = 0 if watches[0].firing else 1
            stops[sender].set()
            await tasks[sender]
            await sink.wait_for("/slack", 2, timeout=5)  # the other one's page
            reachability.answered()
            await sink.wait_for("/slack", 3, timeout=5)
            stops[1 - sender].set()
            await tasks[1 - sender]
    heads = [text.split("*")[1] for text in texts(sink, "/slack")]
    assert heads == ["orderhook:", "orderhook:", "Resolved:"]


def test_the_lock_file_is_per_redis_and_prefix() -> None:
    one = host_lock_path("127.0.0.1:6379/0", "orderhook")
    assert one == host_lock_path("127.0.0.1:6379/0", "orderhook")
    assert one != host_lock_path("127.0.0.1:6379/1", "orderhook")
    assert one != host_lock_path("127.0.0.1:6379/0", "other")
    assert one.name.startswith(f"orderhook-{os.getuid()}-unavailable-")


def test_serve_workers_send_one_store_unavailable_per_host_then_one_resolved(
    tmp_path: Path,
) -> None:
    """`serve --workers 3` and a Redis that stops, then starts again: every worker sees the
    outage, one page and one resolved reach the target."""
    command = own_redis()
    redis_server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    with Sink() as sink:
        config = unavailable_config(tmp_path, sink)
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{command[2]}/0"}
        gateway = Gateway(config, env, tmp_path / "g.log", "--workers", "3").start()
        try:
            time.sleep(3)  # every worker up
            redis_server.terminate()
            redis_server.wait(10)
            sink.wait_for_sync(lambda: len(sink.at("/slack")) >= 1, 10, "store.unavailable")
            time.sleep(3)  # every worker past the threshold
            assert len(sink.at("/slack")) == 1
            redis_server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            sink.wait_for_sync(lambda: len(sink.at("/slack")) >= 2, 10, "resolved")
            time.sleep(1)
        finally:
            gateway.stop()
            redis_server.terminate()
            redis_server.wait(10)
    firing, resolved = texts(sink, "/slack")
    assert "Redis unreachable from" in firing
    assert resolved.startswith(":white_check_mark: *Resolved:* Redis unreachable")
    assert (tmp_path / "g.log").read_text().count("sent by another process on this host") == 2


def test_a_worker_whose_redis_stops_sends_store_unavailable_then_resolved(
    tmp_path: Path,
) -> None:
    """A real Redis of the test's own, stopped and started again under a running worker."""
    command = own_redis()
    redis_server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    with Sink() as sink:
        config = unavailable_config(tmp_path, sink)
        log = tmp_path / "worker.log"
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{command[2]}/0"}
        with log.open("wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker", "--config", str(config)],
                env=env,
                stdout=out,
                stderr=out,
            )
        try:
            wait_for_line(log, "worker ", within_s=20)
            redis_server.terminate()
            redis_server.wait(10)
            sink.wait_for_sync(lambda: len(sink.at("/slack")) == 1, 10, "store.unavailable")
            time.sleep(1)  # still down: no second message
            assert len(sink.at("/slack")) == 1
            redis_server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            sink.wait_for_sync(lambda: len(sink.at("/slack")) == 2, 10, "resolved")
        finally:
            worker.terminate()
            worker.wait(30)
            redis_server.terminate()
            redis_server.wait(10)
    firing, resolved = texts(sink, "/slack")
    assert "Redis unreachable from" in firing and "connection refused" in firing
    assert resolved.startswith(":white_check_mark: *Resolved:* Redis unreachable")

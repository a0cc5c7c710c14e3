"""The alert outbox's sender (app/alerts/send.py): a real Redis, real loopback receivers, the
real Outbox. One dead or hanging target does not hold the others; a condition's last word is
never a stale alarm; a Redis blip after a POST does not send it twice."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import orjson
import pytest
import redis
from aiohttp import web

from app.alerts import send
from app.alerts.config import AlertTarget
from app.alerts.send import Outbox
from app.store.alerts import AlertStore, Rule
from app.store.client import open_store
from app.store.embedded import redis_executable
from app.store.schema import Keys
from tests.conftest import free_port

pytestmark = pytest.mark.anyio

RULE = [Rule("ops", ["subscription.breaker_open"], 300_000, 1_800_000, 3_600_000)]
NOTE = {"event": "subscription.breaker_open", "status": "resolved", "subject": "erp",
        "kind": "subscription", "since": 1, "at": 1, "details": {}}  # fmt: skip


class Receiver:
    """Slack-format receivers: /slack answers 500 until `up`, /gone 404, /hang never; what
    /slack took, with when (monotonic)."""

    def __init__(self) -> None:
        self.up = False
        self.taken: list[tuple[str, float]] = []
        self.on_take: list[object] = []
        self.port = free_port()

    async def slack(self, request: web.Request) -> web.Response:
        text = orjson.loads(await request.read())["text"]
        if not self.up:
            return web.Response(status=500)
        self.taken.append((text, time.monotonic()))
        for hook in self.on_take:
            hook()  # type: ignore[operator]
        return web.Response(text="ok")

    async def gone(self, request: web.Request) -> web.Response:
        return web.Response(status=404)

    async def hang(self, request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response()

    def heads(self) -> list[str]:
        return [text.split("*")[1] for text, _ in self.taken]

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/slack", self.slack)
        app.router.add_post("/gone", self.gone)
        app.router.add_post("/hang", self.hang)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def alerts(redis_url: str, keys: Keys) -> AsyncIterator[AlertStore]:
    async with open_store(redis_url, keys, 1.0, 3600) as store:
        yield AlertStore(store)


def target(port: int, name: str = "ops", path: str = "/slack") -> AlertTarget:
    return AlertTarget(name, f"http://127.0.0.1:{port}{path}", "slack",
                       frozenset({"subscription.breaker_open"}))  # fmt: skip


async def until(check: object, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not check() and time.monotonic() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.1)


class Running:
    """An Outbox running in a task, stopped as the gateway stops it."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.stopping = asyncio.Event()

    async def __aenter__(self) -> Outbox:
        self.task = asyncio.create_task(self.outbox.run(self.stopping))
        return self.outbox

    async def __aexit__(self, *exc: object) -> None:
        self.stopping.set()
        await self.outbox.stop()
        await self.task


def breaker_open(rdb: redis.Redis, keys: Keys, state: str = "open") -> None:
    rdb.hset(keys.subscriptions, "erp", "{}")
    rdb.hset(keys.state("erp"), mapping={"state": "enabled", "breaker": state, "failures": 9})


async def test_dead_and_hanging_targets_do_not_hold_a_healthy_targets_alert(
    alerts: AlertStore, rdb: redis.Redis, keys: Keys
) -> None:
    """A revoked webhook (404 forever) and a target that hangs, 250 queued notifications each
    (a storm), then one for the healthy target: it is read and sent within seconds."""
    async with Receiver() as rx, aiohttp.ClientSession() as session:
        rx.up = True
        for name in ("revoked", "hanging"):
            for _ in range(250):
                rdb.xadd(keys.alerts_outbox, {"target": name, "alert": orjson.dumps(NOTE)})
        rdb.xadd(keys.alerts_outbox, {"target": "ops", "alert": orjson.dumps(NOTE)})
        targets = {
            "ops": target(rx.port),
            "revoked": target(rx.port, "revoked", "/gone"),
            "hanging": target(rx.port, "hanging", "/hang"),
        }
        started = time.monotonic()
        async with Running(Outbox(alerts, session, targets, None)) as outbox:
            await until(lambda: rx.taken, 10)
            held = {name: len(lane.held) for name, lane in outbox.lanes.items()}
    assert len(rx.taken) == 1, "the healthy target's alert was not sent"
    assert rx.taken[0][1] - started < 5
    assert held == {"ops": 0, "revoked": send.MAX_HELD, "hanging": send.MAX_HELD}
    assert rdb.xlen(keys.alerts_outbox) == 500  # the failing ones kept, to be retried


async def test_after_a_target_outage_the_last_word_is_resolved_not_the_stale_alarm(
    alerts: AlertStore, rdb: redis.Redis, keys: Keys
) -> None:
    """The target is down when the breaker opens (the firing retried at 1, 3, 7 s); the
    subscriber recovers, and the target is back at ~4 s: the resolved goes at once, and the
    firing, its condition over, is not sent after it (the resolved names when it began and
    how long it lasted)."""
    breaker_open(rdb, keys)
    async with Receiver() as rx, aiohttp.ClientSession() as session:
        async with Running(Outbox(alerts, session, {"ops": target(rx.port)}, None)):
            await alerts.evaluate(RULE, [])  # firing
            await asyncio.sleep(4.0)
            rdb.hset(keys.state("erp"), "breaker", "closed")
            await alerts.evaluate(RULE, [])  # resolved
            rx.up = True
            await until(lambda: rx.taken, 5)
            await asyncio.sleep(4.5)  # past the firing's next attempt (7 s)
    assert rx.heads() == ["Resolved:"], rx.taken
    assert "(since " in rx.taken[0][0]
    assert rdb.xlen(keys.alerts_outbox) == 0  # the stale firing acked and deleted too


async def test_a_condition_that_begins_again_is_not_followed_by_its_old_resolved(
    alerts: AlertStore, rdb: redis.Redis, keys: Keys
) -> None:
    """Firing sent; the target goes down; the breaker closes (resolved, retried) and opens
    again (a new firing): once the target is back, the channel ends on the new alarm."""
    breaker_open(rdb, keys)
    async with Receiver() as rx, aiohttp.ClientSession() as session:
        rx.up = True
        async with Running(Outbox(alerts, session, {"ops": target(rx.port)}, None)):
            await alerts.evaluate(RULE, [])  # firing
            await until(lambda: rx.taken, 5)
            rx.up = False
            rdb.hset(keys.state("erp"), "breaker", "closed")
            await alerts.evaluate(RULE, [])  # resolved: fails, retried at 1, 3 s
            await asyncio.sleep(1.5)
            rdb.hset(keys.state("erp"), "breaker", "open")
            await alerts.evaluate(RULE, [])  # firing again
            rx.up = True
            await until(lambda: len(rx.taken) >= 2, 5)
            await asyncio.sleep(3)  # past the resolved's next attempt
    assert rx.heads() == ["orderhook:", "orderhook:"], rx.taken
    assert rdb.xlen(keys.alerts_outbox) == 0


@pytest.fixture
def own_redis() -> Iterator[str]:
    """A Redis of the test's own: pausing it pauses no other test's."""
    port = free_port()
    command = [redis_executable(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    server = subprocess.Popen(command + ["--appendonly", "no"], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.ConnectionError):
            client.ping()
            break
        time.sleep(0.05)
    client.close()
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(10)


async def test_a_redis_blip_after_the_post_does_not_send_the_alert_twice(
    own_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target took the alert, then Redis did not answer for 8 s (a failover): the ack is
    retried until it answers; meanwhile the entry, idle past CLAIM_IDLE_S (lowered from 60 s
    to 2 s: the same path), is taken over by this process, which acks it instead of sending
    it again."""
    monkeypatch.setattr(send, "CLAIM_IDLE_S", 2.0)
    keys, rdb = Keys("blip"), redis.Redis.from_url(own_redis)
    breaker_open(rdb, keys)
    async with (
        open_store(own_redis, keys, 1.0, 3600) as store,
        Receiver() as rx,
        aiohttp.ClientSession() as session,
    ):
        alerts = AlertStore(store)
        rx.up = True
        paused: list[bool] = []

        def pause_redis_once() -> None:
            if not paused:
                paused.append(True)
                rdb.execute_command("CLIENT", "PAUSE", 8000, "ALL")

        rx.on_take.append(pause_redis_once)
        await alerts.evaluate(RULE, [])  # firing
        async with Running(Outbox(alerts, session, {"ops": target(rx.port)}, None)):
            await until(lambda: paused, 5)
            await asyncio.sleep(8 + send.SETTLE_MAX_S + 2)
    assert len(rx.taken) == 1, f"the same alert POSTed {len(rx.taken)} times"
    assert rdb.xlen(keys.alerts_outbox) == 0
    assert rdb.xpending(keys.alerts_outbox, Keys.ALERTS_GROUP)["pending"] == 0
    rdb.close()

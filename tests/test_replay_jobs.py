"""Replay of a time range (app/subscriptions/replay.py, app/ops/jobs.py): the events received
in the range that match the subscription's filter now reach it again, with the same
`webhook-id`, as a background job whose progress `GET /admin/jobs/{id}` tells."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import pytest
import redis
from starlette.applications import Starlette

from app.errors import BadRequest
from app.store.schema import Job, Keys
from app.subscriptions import replay
from app.subscriptions.apply import new_record
from app.subscriptions.replay import (
    MAX_JOBS,
    STOPPED,
    ReplayJobs,
    backfill_range,
    job_status,
    replay_range,
    start_backfill,
)
from app.subscriptions.spec import FromWorkflowSpec
from tests.relaying import ADMIN, Gateway, hook, subscription, until
from tests.subscribers import Reply, Sink

pytestmark = pytest.mark.anyio

HOUR_MS = 3600 * 1000


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def now_ms() -> int:
    return int(time.time() * 1000)


def app_of(client: httpx.AsyncClient) -> Starlette:
    app: Starlette = client._transport.app  # type: ignore[attr-defined]
    return app


async def settled(client: httpx.AsyncClient, sink: Sink, sub: str, count: int) -> None:
    """The sink got `count` deliveries, and the subscription has none queued or in flight
    (a delivery just sent still exists: a replay would skip it)."""
    await sink.wait_for(f"/{sub}", count)

    def idle(r: httpx.Response) -> bool:
        [row] = [row for row in r.json()["subscriptions"] if row["id"] == sub]
        return row["queued"] + row["inFlight"] + row["held"] == 0

    await until(lambda: client.get("/admin/subscriptions", headers=ADMIN), idle)


async def replayed(client: httpx.AsyncClient, sub: str, **body: Any) -> dict[str, Any]:
    """Start a replay and wait until its job ends; the job's last status."""
    r = await client.post(f"/admin/subscriptions/{sub}/replay", json=body, headers=ADMIN)
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    done = await until(
        lambda: client.get(f"/admin/jobs/{job}", headers=ADMIN),
        lambda r: r.json()["state"] != "running",
    )
    status: dict[str, Any] = done.json()
    return status


async def test_a_range_is_delivered_again_with_the_same_webhook_ids(
    gateway: Gateway, sink: Sink
) -> None:
    async with gateway(subscription(sink, "erp")) as client:
        before = await hook(client, OrderId="o-1")
        await settled(client, sink, "erp", 1)
        await asyncio.sleep(0.02)
        since = now_ms()
        ids = [await hook(client, OrderId=f"o-{n}") for n in (2, 3)]
        await settled(client, sink, "erp", 3)
        status = await replayed(client, "erp", since=iso(since))
        again = await sink.wait_for("/erp", 5)
    assert sorted(r.headers["webhook-id"] for r in again[3:]) == sorted(ids)
    assert before not in [r.headers["webhook-id"] for r in again[3:]]
    assert status["state"] == "done" and "error" not in status
    assert (status["total"], status["done"], status["replayed"], status["skipped"]) == (2, 2, 2, 0)
    assert status["subscription"] == "erp" and status["since"] == iso(since).replace("+00:00", "Z")


async def test_until_ends_the_range(gateway: Gateway, sink: Sink) -> None:
    async with gateway(subscription(sink, "erp")) as client:
        first = await hook(client, OrderId="o-1")
        await settled(client, sink, "erp", 1)
        await asyncio.sleep(0.02)
        middle = now_ms()
        await hook(client, OrderId="o-2")
        await settled(client, sink, "erp", 2)
        status = await replayed(client, "erp", since=iso(middle - HOUR_MS), until=iso(middle))
        again = await sink.wait_for("/erp", 3)
        await asyncio.sleep(0.2)
        assert len(sink.at("/erp")) == 3
    assert again[2].headers["webhook-id"] == first
    assert status["replayed"] == 1


async def test_the_filter_is_the_subscriptions_now(gateway: Gateway, sink: Sink) -> None:
    async with gateway(subscription(sink, "erp")) as client:
        since = now_ms()
        await hook(client, OrderId="o-1", State="handling")
        invoiced = await hook(client, OrderId="o-2", State="invoiced")
        await settled(client, sink, "erp", 2)
        runtime = app_of(client).state.runtime
        record = await runtime.catalog.get("erp")
        spec = msgspec.structs.replace(record.spec, filter=FromWorkflowSpec(["invoiced"]))
        await runtime.catalog.put(
            new_record(spec, record.secrets, record, record.origin), record.version, None
        )
        await runtime.subscriptions.refresh()
        status = await replayed(client, "erp", since=iso(since))
        again = await sink.wait_for("/erp", 3)
    assert again[2].headers["webhook-id"] == invoiced
    assert (status["done"], status["replayed"]) == (2, 1)


async def test_a_delivery_still_pending_is_skipped_and_counted(
    gateway: Gateway, sink: Sink
) -> None:
    sink.script("/erp", Reply(status=500))
    async with gateway(subscription(sink, "erp", retry_schedule="[60]")) as client:
        since = now_ms()
        await hook(client)
        await sink.wait_for("/erp", 1)  # failed: retried in a minute
        status = await replayed(client, "erp", since=iso(since))
        await asyncio.sleep(0.2)
        assert len(sink.at("/erp")) == 1
    assert (status["done"], status["replayed"], status["skipped"]) == (1, 0, 1)


@pytest.mark.parametrize(
    "options",
    [
        {"ordering": '"per-order"', "drop_stale": "true"},
        {
            "filter": '{ type = "FromOrders", '
            'expression = "status = \\"ready-for-handling\\"", disableSingleFire = false }'
        },
    ],
    ids=["per-order", "from-orders-single-fire"],
)
async def test_per_order_and_single_fire_subscriptions_get_the_range_again(
    gateway: Gateway, sink: Sink, options: dict[str, str]
) -> None:
    async with gateway(subscription(sink, "erp", **options)) as client:
        since = now_ms()
        ids = [await hook(client, CurrentChange=f"2019-08-14T17:12:4{n}.0000000Z") for n in (1, 2)]
        await settled(client, sink, "erp", 1)
        first = len(sink.at("/erp"))
        status = await replayed(client, "erp", since=iso(since))
        again = await sink.wait_for("/erp", first + 2)
    assert sorted(r.headers["webhook-id"] for r in again[first:]) == sorted(ids)
    assert status["replayed"] == 2


async def test_a_pull_subscription_gets_the_range_in_its_feed(gateway: Gateway) -> None:
    pull = '\n[[subscriptions]]\nid = "pull"\nmode = "pull"\ntoken = "feed-token"\n'
    feed = {"Authorization": "Bearer feed-token"}

    async def take() -> list[dict[str, Any]]:
        taken = await until(lambda: client.get("/feed/pull", headers=feed), lambda r: r.json())
        handles = [item["handle"] for item in taken.json()]
        await client.post("/feed/pull/commit", json={"handles": handles}, headers=feed)
        return list(taken.json())

    async with gateway(pull) as client:
        since = now_ms()
        await hook(client)
        first = await take()
        status = await replayed(client, "pull", since=iso(since))
        again = await take()
    assert status["replayed"] == 1
    assert [i["eventId"] for i in again] == [i["eventId"] for i in first]


@pytest.mark.parametrize(
    ("body", "status", "said"),
    [
        ({"since": "yesterday"}, 400, "`since` must be an RFC 3339 date-time"),
        ({"since": "2020-01-01T00:00:00Z", "until": "2019-01-01T00:00:00Z"}, 400, "before"),
        ({"since": "2020-01-01T00:00:00Z", "until": "2021-01-01T00:00:00Z"}, 400, "retention"),
        ({"since": "2020-01-01T00:00:00Z", "to": "x"}, 400, "unknown field 'to'"),
        ({}, 400, "`since`"),
    ],
)
async def test_a_bad_range_is_a_400(
    gateway: Gateway, sink: Sink, body: dict[str, Any], status: int, said: str
) -> None:
    async with gateway(subscription(sink, "erp")) as client:
        r = await client.post("/admin/subscriptions/erp/replay", json=body, headers=ADMIN)
    assert r.status_code == status and said in r.json()["error"]


async def test_unknown_subscription_and_job_are_404_and_ops_is_403(
    gateway: Gateway, sink: Sink
) -> None:
    body = {"since": iso(now_ms() - 1000)}
    async with gateway(subscription(sink, "erp")) as client:
        r = await client.post("/admin/subscriptions/nope/replay", json=body, headers=ADMIN)
        assert r.status_code == 404 and "nope" in r.json()["error"]
        r = await client.get("/admin/jobs/nope", headers=ADMIN)
        assert r.status_code == 404
        ops = {"Authorization": "Bearer ops-token"}
        r = await client.post("/admin/subscriptions/erp/replay", json=body, headers=ops)
        assert r.status_code == 403
        assert (await client.get("/admin/jobs/x", headers=ops)).status_code == 403


async def test_a_job_whose_process_stopped_reads_failed(
    gateway: Gateway, sink: Sink, rdb: redis.Redis, keys: Keys
) -> None:
    stale = now_ms() - 31_000
    fields = {Job.STATE: "running", Job.SUBSCRIPTION: "erp", Job.SINCE_MS: 0, Job.UNTIL_MS: 1}
    rdb.hset(keys.job("gone"), mapping={**fields, Job.HEARTBEAT_MS: stale, Job.TOTAL: 5})
    async with gateway(subscription(sink, "erp")) as client:
        r = await client.get("/admin/jobs/gone", headers=ADMIN)
    assert r.status_code == 200
    assert r.json() == {
        "state": "failed",
        "error": STOPPED,
        "subscription": "erp",
        "since": "1970-01-01T00:00:00.000Z",
        "until": "1970-01-01T00:00:00.001Z",
        "total": 5,
        "done": 0,
        "replayed": 0,
        "skipped": 0,
    }


async def test_jobs_beyond_the_bound_are_429_and_stopped_ones_fail(
    gateway: Gateway, sink: Sink, rdb: redis.Redis, keys: Keys
) -> None:
    body = {"since": iso(now_ms() - 1000)}
    async with gateway(subscription(sink, "erp")) as client:
        jobs: ReplayJobs = app_of(client).state.jobs
        jobs._running = asyncio.Semaphore(0)  # every job waits its turn, running
        started = []
        for _ in range(MAX_JOBS):
            r = await client.post("/admin/subscriptions/erp/replay", json=body, headers=ADMIN)
            started.append(r.json()["job"])
        r = await client.post("/admin/subscriptions/erp/replay", json=body, headers=ADMIN)
        assert r.status_code == 429
        r = await client.get(f"/admin/jobs/{started[0]}", headers=ADMIN)
        assert r.json()["state"] == "running"
    # the gateway stopped: its jobs were marked failed
    for job in started:
        assert rdb.hget(keys.job(job), Job.STATE) == b"failed"
        assert STOPPED in rdb.hget(keys.job(job), Job.ERROR).decode()


async def test_start_backfill_replays_from_since_to_now(gateway: Gateway, sink: Sink) -> None:
    async with gateway(subscription(sink, "erp")) as client:
        since = now_ms()
        event = await hook(client)
        await settled(client, sink, "erp", 1)
        job = await start_backfill(app_of(client).state.runtime, "erp", iso(since))
        done = await until(
            lambda: client.get(f"/admin/jobs/{job}", headers=ADMIN),
            lambda r: r.json()["state"] == "done",
        )
        again = await sink.wait_for("/erp", 2)
    assert again[1].headers["webhook-id"] == event and done.json()["replayed"] == 1


@pytest.mark.parametrize(
    ("since", "until_", "said"),
    [
        ("2020-01-01T00:00:00Z", "2020-01-01T00:00:00Z", "before"),
        ("2020-01-01T00:00:00+24:00", None, "RFC 3339"),
        ("2020-01-01T00:00:00Z", "2020-01-02T00:00:00.001Z", "retention"),
    ],
)
def test_replay_range_refuses(since: str, until_: str | None, said: str) -> None:
    with pytest.raises(BadRequest, match=said):
        replay_range(since, until_, now_ms(), 86400)


def test_replay_range_defaults_until_to_now_and_backfill_starts_at_the_retention() -> None:
    assert replay_range("1970-01-01T00:00:01Z", None, 5000, 60) == replay.Range(1000, 5000)
    assert backfill_range("1970-01-01T00:00:01Z", 100_000, 60) == replay.Range(40_000, 100_000)
    with pytest.raises(BadRequest, match="in the past"):
        backfill_range("1970-01-01T00:01:41Z", 100_000, 60)


@pytest.mark.parametrize(("beat_ago_ms", "state"), [(29_000, "running"), (31_000, "failed")])
def test_a_running_job_is_failed_once_its_heartbeat_is_stale(beat_ago_ms: int, state: str) -> None:
    fields = {"state": "running", "subscription": "s", "sinceMs": "0", "untilMs": "0"}
    status = job_status({**fields, "heartbeatMs": str(100_000 - beat_ago_ms)}, 100_000)
    assert status.state == state

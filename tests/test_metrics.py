"""`/metrics`: the latency histogram (true across processes, replayed dead letters left out)
and Prometheus' own linter, `promtool check metrics`, on the whole answer."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.store.latency import LATENCY_BUCKETS_S, bucket_field, histogram
from tests.relaying import ADMIN, Gateway, hook, subscription, until
from tests.subscribers import Reply, Sink

pytestmark = pytest.mark.anyio

OPS = {"Authorization": "Bearer ops-token"}
LATENCY = "orderhook_delivery_latency_seconds"
PROMTOOL_HINT = "install Debian's prometheus package (apt-get install prometheus) for promtool"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def latency_of(text: str, sub: str) -> tuple[list[tuple[str, float]], float, float]:
    """(the buckets as (le, cumulative count), _count, _sum) of one subscription."""
    found = samples(text)
    buckets = [
        (dict(labels)["le"], value)
        for (name, labels), value in found.items()
        if name == LATENCY + "_bucket" and dict(labels)["subscription"] == sub
    ]
    key = (("subscription", sub),)
    return buckets, found[(LATENCY + "_count", key)], found[(LATENCY + "_sum", key)]


async def scrape(client: httpx.AsyncClient) -> str:
    r = await client.get("/metrics", headers=OPS)
    assert r.status_code == 200
    return r.text


@pytest.mark.parametrize(
    ("latency_ms", "field"),
    [(0, "10"), (10, "10"), (11, "25"), (999, "1000"), (1000, "1000"), (86_400_001, "inf")],
)
def test_a_latency_counts_in_the_one_bucket_whose_bound_holds_it(
    latency_ms: int, field: str
) -> None:
    assert bucket_field(latency_ms) == field


def test_histogram_is_cumulative_and_keeps_counts_of_retired_bounds() -> None:
    h = histogram({"10": 2, "1000": 1, "inf": 1, "999": 4, "sumMs": 5000})
    counts = dict(h.buckets)
    assert counts[0.01] == 2 and counts[0.5] == 2 and counts[1] == 7  # "999" counts under 1 s
    assert counts[float("inf")] == h.count == 8 and h.sum_s == 5.0
    assert [b for b, _ in h.buckets] == [*LATENCY_BUCKETS_S, float("inf")]


async def test_latency_is_a_histogram_summed_across_processes(gateway: Gateway, sink: Sink) -> None:
    """It was a gauge with a `quantile` label: p99 of one process's window, which no query can
    add up across processes, and 0.0 when nothing was delivered."""
    subs = subscription(sink, "up") + subscription(sink, "idle", accounts='["nobody"]')
    async with gateway(subs) as one, gateway(subs) as two:
        before = await scrape(one)
        for state in ("handling", "invoiced", "canceled"):
            await hook(one, State=state)
            await hook(two, State=state + "-2")
        await sink.wait_for("/up", 6)
        await until(lambda: one.get("/ops/stats", headers=OPS), delivered(6))
        texts = [await scrape(one), await scrape(two)]
    family = next(f for f in text_string_to_metric_families(texts[0]) if f.name == LATENCY)
    assert family.type == "histogram"
    assert not [s for s in family.samples if "quantile" in s.labels]
    assert latency_of(before, "up")[1:] == (0, 0)  # nothing delivered: no latency, not 0 s
    buckets, count, total_s = latency_of(texts[0], "up")
    assert count == 6 and 0 < total_s < 60  # every delivery, whichever process settled it
    assert buckets[-1] == ("+Inf", 6)
    assert [n for _, n in buckets] == sorted(n for _, n in buckets)  # cumulative
    assert latency_of(texts[1], "up") == latency_of(texts[0], "up")  # the same from each process
    assert latency_of(texts[0], "idle")[1] == 0


def delivered(n: int) -> object:
    return lambda r: r.json()["subscriptions"][0]["delivered"] >= n


async def test_a_replayed_dead_letter_keeps_its_time_in_the_queue_out_of_latency(
    gateway: Gateway, sink: Sink
) -> None:
    """Replayed after a while in the dead-letter queue, a delivery's receipt-to-delivery time
    was counted as latency (888346 ms after a night in the queue)."""
    sink.script("/up", Reply(500), Reply(500), Reply(500))
    async with gateway(subscription(sink, "up")) as client:
        await hook(client)
        await until(
            lambda: client.get("/ops/stats", headers=OPS),
            lambda r: r.json()["subscriptions"][0]["deadLetters"] == 1,
        )
        await asyncio.sleep(1.5)  # in the dead-letter queue
        r = await client.post("/admin/dlq/replay", json={"subscription": "up"}, headers=ADMIN)
        assert r.json()["replayed"] == 1
        stats = await until(lambda: client.get("/ops/stats", headers=OPS), delivered(1))
        text = await scrape(client)
        page = (await client.get("/ops", headers=OPS)).text
    up = stats.json()["subscriptions"][0]
    assert up["latency"] == {"count": 0, "p50Ms": None, "p95Ms": None, "p99Ms": None}
    assert latency_of(text, "up")[1:] == (0, 0)
    assert (
        samples(text)[
            ("orderhook_deliveries_total", (("outcome", "delivered"), ("subscription", "up")))
        ]
        == 1
    )
    assert "no deliveries in the last 5 min" in page and "/ /" not in page


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail(f"promtool is missing under CI: {PROMTOOL_HINT}")
    pytest.skip(f"promtool is missing: {PROMTOOL_HINT}")


async def test_promtool_accepts_the_whole_metrics_answer(gateway: Gateway, sink: Sink) -> None:
    """`promtool check metrics` flagged the latency gauge's `quantile` label."""
    tool = promtool()
    sink.script("/down", Reply(500), Reply(500), Reply(500))
    async with gateway(subscription(sink, "up") + subscription(sink, "down")) as client:
        await hook(client)
        await client.post("/hooks/vtex", json={}, headers={"X-Orderhook-Token": "x"})  # rejected
        await until(
            lambda: client.get("/ops/stats", headers=OPS),
            lambda r: [s["deadLetters"] for s in r.json()["subscriptions"]] == [0, 1],
        )
        text = await scrape(client)
    assert "orderhook_delivery_latency_seconds_bucket" in text
    checked = subprocess.run(
        [tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not checked.stdout.strip() and not checked.stderr.strip()  # not even a warning

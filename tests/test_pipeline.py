"""The whole way, property-based: whatever ingest accepts reaches an end.

Hypothesis draws notifications within what ingest accepts (extreme dates and precisions, absent
optional fields, unicode order ids, duplicates, any arrival order) and subscriptions with and
without per-order ordering, drop_stale and filters, whose subscribers fail at random. The
invariant: every event answered `accepted` ends, for every subscription that wants it, either
delivered, dead-lettered with a reason, or counted stale by the documented rule (drop_stale:
older than the last one of its order delivered to that subscription) — and nothing stays held,
queued or in flight. Real Redis, a real loopback subscriber, the app in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.config import Settings, load_settings
from app.events import event_change_time, iso_ticks
from app.router import matching
from app.server import create_app
from app.store.schema import Keys
from tests import strategies
from tests.conftest import CONFIG_TOML, WILDCARD_HEADER, WILDCARD_TOKEN
from tests.relaying import ADMIN, SECRET
from tests.subscribers import Sink
from tests.test_faults import report

EXAMPLES = 20
SETTLE_TIMEOUT_S = 30.0
STATES = ["payment-approved", "ready-for-handling", "handling", "invoiced", "canceled", None]
WILDCARD = {WILDCARD_HEADER: WILDCARD_TOKEN, "Content-Type": "application/json"}

# Extreme change times ingest accepts: the epoch, whole seconds, 1 to 9 decimals, just now.
extreme_times = (
    st.sampled_from(
        [
            "1970-01-01T00:00:00Z",
            "1970-01-01T00:00:00.0000001Z",
            "2019-08-14T17:12:48.0965893Z",
            "2019-08-14T17:12:48.096589312Z",
            "2019-08-14T17:12:48+03:00",
            "2019-08-14T17:12:48-03:00",
        ]
    )
    | strategies.change_times
)


@st.composite
def notifications(draw: st.DrawFn, orders: list[str], accounts: list[str]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "OrderId": draw(st.sampled_from(orders)),
        "State": draw(st.sampled_from(STATES)),
        "Origin": {"Account": draw(st.sampled_from(accounts)), "Key": "vtexappkey-x"},
    }
    for name in ("Domain", "LastState"):
        if draw(st.booleans()):
            doc[name] = draw(st.sampled_from(["Fulfillment", "Marketplace", "window-to-cancel"]))
    shape = draw(st.sampled_from(["both", "current", "last", "none"]))
    if shape in ("both", "current"):
        doc["CurrentChange"] = draw(extreme_times)
    if shape in ("both", "last"):
        doc["LastChange"] = draw(extreme_times)
    return doc


@dataclass
class Scenario:
    sends: list[dict[str, Any]]
    subscriptions: list[dict[str, Any]] = field(default_factory=list)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    orders = draw(st.lists(strategies.order_ids, min_size=1, max_size=4, unique=True))
    accounts = draw(st.lists(strategies.accounts, min_size=1, max_size=2, unique=True))
    distinct = draw(st.lists(notifications(orders, accounts), min_size=5, max_size=30))
    repeats = draw(st.lists(st.sampled_from(distinct), max_size=8))  # VTEX's duplicates
    sends = draw(st.permutations(distinct + repeats))
    subs = []
    for n in range(draw(st.integers(1, 3))):
        sub: dict[str, Any] = {"id": f"s{n}", "fail": draw(st.sampled_from([0.0, 0.3, 1.0]))}
        if draw(st.booleans()):
            sub["ordering"] = '"per-order"'
            sub["drop_stale"] = draw(st.sampled_from(["true", "false"]))
            sub["reorder_window"] = draw(st.sampled_from([0, 0.1]))
        if draw(st.booleans()):
            states = draw(st.lists(st.sampled_from(STATES[:-1]), min_size=1, unique=True))
            sub["filter"] = '{ type = "FromWorkflow", status = ' + orjson.dumps(states).decode()
            sub["filter"] += " }"
        subs.append(sub)
    return Scenario(list(sends), subs)


def config_toml(prefix: str, sink: Sink, tag: str, subs: list[dict[str, Any]]) -> str:
    text = CONFIG_TOML.replace("{prefix}", prefix)
    for sub in subs:
        sub_id = sub["id"]
        text += f"""
[[subscriptions]]
id = "{sub_id}"
url = "{sink.url(f"/{tag}/{sub_id}")}"
secret = "{SECRET}"
retry_schedule = [0.02, 0.02]
timeout = 2
breaker_threshold = 100000
"""
        for option in ("ordering", "drop_stale", "reorder_window", "filter"):
            if option in sub:
                text += f"{option} = {sub[option]}\n"
    return text


@contextlib.asynccontextmanager
async def gateway(
    config: Path, redis_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    env = {"REDIS_URL": redis_url, "ORDERHOOK_ADMIN_TOKEN": "admin-token"}
    loaded = load_settings(config, env)
    app = create_app(loaded)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client, loaded


def pending(rdb: redis.Redis, keys: Keys, subs: list[str]) -> int:
    """Entries not routed yet, and deliveries neither delivered, dead nor stale: queued, in
    flight, or held for their order."""
    unrouted = int(rdb.xlen(keys.ingest_stream))
    return unrouted + sum(int(rdb.zcard(keys.pending_age(s))) for s in subs)


async def settle(rdb: redis.Redis, keys: Keys, subs: list[str]) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while pending(rdb, keys, subs):
        if time.monotonic() > deadline:
            held = {s: rdb.zcard(f"{keys.tag}:s:{s}:hold") for s in subs}
            raise AssertionError(f"{pending(rdb, keys, subs)} deliveries never ended; held {held}")
        await asyncio.sleep(0.05)


def ticks(event: dict[str, Any]) -> int:
    """The documented rule's sort time: the change time (CurrentChange, else LastChange), else
    the receipt."""
    found = iso_ticks(event_change_time(event))
    return found if found is not None else int(iso_ticks(event["receivedAt"]) or 0)


@pytest.mark.timeout(600)
def test_every_accepted_event_is_delivered_dead_lettered_or_stale_and_nothing_stays(
    redis_url: str, rdb: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tried: dict[str, int] = {"examples": 0, "sent": 0, "accepted": 0, "duplicates": 0}
    outcomes: dict[str, int] = {"delivered": 0, "dead": 0, "stale": 0}

    with Sink() as sink:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(scenario=scenarios())
        def example(scenario: Scenario) -> None:
            keys = Keys(f"test-{uuid.uuid4().hex[:12]}")
            tag = keys.prefix
            for sub in scenario.subscriptions:
                sink.flaky(f"/{tag}/{sub['id']}", sub["fail"], seed=len(scenario.sends))
            config = tmp_path / f"{tag}.toml"
            config.write_text(config_toml(keys.prefix, sink, tag, scenario.subscriptions))
            try:
                asyncio.run(run(scenario, config, keys, tag))
            finally:
                gc.collect()  # this example's app, on the main thread (see conftest)
                for key in rdb.scan_iter(match=keys.pattern, count=1000):
                    rdb.delete(key)

        async def run(scenario: Scenario, config: Path, keys: Keys, tag: str) -> None:
            sub_ids = [s["id"] for s in scenario.subscriptions]
            async with gateway(config, redis_url) as (client, loaded):
                answers = await asyncio.gather(
                    *(client.post("/hooks/vtex", json=d, headers=WILDCARD) for d in scenario.sends)
                )
                assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
                accepted = [a.json()["id"] for a in answers if a.json()["status"] == "accepted"]
                assert len(set(accepted)) == len(accepted)
                await settle(rdb, keys, sub_ids)
                events = {i: orjson.loads(rdb.get(keys.event(i))) for i in accepted}
                logs = {
                    i: (await client.get(f"/admin/events/{i}", headers=ADMIN)).json()
                    for i in accepted
                }
            tried["examples"] += 1
            tried["sent"] += len(scenario.sends)
            tried["accepted"] += len(accepted)
            tried["duplicates"] += len(scenario.sends) - len(accepted)
            check(scenario, loaded, events, logs, tag, rdb, keys)

        def check(
            scenario: Scenario,
            loaded: Settings,
            events: dict[str, dict[str, Any]],
            logs: dict[str, dict[str, Any]],
            tag: str,
            rdb: redis.Redis,
            keys: Keys,
        ) -> None:
            delivered: dict[str, set[str]] = {}
            for sub in loaded.subscriptions:
                got = sink.at(f"/{tag}/{sub.id}")
                delivered[sub.id] = {r.headers["webhook-id"] for r in got if r.status < 300}
            for event_id, event in events.items():
                wanted = {s.id for s in matching(loaded.subscriptions, event, lambda s, e: None)}
                for sub in loaded.subscriptions:
                    ends = end_of(event_id, sub.id, delivered, logs, rdb, keys)
                    if sub.id not in wanted:
                        assert ends == [], f"{event_id} reached {sub.id}, which does not want it"
                        continue
                    assert len(ends) == 1, f"{event_id} for {sub.id}: ends {ends}"
                    outcomes[ends[0]] += 1
                    if ends[0] == "stale":
                        assert sub.drop_stale, f"{event_id} stale for {sub.id}: no drop_stale"
                        newer = [
                            ticks(events[other])
                            for other in delivered[sub.id] & set(events)
                            if events[other]["orderId"] == event["orderId"]
                            and events[other]["account"] == event["account"]
                        ]
                        assert newer and max(newer) > ticks(event), f"{event_id} stale wrongly"

        def end_of(
            event_id: str,
            sub: str,
            delivered: dict[str, set[str]],
            logs: dict[str, dict[str, Any]],
            rdb: redis.Redis,
            keys: Keys,
        ) -> list[str]:
            ends = []
            if event_id in delivered[sub]:
                ends.append("delivered")
            dead = rdb.hgetall(keys.delivery(f"{event_id}.{sub}"))
            if rdb.zscore(keys.dlq(sub), f"{event_id}.{sub}") is not None:
                assert dead.get(b"lastError"), f"{event_id} dead for {sub} without a reason"
                ends.append("dead")
            attempts = logs[event_id].get("attempts", {}).get(sub, [])
            if any(a["outcome"] == "stale" for a in attempts):
                ends.append("stale")
            return ends

        example()

    report(
        capsys,
        f"pipeline property: {tried['examples']} examples (hypothesis, max {EXAMPLES})",
        {
            "notifications sent / accepted / duplicates": (
                f"{tried['sent']} / {tried['accepted']} / {tried['duplicates']}"
            ),
            "ends: delivered / dead-lettered / stale": (
                f"{outcomes['delivered']} / {outcomes['dead']} / {outcomes['stale']}"
            ),
            "left queued, held or in flight": 0,
        },
    )
    assert tried["examples"] > 0


def test_the_drawn_times_are_ones_ingest_accepts() -> None:
    """The strategy stays within ingest's rule: RFC 3339, not ahead of the clock."""
    now = datetime.now(UTC)

    @settings(max_examples=200, deadline=None)
    @given(extreme_times)
    def check(value: str) -> None:
        moment = iso_ticks(value)
        assert moment is not None and moment <= now.timestamp() * 10_000_000

    check()

"""The alert conditions as alerts.lua evaluates them, on a real Redis: each start and end queued
once whatever the number of evaluators, the thresholds, the dead-letter summary, the silent
account, a deleted subscription, a subject whose data is broken; two configs alive at once (a
rolling deploy), a storm past the outbox's cap, the accounts whose last event is kept."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from app.alerts.evaluate import report
from app.config import ConfigError, load_settings
from app.store.alerts import AlertStore, Evaluated, Rule
from app.store.client import open_store
from app.store.schema import Counter, Keys, stat_field

pytestmark = pytest.mark.anyio

ALL = (
    "subscription.disabled",
    "subscription.breaker_open",
    "subscription.backlog",
    "subscription.dead_letter",
    "ingest.silent",
)
RULE = Rule("ops", ALL, backlog_ms=300_000, silent_ms=1_800_000, repeat_ms=3_600_000)
T0 = 1_800_000_000_000
EVERY = 15_000
BREAKER = "subscription.breaker_open"


@pytest.fixture
async def alerts(redis_url: str, keys: Keys) -> AsyncIterator[AlertStore]:
    async with open_store(redis_url, keys, 2.0, 3600) as store:
        yield AlertStore(store)


def outbox(rdb: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """What was queued: (target, notification) in order."""
    return [
        {"target": f[b"target"].decode(), **orjson.loads(f[b"alert"])}
        for _, f in rdb.xrange(keys.alerts_outbox)
    ]


def summary(rdb: redis.Redis, keys: Keys) -> list[tuple[str, str, str]]:
    return [(n["event"], n["status"], n["subject"]) for n in outbox(rdb, keys)]


def catalog(rdb: redis.Redis, keys: Keys, *subs: str) -> None:
    for sub in subs:
        rdb.hset(keys.subscriptions, sub, "{}")


async def test_a_breaker_open_is_queued_once_by_many_evaluators_and_resolved_once(
    alerts: AlertStore, rdb: redis.Redis, keys: Keys
) -> None:
    catalog(rdb, keys, "erp", "wms")
    rdb.hset(keys.state("erp"), mapping={"state": "enabled", "breaker": "open", "failures": 12})
    rdb.hset(keys.state("wms"), mapping={"state": "enabled", "breaker": "closed"})
    runs = [alerts.evaluate([RULE], [], now=T0 + n) for n in range(20)]
    await asyncio.gather(*runs)  # twenty processes at once
    rdb.hset(keys.state("erp"), "breaker", "half-open")  # probing: still the same condition
    await alerts.evaluate([RULE], [], now=T0 + 100)
    assert summary(rdb, keys) == [("subscription.breaker_open", "firing", "erp")]
    rdb.hset(keys.state("erp"), "breaker", "closed")
    await asyncio.gather(*(alerts.evaluate([RULE], [], now=T0 + 200) for _ in range(5)))
    assert summary(rdb, keys)[1:] == [("subscription.breaker_open", "resolved", "erp")]
    assert rdb.hlen(keys.alerts_active) == 0
    [resolved] = rdb.lrange(keys.alerts_resolved, 0, -1)
    assert orjson.loads(resolved)["event"] == "subscription.breaker_open"


async def test_each_target_gets_its_own_events_and_thresholds(
    alerts: AlertStore, rdb: redis.Redis, keys: Keys
) -> None:
    catalog(rdb, keys, "erp")
    rdb.zadd(keys.pending_age("erp"), {"d1": T0 - 400_000, "d2": T0 - 10})
    quick = Rule("pager", ("subscription.backlog",), 300_000, 1_800_000, 3_600_000)
    patient = Rule("chat", ("subscription.backlog",), 600_000, 1_800_000, 3_600_000)
    deaf = Rule("other", ("subscription.disabled",), 1000, 1_800_000, 3_600_000)
    await alerts.evaluate([quick, patient, deaf], [], now=T0)
    [queued] = outbox(rdb, keys)
    assert (queued["target"], queued["event"], queued["status"]) == (
        "pager",
        "subscription.backlog",
        "firing",
    )
    assert queued["details"] == {"oldestAgeS": 400, "thresholdS": 300, "queued": 2}
    await alerts.evaluate([quick, patient, deaf], [], now=T0 + 200_001)
    assert [(n["target"], n["status"]) for n in outbox(rdb, keys)][1:] == [("chat", "firing")]


async def test_a_paused_subscription_s_backlog_is_no_alert(
    alerts: AlertStore, rdb: redis.Redis, keys: Keys
) -> None:
    catalog(rdb, keys, "erp")
    rdb.hset(keys.state("erp"), "state", "paused")
    rdb.zadd(keys.pending_age("erp"), {"d1": T0 - 4_000_000})
    await alerts.evaluate([RULE], [], now=T0)
    assert summary(rdb, keys) == []


async def test_a_reminder_goes_at_most_every_repeat_s_while_a_condition_lasts(
    alerts: AlertStore, rdb: redis.Redis, keys: Keys
) -> None:
    catalog(rdb, keys, "erp")
    rdb.hset(keys.state("erp"), mapping={"state": "disabled", "reason": "HTTP 410"})
    for minute in range(0, 181, 5):
        await alerts.evaluate([RULE], [], now=T0 + minute * 60_000)
    statuses = [s for _, s, _ in summary(rdb, keys)]
    assert statuses == ["firing", "reminder", "reminder", "reminder"]  # 0, 60, 120, 180 min


async def test_dead_letters_are_summarized_since_the_last_alert(
    alerts: AlertStore, rdb: redis.Redis, keys: Keys
) -> None:
    catalog(rdb, keys, "erp")
    await alerts.evaluate([RULE], [], now=T0)  # first look: the counter's mark is 0

    def die(n: int, at: int) -> None:
        rdb.hincrby(keys.stats, stat_field("erp", Counter.DEAD), n)
        for i in range(n):
            rdb.hset(keys.delivery(f"d{at}-{i}"), mapping={"eventId": f"ev-{at}-{i}"})
            rdb.zadd(keys.dlq("erp"), {f"d{at}-{i}": at + i})
        rdb.hset(keys.state("erp"), "lastError", "HTTP 500 <!channel>")

    die(7, T0 + 1)
    await alerts.evaluate([RULE], [], now=T0 + 1000)
    die(3, T0 + 2000)  # more while active, before repeat_s: no message yet
    await alerts.evaluate([RULE], [], now=T0 + 3000)
    await alerts.evaluate([RULE], [], now=T0 + 3_600_000)  # no growth since: nothing
    die(2, T0 + 3_700_000)
    await alerts.evaluate([RULE], [], now=T0 + 7_300_000)
    rdb.delete(keys.dlq("erp"))
    await alerts.evaluate([RULE], [], now=T0 + 7_400_000)
    sent = outbox(rdb, keys)
    assert [(n["status"], n["details"].get("newDeadLetters")) for n in sent] == [
        ("firing", 7),
        ("reminder", 5),
        ("resolved", 5),  # with what was last known
    ]
    first = sent[0]["details"]
    assert first["deadLetters"] == 7 and first["lastError"] == "HTTP 500 <!channel>"
    assert first["eventIds"] == [f"ev-{T0 + 1}-{i}" for i in (6, 5, 4, 3, 2)]
    assert sent[1]["details"]["deadLetters"] == 12


async def test_an_account_silent_too_long_fires_and_resolves_on_its_next_event(
    alerts: AlertStore, rdb: redis.Redis, keys: Keys
) -> None:
    await alerts.evaluate([RULE], ["mystore", "other"], now=T0)  # never seen: counted from now
    rdb.hset(keys.accepted_at, "other", T0 + 1_000_000)
    await alerts.evaluate([RULE], ["mystore", "other"], now=T0 + 1_800_001)
    assert summary(rdb, keys) == [("ingest.silent", "firing", "mystore")]
    rdb.hset(keys.accepted_at, "mystore", T0 + 1_900_000)
    await alerts.evaluate([RULE], ["mystore", "other"], now=T0 + 1_900_001)
    assert summary(rdb, keys)[1:] == [("ingest.silent", "resolved", "mystore")]


async def test_a_deleted_subscription_s_condition_resolves(
    alerts: AlertStore, rdb: redis.Redis, keys: Keys
) -> None:
    catalog(rdb, keys, "erp")
    rdb.hset(keys.state("erp"), mapping={"state": "disabled"})
    await alerts.evaluate([RULE], [], now=T0)
    rdb.hdel(keys.subscriptions, "erp")
    await alerts.evaluate([RULE], [], now=T0 + 1)
    assert summary(rdb, keys) == [
        ("subscription.disabled", "firing", "erp"),
        ("subscription.disabled", "resolved", "erp"),
    ]


async def test_one_subscription_s_broken_data_does_not_stop_the_others(
    alerts: AlertStore, rdb: redis.Redis, keys: Keys
) -> None:
    catalog(rdb, keys, "broken", "erp")
    rdb.set(keys.state("broken"), "not a hash")  # WRONGTYPE for every read of it
    rdb.hset(keys.state("erp"), "breaker", "open")
    rdb.hset(keys.alerts_active, "ops|subscription.disabled|ghost", "not json")
    queued, failed, _ = await alerts.evaluate([RULE], [], now=T0)
    assert (queued, failed) == (1, 1)
    assert summary(rdb, keys) == [("subscription.breaker_open", "firing", "erp")]
    assert rdb.hget(keys.alerts_active, "ops|subscription.disabled|ghost") is None


async def test_the_conditions_are_evaluated_once_per_interval_whatever_the_processes(
    alerts: AlertStore, rdb: redis.Redis, keys: Keys
) -> None:
    catalog(rdb, keys, "erp")
    await alerts.evaluate([RULE], [], now=T0, every_ms=5000)
    rdb.hset(keys.state("erp"), "breaker", "open")
    await alerts.evaluate([RULE], [], now=T0 + 1000, every_ms=5000)  # another process, too soon
    assert summary(rdb, keys) == []
    await alerts.evaluate([RULE], [], now=T0 + 2600, every_ms=5000)
    assert summary(rdb, keys) == [("subscription.breaker_open", "firing", "erp")]


async def test_a_condition_its_target_no_longer_wants_resolves_once_the_old_config_is_gone(
    alerts: AlertStore, rdb: redis.Redis, keys: Keys
) -> None:
    catalog(rdb, keys, "erp")
    rdb.hset(keys.state("erp"), "breaker", "open")
    await alerts.evaluate([RULE], [], now=T0, every_ms=EVERY)
    fewer = Rule("ops", ("subscription.disabled",), 300_000, 1_800_000, 3_600_000)
    other = Rule("other", ("subscription.disabled",), 300_000, 1_800_000, 3_600_000)
    await alerts.evaluate([other], [], now=T0 + 1, every_ms=EVERY)
    await alerts.evaluate([fewer], [], now=T0 + 2, every_ms=EVERY)  # RULE's processes still run
    assert [s for _, s, _ in summary(rdb, keys)] == ["firing"]
    await alerts.evaluate([fewer], [], now=T0 + 3 * EVERY, every_ms=EVERY)
    assert [s for _, s, _ in summary(rdb, keys)] == ["firing"]
    await alerts.evaluate([fewer], [], now=T0 + 4 * EVERY, every_ms=EVERY)  # now gone
    assert [s for _, s, _ in summary(rdb, keys)] == ["firing", "resolved"]


def rule(target: str, *events: str, silent_ms: int = 1_800_000) -> Rule:
    return Rule(target, events, 300_000, silent_ms, 3_600_000)


def breaker_open(rdb: redis.Redis, keys: Keys, sub: str = "erp") -> None:
    catalog(rdb, keys, sub)
    rdb.hset(keys.state(sub), mapping={"state": "enabled", "breaker": "open", "failures": 9})


async def test_a_target_only_the_new_config_has_is_alerted_during_a_rolling_deploy(
    alerts: AlertStore, rdb: redis.Redis, keys: Keys
) -> None:
    breaker_open(rdb, keys)
    old = [rule("chat", BREAKER)]
    new = [*old, rule("pager", BREAKER)]
    for tick in range(4):  # the old process always ticks a second before the new one
        await alerts.evaluate(old, [], now=T0 + tick * EVERY, every_ms=EVERY)
        await alerts.evaluate(new, [], now=T0 + tick * EVERY + 1000, every_ms=EVERY)
    sent = [(n["target"], n["status"]) for n in outbox(rdb, keys)]
    assert sorted(sent) == [("chat", "firing"), ("pager", "firing")]  # chat's told once


async def test_two_configs_alive_at_once_do_not_flap_a_condition_one_of_them_wants(
    alerts: AlertStore, rdb: redis.Redis, keys: Keys
) -> None:
    breaker_open(rdb, keys)
    wants = [rule("ops", BREAKER)]
    drops = [rule("ops", "subscription.backlog")]  # the new config no longer wants it
    for tick in range(10):
        plan = wants if tick % 2 == 0 else drops
        await alerts.evaluate(plan, [], now=T0 + tick * EVERY, every_ms=EVERY)
    assert summary(rdb, keys) == [(BREAKER, "firing", "erp")]
    for tick in range(10, 14):  # the old processes are gone: after 3 intervals, it resolves
        await alerts.evaluate(drops, [], now=T0 + tick * EVERY, every_ms=EVERY)
    assert summary(rdb, keys)[1:] == [(BREAKER, "resolved", "erp")]


async def test_an_account_only_the_new_config_lists_does_not_flap_ingest_silent(
    alerts: AlertStore, rdb: redis.Redis, keys: Keys
) -> None:
    silent = [rule("ops", "ingest.silent", silent_ms=60_000)]
    rdb.hset(keys.accepted_at, "newshop", T0 - 3_600_000)
    for tick in range(10):
        accounts = ["newshop"] if tick % 2 == 0 else []
        await alerts.evaluate(silent, accounts, now=T0 + tick * EVERY, every_ms=EVERY)
    assert summary(rdb, keys) == [("ingest.silent", "firing", "newshop")]


async def test_configs_with_different_thresholds_do_not_flap_the_condition(
    alerts: AlertStore, rdb: redis.Redis, keys: Keys
) -> None:
    catalog(rdb, keys, "erp")
    rdb.zadd(keys.pending_age("erp"), {"d1": T0 - 400_000})
    quick = [Rule("ops", ("subscription.backlog",), 300_000, 1_800_000, 3_600_000)]
    patient = [Rule("ops", ("subscription.backlog",), 600_000, 1_800_000, 3_600_000)]
    for tick in range(6):
        plan = quick if tick % 2 == 0 else patient
        await alerts.evaluate(plan, [], now=T0 + tick * EVERY, every_ms=EVERY)
    assert summary(rdb, keys) == [("subscription.backlog", "firing", "erp")]
    rdb.delete(keys.pending_age("erp"))  # delivered: the config that raised it sees it end
    await alerts.evaluate(quick, [], now=T0 + 6 * EVERY, every_ms=EVERY)
    assert summary(rdb, keys)[1:] == [("subscription.backlog", "resolved", "erp")]


async def test_a_deleted_subscription_resolves_at_once_even_while_another_config_wants_it(
    alerts: AlertStore, rdb: redis.Redis, keys: Keys
) -> None:
    breaker_open(rdb, keys)
    rdb.hset(keys.alerts_marks, "ops|erp", 0)
    await alerts.evaluate([rule("ops", BREAKER)], [], now=T0, every_ms=EVERY)
    rdb.hdel(keys.subscriptions, "erp")
    await alerts.evaluate([rule("ops", "ingest.silent")], [], now=T0 + 1000, every_ms=EVERY)
    assert summary(rdb, keys) == [(BREAKER, "firing", "erp"), (BREAKER, "resolved", "erp")]
    assert rdb.hget(keys.alerts_marks, "ops|erp") is None  # its dead-letter mark is gone


@pytest.mark.parametrize(
    "record",
    [
        {"event": BREAKER, "subject": "erp", "target": "chat"},
        {"event": BREAKER, "subject": "erp", "target": "chat", "since": 1, "lastSentMs": "x"},
        {"event": BREAKER, "subject": "erp", "target": 7, "since": 1, "lastSentMs": 1},
        [1, 2],
    ],
)
async def test_an_incomplete_active_record_is_dropped_and_blocks_nothing(
    alerts: AlertStore, rdb: redis.Redis, keys: Keys, record: Any
) -> None:
    catalog(rdb, keys, "erp")
    rdb.hset(keys.state("erp"), mapping={"state": "disabled", "breaker": "open"})
    rdb.hset(keys.alerts_active, "chat|subscription.breaker_open|erp", orjson.dumps(record))
    rules = [rule("chat", BREAKER), rule("pager", "subscription.disabled")]
    run = await alerts.evaluate(rules, [], now=T0)
    assert run.failed == 0
    sent = sorted((n["target"], n["event"], n["status"]) for n in outbox(rdb, keys))
    assert sent == [("chat", BREAKER, "firing"), ("pager", "subscription.disabled", "firing")]


async def test_notifications_the_outbox_cap_trims_are_counted_and_logged(
    alerts: AlertStore, rdb: redis.Redis, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    pipe = rdb.pipeline()
    for i in range(5_500):  # an egress outage opens every breaker at once, two targets
        pipe.hset(keys.subscriptions, f"s{i}", "{}")
        pipe.hset(keys.state(f"s{i}"), mapping={"state": "enabled", "breaker": "open"})
    pipe.execute()
    run = await alerts.evaluate([rule("chat", BREAKER), rule("pager", BREAKER)], [], now=T0)
    assert run.queued == 11_000 and run.trimmed == 11_000 - rdb.xlen(keys.alerts_outbox) > 0
    with caplog.at_level(logging.WARNING, logger="orderhook.alerts"):
        report(run)
    assert f"{run.trimmed} notification(s) were lost" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="orderhook.alerts"):
        report(Evaluated(3, 0, 0))
    assert caplog.text == ""


def test_an_alert_target_id_the_stats_use_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "o.toml"
    config.write_text('[[alerts]]\nid = "rejected"\nurl = "https://hooks.example.com/x"\n')
    with pytest.raises(ConfigError, match="rejected"):
        load_settings(config, {})


async def test_only_the_accounts_of_sources_have_their_last_event_kept(
    redis_url: str, rdb: redis.Redis, keys: Keys
) -> None:
    def event(n: int, account: str) -> dict[str, Any]:
        return {"id": f"ev{n}", "orderId": f"o{n}", "account": account}

    async with open_store(redis_url, keys, 2.0, 3600, watched_accounts=frozenset({"shop"})) as s:
        appended = await s.append([event(1, "shop"), event(2, "made-up-by-anyone")])
    assert all(a.created for a in appended)
    assert set(rdb.hkeys(keys.accepted_at)) == {b"shop"}

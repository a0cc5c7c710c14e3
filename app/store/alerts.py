"""The alerts' side of the store: evaluation (alerts.lua), the outbox stream and what
/admin/alerts reads.

Every process runs `evaluate` every `alert_check_s`; the script is atomic, so a condition that
starts is seen by one run only and queued once. Processes of one config (`config_digest`: its
rules and accounts) share one run per interval; each config alive (a rolling deploy) has its own.
The outbox is read through one consumer group: an entry goes to one process, which acks and
deletes it once its target took it; an entry a dead process held is taken over (`take_over`)
after ALERT_CLAIM_IDLE_S.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from redis.asyncio.client import Pipeline

from app.store.client import Store, now_ms, text
from app.store.reads import Read
from app.store.schema import (
    ALERTS_CONFIG_MARK,
    ALERTS_OUTBOX_MAX,
    ALERTS_RESOLVED_KEPT,
    AlertEntry,
    Counter,
    Keys,
    stat_field,
)
from app.store.scripts import register

SHOWN_EVENT_IDS = 5  # a dead_letter message names this many event ids
ERROR_CHARS = 300  # of a subscription's lastError


@dataclass(frozen=True)
class Rule:
    """One target's part in an evaluation: the events it wants and its thresholds (ms)."""

    target: str
    events: Sequence[str]
    backlog_ms: int
    silent_ms: int
    repeat_ms: int

    def plan(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "events": {event: True for event in self.events},
            "backlogMs": self.backlog_ms,
            "silentMs": self.silent_ms,
            "repeatMs": self.repeat_ms,
        }


class Evaluated(NamedTuple):
    """What a run did: notifications queued, subjects whose data failed it, and outbox entries
    its cap (ALERTS_OUTBOX_MAX) trimmed before anyone read them (notifications lost)."""

    queued: int
    failed: int
    trimmed: int


def config_digest(rules: Sequence[Rule], accounts: Sequence[str]) -> str:
    """Names a config's evaluation: the same for every process with these rules and accounts,
    whatever their order."""
    plan = {
        "rules": sorted((r.plan() for r in rules), key=lambda p: str(p["target"])),
        "accounts": sorted(set(accounts)),
    }
    return hashlib.sha256(orjson.dumps(plan, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


@dataclass(frozen=True)
class Queued:
    """An outbox entry: its stream id, its target and the notification's JSON."""

    entry_id: str
    target: str
    alert: bytes

    @property
    def queued_ms(self) -> int:
        return int(self.entry_id.split("-", 1)[0])


class AlertStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.client = store.client
        self.keys: Keys = store.keys
        self._evaluate = register(self.client, self.keys, "alerts.lua", rules=False)

    async def evaluate(
        self,
        rules: Sequence[Rule],
        accounts: Sequence[str],
        now: int | None = None,
        every_ms: int = 0,
    ) -> Evaluated:
        """Run the evaluation, unless a process of the same config ran it less than
        `every_ms` / 2 ago."""
        plan = {
            "now": now_ms() if now is None else now,
            "everyMs": every_ms,
            "config": config_digest(rules, accounts),
            "configMark": ALERTS_CONFIG_MARK,
            "outboxMax": ALERTS_OUTBOX_MAX,
            "resolvedKept": ALERTS_RESOLVED_KEPT,
            "shownIds": SHOWN_EVENT_IDS,
            "errorChars": ERROR_CHARS,
            "accounts": list(accounts),
            "rules": [r.plan() for r in rules],
        }
        queued, failed, _, trimmed = await self.store.script(
            self._evaluate, [], [orjson.dumps(plan)]
        )
        return Evaluated(int(queued), int(failed), int(trimmed))

    async def ensure_group(self) -> None:
        await self.store.ensure_group(self.keys.alerts_outbox, Keys.ALERTS_GROUP)

    async def read_new(self, consumer: str, count: int) -> list[Queued]:
        reply: Any = await self.store.guard(
            lambda: self.client.xreadgroup(
                Keys.ALERTS_GROUP, consumer, {self.keys.alerts_outbox: ">"}, count
            )
        )
        return _entries([e for _, entries in reply or [] for e in entries])

    async def take_over(self, consumer: str, idle_ms: int, count: int) -> list[Queued]:
        """Entries another process read but did not settle within `idle_ms` (it died)."""
        reply = await self.store.guard(
            lambda: self.client.xautoclaim(
                self.keys.alerts_outbox, Keys.ALERTS_GROUP, consumer, idle_ms, "0-0", count
            )
        )
        return _entries(reply[1])

    async def keep(self, consumer: str, entry_ids: Sequence[str]) -> None:
        """Mark entries this process is still retrying as its own now (their idle time
        restarts), so no other process takes them over meanwhile."""
        if entry_ids:
            await self.store.guard(
                lambda: self.client.xclaim(
                    self.keys.alerts_outbox,
                    Keys.ALERTS_GROUP,
                    consumer,
                    0,
                    list(entry_ids),
                    justid=True,
                )
            )

    async def done(self, entry_id: str) -> None:
        """The entry was sent (or given up): acknowledged and deleted, in one round trip."""

        async def settle() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xack(self.keys.alerts_outbox, Keys.ALERTS_GROUP, entry_id)
                pipe.xdel(self.keys.alerts_outbox, entry_id)
                await pipe.execute()

        await self.store.guard(settle)

    async def active_since(self, target: str, event: str, subject: str) -> int | None:
        """When the condition `event` of `subject` for `target` began (ms), None unless it
        is in force (alerts_active's field `<target>|<event>|<subject>`, as alerts.lua
        writes it)."""
        raw: Any = await self.store.guard(
            lambda: self.client.hget(self.keys.alerts_active, f"{target}|{event}|{subject}")
        )
        record = _decoded(raw) if raw is not None else None
        return _since(record) if record is not None else None

    async def count(self, target: str, counter: Counter) -> None:
        await self.store.guard(
            lambda: self.client.hincrby(self.keys.stats, stat_field(target, counter), 1)
        )


Conditions = tuple[list[dict[str, Any]], list[dict[str, Any]]]


def conditions(keys: Keys) -> Read[Conditions]:
    """The active conditions (oldest first) and the latest resolved (newest first), for a
    page's pipeline (app/store/reads.py)."""

    def queue(pipe: Pipeline) -> None:
        pipe.hvals(keys.alerts_active)
        pipe.lrange(keys.alerts_resolved, 0, ALERTS_RESOLVED_KEPT - 1)

    def parse(replies: Sequence[Any]) -> Conditions:
        active = [r for r in map(_decoded, replies[0]) if r is not None]
        active.sort(key=_since)
        return active, [r for r in map(_decoded, replies[1]) if r is not None]

    return Read(queue, 2, parse)


SEND_OUTCOMES = {
    Counter.ALERTS_SENT: "sent",
    Counter.ALERTS_FAILED: "failed",
    Counter.ALERTS_DROPPED: "dropped",
}


def send_counts(counters: dict[str, int]) -> list[tuple[str, str, int]]:
    """(target, outcome, count) of every alert target's counters in the stats hash."""
    found = []
    for name, count in sorted(counters.items()):
        target, _, counter = name.rpartition(":")
        if target and counter in SEND_OUTCOMES.keys():
            found.append((target, SEND_OUTCOMES[Counter(counter)], count))
    return found


def _entries(raw: list[Any]) -> list[Queued]:
    target, alert = AlertEntry.TARGET.encode(), AlertEntry.ALERT.encode()
    return [
        Queued(text(entry_id), text(fields[target]), fields[alert])
        for entry_id, fields in raw
        if fields and target in fields and alert in fields
    ]


def _since(record: dict[str, Any]) -> int:
    since = record.get("since")
    return since if isinstance(since, int) else 0


def _decoded(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None

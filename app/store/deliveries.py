"""Deliveries in Redis: claiming, settling, dead letters and replay.

Each delivery is one event on its way to one subscription. It lives in a hash and is, at any
time, in exactly one of its subscription's sets: ready (by due time), in flight (by lease
expiry) or dead letters. Every move between them is one Lua script.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from app.store.client import Store, now_ms, text
from app.store.latency import bucket_field
from app.store.schema import Enablement, Keys
from app.store.scripts import register

REPLAY_CHUNK = 500
RETRY_NOW_CHUNK = 1000  # deliveries made due per script run (each run blocks Redis briefly)


@dataclass(frozen=True)
class Claimed:
    """A delivery in flight for this process. `event` is the event already decoded, when the
    router put it in flight as it routed it (the deliverer decodes `event_json` otherwise);
    nobody changes it. `trace`: the trace context its attempts' spans are children of (a W3C
    traceparent, "" for none)."""

    delivery_id: str
    event_json: bytes
    attempts: int
    event: dict[str, Any] | None = None
    trace: str = ""


@dataclass(frozen=True)
class Settlement:
    """The outcome of one attempt: delivered | retry (at `due_ms`) | dead | gone."""

    sub: str
    delivery_id: str
    outcome: str
    due_ms: int = 0
    status: int | None = None
    error: str = ""
    event_id: str = ""
    record: bytes = b"{}"  # the attempt, for the delivery log
    latency_ms: int = 0  # from receipt at ingest to delivered
    breaker: Sequence[int] | None = None  # its subscription's rule (Subscription.breaker)


@dataclass(frozen=True)
class RetryNow:
    """What "retry now" did: the breaker it closed, as it was (closed | open | half-open), how
    many waiting deliveries it made due, and the subscription's state (a disabled one stays
    disabled)."""

    breaker_was: str
    made_due: int
    state: str


class Deliveries:
    """The deliverer's side of the store, and the operator's actions on deliveries."""

    def __init__(self, store: Store, retention_s: int) -> None:
        self.store = store
        self.retention_s = retention_s
        self.client = store.client
        self.keys: Keys = store.keys
        self._claim = register(self.client, self.keys, "claim.lua")
        self._settle = register(self.client, self.keys, "settle.lua")
        self._reclaim = register(self.client, self.keys, "reclaim.lua", rules=False)
        self._replay = register(self.client, self.keys, "replay.lua")
        self._set_state = register(self.client, self.keys, "set_state.lua")
        self._dlq_delete = register(self.client, self.keys, "dlq_delete.lua", rules=False)
        self._retry_now = register(self.client, self.keys, "retry_now.lua")

    async def claim(
        self, sub: str, limit: int, lease_s: float, max_per_second: float = 0
    ) -> tuple[list[Claimed], int]:
        """Up to `limit` due deliveries, and the next due time (ms, -1 for none)."""
        now = now_ms()
        args = {
            "sub": sub,
            "now": now,
            "leaseUntil": now + int(lease_s * 1000),
            "limit": limit,
            "maxPerSecond": max_per_second,
        }
        items, next_due = await self.store.script(self._claim, [], [orjson.dumps(args)])
        claimed = [Claimed(text(i), e, int(a), None, text(t or b"")) for i, e, a, t in items]
        return claimed, int(float(next_due))

    async def settle(self, outcomes: Sequence[Settlement]) -> list[bool]:
        """Record a batch of attempt outcomes in one script run (settle.lua); each attempt's
        record goes as it is, an argument of its own."""
        plan = {
            "now": now_ms(),
            "retentionS": self.retention_s,
            "outcomes": [_outcome(o) for o in outcomes],
        }
        breakers = {o.sub: o.breaker for o in outcomes if o.breaker is not None}
        args = [orjson.dumps(plan), orjson.dumps(breakers), *(o.record for o in outcomes)]
        return [bool(r) for r in await self.store.script(self._settle, [], args)]

    async def reclaim_expired(self, sub: str) -> int:
        return int(await self.store.script(self._reclaim, [], [sub, now_ms()]))

    async def replay(self, delivery_ids: Sequence[str]) -> int:
        total = 0
        for start in range(0, len(delivery_ids), REPLAY_CHUNK):
            chunk = list(delivery_ids[start : start + REPLAY_CHUNK])
            args = orjson.dumps({"now": now_ms(), "ids": chunk})
            total += int(await self.store.script(self._replay, [], [args]))
        return total

    async def replay_subscription(self, sub: str) -> int:
        ids = await self.store.guard(lambda: self.client.zrange(self.keys.dlq(sub), 0, -1))
        await self.set_state(sub, Enablement.ENABLED, keep_paused=True)
        return await self.replay([text(i) for i in ids])  # type: ignore[arg-type]

    async def set_state(
        self, sub: str, state: Enablement, reason: str = "", *, keep_paused: bool = False
    ) -> Enablement:
        """Enable (its failures forgotten: state.lua), disable or pause a subscription (with
        `keep_paused`, enabling leaves a paused one paused); returns its state before."""
        args = {
            "sub": sub,
            "state": state,
            "reason": reason or ("by an operator" if state == Enablement.PAUSED else ""),
            "now": now_ms(),
            "keepPaused": keep_paused,
        }
        return Enablement(text(await self.store.script(self._set_state, [], [orjson.dumps(args)])))

    async def delete_dead(self, delivery_id: str) -> bool:
        return bool(await self.store.script(self._dlq_delete, [], [delivery_id]))

    async def retry_now(self, sub: str) -> RetryNow:
        """Close the breaker and make every waiting delivery due now (retry_now.lua); held
        per-order deliveries stay behind their order's released one."""
        runs: list[Any] = []
        while not runs or runs[-1][1] == RETRY_NOW_CHUNK:
            args = orjson.dumps({"sub": sub, "now": now_ms(), "chunk": RETRY_NOW_CHUNK})
            runs.append(await self.store.script(self._retry_now, [], [args]))
        made_due = sum(int(count) for _, count, _ in runs)
        return RetryNow(text(runs[0][0]), made_due, text(runs[-1][2]))


def _outcome(o: Settlement) -> dict[str, Any]:
    """One outcome as settle.lua reads it."""
    return {
        "sub": o.sub,
        "id": o.delivery_id,
        "outcome": o.outcome,
        "dueMs": o.due_ms,
        "status": "" if o.status is None else str(o.status),
        "error": o.error,
        "eventId": o.event_id,
        "latencyMs": o.latency_ms,
        "bucket": bucket_field(o.latency_ms),
    }

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
from app.store.schema import Keys
from app.store.scripts import register

REPLAY_CHUNK = 500
RETRY_NOW_CHUNK = 1000  # deliveries made due per script run (each run blocks Redis briefly)


@dataclass(frozen=True)
class Claimed:
    delivery_id: str
    event_json: bytes
    attempts: int


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

    def __init__(self, store: Store, retention_s: int, breakers: dict[str, list[int]]) -> None:
        self.store = store
        self.retention_s = retention_s
        self.breakers = orjson.dumps(breakers)  # per subscription, for the settle script
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
        keys = [self.keys.ready(sub), self.keys.inflight(sub), self.keys.state(sub)]
        args = [now, now + int(lease_s * 1000), limit, self.keys.tag, max_per_second, sub]
        items, next_due = await self.store.script(self._claim, keys, args)
        claimed = [Claimed(text(i), e, int(a)) for i, e, a in items]
        return claimed, int(float(next_due))

    async def settle(self, outcomes: Sequence[Settlement]) -> list[bool]:
        """Record a batch of attempt outcomes in one script run."""
        payload = [
            [
                o.sub,
                o.delivery_id,
                o.outcome,
                o.due_ms,
                "" if o.status is None else str(o.status),
                o.error,
                o.event_id,
                o.record.decode(),
                o.latency_ms,
                bucket_field(o.latency_ms),
            ]
            for o in outcomes
        ]
        args = [self.keys.tag, now_ms(), orjson.dumps(payload), self.retention_s, self.breakers]
        return [bool(r) for r in await self.store.script(self._settle, [self.keys.stats], args)]

    async def reclaim_expired(self, sub: str) -> int:
        keys = [self.keys.inflight(sub), self.keys.ready(sub)]
        return int(await self.store.script(self._reclaim, keys, [now_ms()]))

    async def replay(self, delivery_ids: Sequence[str]) -> int:
        total = 0
        for start in range(0, len(delivery_ids), REPLAY_CHUNK):
            chunk = list(delivery_ids[start : start + REPLAY_CHUNK])
            args: list[Any] = [self.keys.tag, now_ms(), *chunk]
            total += int(await self.store.script(self._replay, [], args))
        return total

    async def replay_subscription(self, sub: str) -> int:
        ids = await self.store.guard(lambda: self.client.zrange(self.keys.dlq(sub), 0, -1))
        await self.set_state(sub, "enabled")
        return await self.replay([text(i) for i in ids])  # type: ignore[arg-type]

    async def set_state(self, sub: str, state: str, reason: str = "") -> None:
        """Enable (its failures forgotten: state.lua) or disable a subscription."""
        args = [state, reason, now_ms()]
        await self.store.script(self._set_state, [self.keys.state(sub)], args)

    async def delete_dead(self, delivery_id: str) -> bool:
        args = [self.keys.tag, delivery_id]
        return bool(await self.store.script(self._dlq_delete, [], args))

    async def retry_now(self, sub: str) -> RetryNow:
        """Close the breaker and make every waiting delivery due now (retry_now.lua); held
        per-order deliveries stay behind their order's released one."""
        keys = [self.keys.state(sub), self.keys.ready(sub)]
        runs: list[Any] = []
        while not runs or runs[-1][1] == RETRY_NOW_CHUNK:
            args = [now_ms(), RETRY_NOW_CHUNK]
            runs.append(await self.store.script(self._retry_now, keys, args))
        made_due = sum(int(count) for _, count, _ in runs)
        return RetryNow(text(runs[0][0]), made_due, text(runs[-1][2]))

"""What people read: counters, queue sizes, dead letters, logs and health, all bounded."""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import orjson

from app.store.client import Store, text
from app.store.schema import Keys


class Queries:
    """What the admin API, the stats, the metrics and the dashboard read."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.client = store.client
        self.keys: Keys = store.keys

    async def ingest_per_minute(self, minutes: int) -> list[tuple[int, int]]:
        """(Unix minute, events accepted) for the last `minutes` minutes, oldest first."""
        now = int(time.time() // 60)
        span = list(range(now - minutes + 1, now + 1))
        values = await self.store.guard(
            partial(self.client.mget, [self.keys.ingest_minute(m) for m in span])
        )
        return [(m, int(v or 0)) for m, v in zip(span, values, strict=True)]

    async def health(self, sub: str) -> dict[str, Any]:
        """Oldest undelivered delivery's creation (ms), recent latencies, last error and last
        success (ms)."""

        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zrange(self.keys.pending_age(sub), 0, 0, withscores=True)
                pipe.lrange(self.keys.latencies(sub), 0, -1)
                pipe.hmget(self.keys.state(sub), "lastError", "lastErrorMs", "lastDeliveredMs")
                return list(await pipe.execute())

        oldest, latencies, (last_error, error_ms, delivered_ms) = await self.store.guard(read)
        samples = []
        for raw in latencies:
            at, _, value = text(raw).partition(":")
            samples.append((int(at), int(value)))
        return {
            "oldestMs": int(oldest[0][1]) if oldest else None,
            "latencies": samples,
            "lastError": text(last_error) if last_error else None,
            "lastErrorMs": int(error_ms) if error_ms else None,
            "lastDeliveredMs": int(delivered_ms) if delivered_ms else None,
        }

    async def latency_histogram(self, sub: str) -> dict[str, int]:
        """The fields of the subscription's latency histogram (app/store/latency.py)."""
        raw = await self.store.guard(partial(self.client.hgetall, self.keys.latency_histogram(sub)))
        return {text(k): int(v) for k, v in raw.items()}

    async def recent_attempts(self, count: int) -> list[dict[str, Any]]:
        rows = await self.store.guard(
            partial(self.client.lrange, self.keys.recent_attempts, 0, count - 1)
        )
        return [orjson.loads(row) for row in rows]

    async def event(self, event_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """An event as routed and its attempts (newest first), while the log keeps them."""

        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.get(self.keys.event(event_id))
                pipe.lrange(self.keys.event_log(event_id), 0, -1)
                return list(await pipe.execute())

        raw, attempts = await self.store.guard(read)
        event = orjson.loads(raw) if raw else None
        return event, [orjson.loads(a) for a in attempts]

    async def order_history(self, order_id: str) -> list[tuple[dict[str, Any], list[Any]]]:
        """An order's events still in the log, oldest first, each with its attempts."""
        members = await self.store.guard(partial(self.client.smembers, self.keys.order(order_id)))
        history = []
        for event_id in sorted(text(m) for m in members):
            event, attempts = await self.event(event_id)
            if event is not None:
                history.append((event, attempts))
        history.sort(key=lambda pair: str(pair[0]["receivedAt"]))
        return history

    async def stats(self) -> dict[str, int]:
        raw = await self.store.guard(partial(self.client.hgetall, self.keys.stats))
        return {text(k): int(v) for k, v in raw.items()}

    async def dead_letters(
        self, subs: Sequence[str], offset: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of the dead-letter queues of `subs` together, newest first (by when they
        died), and their total size. Only the page's deliveries are read."""
        start = offset if len(subs) == 1 else 0  # one queue: Redis pages it; more: merged here

        async def ranked() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                for sub in subs:
                    pipe.zrevrange(self.keys.dlq(sub), start, offset + limit - 1, withscores=True)
                    pipe.zcard(self.keys.dlq(sub))
                return list(await pipe.execute())

        replies = await self.store.guard(ranked)
        merged = sorted((pair for reply in replies[::2] for pair in reply), key=lambda p: -p[1])
        ids = [text(member) for member, _ in merged[offset - start : offset - start + limit]]

        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                for delivery_id in ids:
                    pipe.hgetall(self.keys.delivery(delivery_id))
                return list(await pipe.execute())

        rows = await self.store.guard(read)
        return [_delivery_view(row) for row in rows if row], sum(int(n) for n in replies[1::2])

    async def subscription_counts(self, sub: str) -> dict[str, Any]:
        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zcard(self.keys.ready(sub))
                pipe.zcard(self.keys.inflight(sub))
                pipe.zcard(self.keys.dlq(sub))
                pipe.hgetall(self.keys.state(sub))
                pipe.zcard(self.keys.pending_age(sub))
                return list(await pipe.execute())

        queued, in_flight, dead, state, undelivered = await self.store.guard(read)
        state = {text(k): text(v) for k, v in state.items()}
        return {
            "state": state.get("state", "enabled"),
            "reason": state.get("reason") or None,
            "breaker": state.get("breaker", "closed"),
            "consecutiveFailures": int(state.get("failures", 0)),
            "breakerOpenUntil": _seconds(state.get("openUntil")),
            "nextProbeAt": _next_probe(state),
            "queued": int(queued),
            "inFlight": int(in_flight),
            "deadLetters": int(dead),
            # per-order: waiting their order's turn (or its reorder window)
            "held": max(0, int(undelivered) - int(queued) - int(in_flight)),
        }


def _seconds(ms: str | None) -> float | None:
    return int(ms) / 1000 if ms else None


def _next_probe(state: dict[str, str]) -> float | None:
    """When the breaker lets its next probe go (Unix s): an open one at the end of its cooldown,
    a half-open one (a probe in flight) when that probe's lease ends; None when closed."""
    field = {"open": "openUntil", "half-open": "probeUntil"}.get(state.get("breaker", ""))
    return _seconds(state.get(field)) if field else None


def _delivery_view(row: dict[bytes, bytes]) -> dict[str, Any]:
    fields = {text(k): text(v) for k, v in row.items()}
    status = fields.get("lastStatus")
    return {
        "id": fields["id"],
        "eventId": fields["eventId"],
        "orderId": fields.get("orderId"),
        "subscription": fields["sub"],
        "attempts": int(fields.get("attempts", 0)),
        "lastStatus": int(status) if status else None,
        "lastError": fields.get("lastError") or None,
        "deadAt": _seconds(fields.get("deadMs")),
        "overtakenBy": fields["overtakenBy"].split(",") if fields.get("overtakenBy") else [],
    }

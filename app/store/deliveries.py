"""Deliveries in Redis: routing ingest entries, claiming, settling, dead letters and replay.

Each delivery is one event on its way to one subscription. It lives in a hash and is, at any
time, in exactly one of its subscription's sets: ready (by due time), in flight (by lease
expiry) or dead letters. Every move between them is one Lua script.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
from redis.exceptions import ResponseError

from app.events import POSITION_TICKS_DIGITS, order_key
from app.store.client import Store, load_script
from app.store.keys import Keys
from app.store.latency import bucket_field

REPLAY_CHUNK = 500
RETRY_NOW_CHUNK = 1000  # deliveries made due per script run (each run blocks Redis briefly)
DEFAULT_LOG_RETENTION_S = 7 * 24 * 3600
# The stats counter `<subscription>:single_fire_suppressed`: matches of an order that had fired
# already for a single-fire subscription (route.lua counts them; no delivery is made).
SINGLE_FIRE_SUPPRESSED = "single_fire_suppressed"


def now_ms() -> int:
    return int(time.time() * 1000)


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


@dataclass
class Planned:
    """A delivery to create; with a lease it goes straight in flight, claimed by this process."""

    delivery_id: str
    sub: str
    lease_until_ms: int = 0
    # per-order subscriptions: [order key, position, reorder window ms, drop stale 0|1]
    ordered: list[Any] | int = 0
    # why the router could not plan it: route.lua dead-letters it at once with this reason
    error: str = ""
    # single fire: how long its order's first match is remembered (0: every match is delivered)
    single_fire_s: int = 0


@dataclass(frozen=True)
class Routed:
    """One ingest entry and the deliveries it makes."""

    entry_id: str
    event: dict[str, Any]
    event_json: bytes
    deliveries: Sequence[Planned]


def shared_rules() -> str:
    """The rules the delivery scripts share: the constants of app/events.py they need, the
    stats counters they name, the subscription state's rules (state.lua) and the per-order ones
    (order.lua)."""
    constants = (
        f"local POSITION_TICKS_DIGITS = {POSITION_TICKS_DIGITS}\n"
        f"local SINGLE_FIRE_SUPPRESSED = '{SINGLE_FIRE_SUPPRESSED}'\n"
    )
    return constants + load_script("state.lua") + load_script("order.lua")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class DeliveryStore:
    def __init__(
        self,
        store: Store,
        retention_s: int = DEFAULT_LOG_RETENTION_S,
        breakers: dict[str, list[int]] | None = None,
    ) -> None:
        self.store = store
        self.retention_s = retention_s
        self.breakers = orjson.dumps(breakers or {})  # per subscription, for the settle script
        self.client = store.client
        self.keys: Keys = store.keys
        register = self.client.register_script
        rules = shared_rules()
        self._route = register(rules + load_script("route.lua"))
        self._claim = register(rules + load_script("claim.lua"))
        self._settle = register(rules + load_script("settle.lua"))
        self._reclaim = register(load_script("reclaim.lua"))
        self._replay = register(rules + load_script("replay.lua"))
        self._set_state = register(rules + load_script("set_state.lua"))
        self._dlq_delete = register(load_script("dlq_delete.lua"))
        self._retry_now = register(rules + load_script("retry_now.lua"))
        self._feed_take = register(load_script("feed_take.lua"))
        self._feed_commit = register(load_script("feed_commit.lua"))

    # -- the router's side -------------------------------------------------------------------

    async def ensure_group(self) -> None:
        try:
            await self.store.guard(
                lambda: self.client.xgroup_create(
                    self.keys.ingest_stream, Keys.ROUTER_GROUP, id="0", mkstream=True
                )
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_new(self, consumer: str, count: int, block_ms: int) -> list[tuple[str, bytes]]:
        reply: Any = await self.store.guard(
            lambda: self.client.xreadgroup(
                Keys.ROUTER_GROUP, consumer, {self.keys.ingest_stream: ">"}, count, block_ms
            )
        )
        entries: list[Any] = [e for _, stream_entries in reply or [] for e in stream_entries]
        return [(_text(i), f[b"event"]) for i, f in entries]

    async def reclaim_entries(
        self, consumer: str, idle_ms: int, count: int
    ) -> list[tuple[str, bytes]]:
        """Take over entries another router read but did not route within `idle_ms`."""
        reply = await self.store.guard(
            lambda: self.client.xautoclaim(
                self.keys.ingest_stream, Keys.ROUTER_GROUP, consumer, idle_ms, "0-0", count
            )
        )
        return [(_text(i), f[b"event"]) for i, f in reply[1] if f]

    async def route(self, routed: Sequence[Routed]) -> tuple[set[str], set[str]]:
        """Create the deliveries and acknowledge the entries; returns the delivery ids claimed
        and the entry ids deferred (an earlier entry of their order is not routed yet)."""
        payload = []
        for r in routed:
            event_id, order_id = r.event["id"], r.event["orderId"]
            event_json = r.event_json.decode()
            deliveries = [
                [
                    d.delivery_id,
                    d.sub,
                    event_id,
                    order_id,
                    event_json,
                    d.lease_until_ms,
                    d.ordered,
                    d.error,
                    self._fired(d, r.event),
                ]
                for d in r.deliveries
            ]
            payload.append([r.entry_id, deliveries, event_id, order_id, event_json])
        args = [
            Keys.ROUTER_GROUP,
            now_ms(),
            self.keys.tag,
            orjson.dumps(payload),
            self.retention_s,
            self.store.dedupe_window_s,
        ]
        keys = [self.keys.ingest_stream]
        claimed, deferred = await self.store.script(self._route, keys, args)
        return {_text(i) for i in claimed}, {_text(i) for i in deferred}

    def _fired(self, planned: Planned, event: dict[str, Any]) -> list[Any] | int:
        """route.lua's `fired`: the order's fired key and its retention, for single fire."""
        if not planned.single_fire_s:
            return 0
        return [self.keys.fired(planned.sub, order_key(event)), planned.single_fire_s]

    async def count(self, increments: dict[str, int]) -> None:
        """Add to the counters in the stats hash."""

        async def add() -> None:
            async with self.client.pipeline(transaction=False) as pipe:
                for name, n in increments.items():
                    pipe.hincrby(self.keys.stats, name, n)
                await pipe.execute()

        await self.store.guard(add)

    async def stats(self) -> dict[str, int]:
        raw = await self.store.guard(partial(self.client.hgetall, self.keys.stats))
        return {_text(k): int(v) for k, v in raw.items()}

    # -- the deliverer's side ----------------------------------------------------------------

    async def claim(
        self, sub: str, limit: int, lease_s: float, max_per_second: float = 0
    ) -> tuple[list[Claimed], int]:
        """Up to `limit` due deliveries, and the next due time (ms, -1 for none)."""
        now = now_ms()
        keys = [self.keys.ready(sub), self.keys.inflight(sub), self.keys.state(sub)]
        args = [now, now + int(lease_s * 1000), limit, self.keys.tag, max_per_second, sub]
        items, next_due = await self.store.script(self._claim, keys, args)
        claimed = [Claimed(_text(i), e, int(a)) for i, e, a in items]
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

    # -- pull subscriptions (Feed v3 style) -------------------------------------------------

    async def feed_take(
        self, sub: str, maxlot: int, visibility_s: float, retention_s: float
    ) -> tuple[list[tuple[str, bytes]], int]:
        """Up to `maxlot` items, hidden until the returned time (ms)."""
        now = now_ms()
        hidden_until = now + int(visibility_s * 1000)
        keys = [self.keys.ready(sub), self.keys.inflight(sub), self.keys.stats]
        args = [now, hidden_until, maxlot, self.keys.tag, int(retention_s * 1000), sub]
        items = await self.store.script(self._feed_take, keys, args)
        return [(_text(i), e) for i, e in items], hidden_until

    async def feed_commit(self, sub: str, receipts: Sequence[str]) -> int:
        """Commit items by "<delivery id>~<hidden until>" receipts."""
        keys = [self.keys.inflight(sub), self.keys.stats]
        return int(
            await self.store.script(self._feed_commit, keys, [self.keys.tag, sub, *receipts])
        )

    # -- admin -------------------------------------------------------------------------------

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
        return await self.replay([_text(i) for i in ids])  # type: ignore[arg-type]

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
        return RetryNow(_text(runs[0][0]), made_due, _text(runs[-1][2]))

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
        ids = [_text(member) for member, _ in merged[offset - start : offset - start + limit]]

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
        state = {_text(k): _text(v) for k, v in state.items()}
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
    fields = {_text(k): _text(v) for k, v in row.items()}
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


class OpsQueries:
    """What the stats, metrics and dashboard read: counters, logs and health, all bounded."""

    def __init__(self, deliveries: DeliveryStore) -> None:
        self.store = deliveries.store
        self.client = deliveries.client
        self.keys = deliveries.keys

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
            at, _, value = _text(raw).partition(":")
            samples.append((int(at), int(value)))
        return {
            "oldestMs": int(oldest[0][1]) if oldest else None,
            "latencies": samples,
            "lastError": _text(last_error) if last_error else None,
            "lastErrorMs": int(error_ms) if error_ms else None,
            "lastDeliveredMs": int(delivered_ms) if delivered_ms else None,
        }

    async def latency_histogram(self, sub: str) -> dict[str, int]:
        """The fields of the subscription's latency histogram (app/store/latency.py)."""
        raw = await self.store.guard(partial(self.client.hgetall, self.keys.latency_histogram(sub)))
        return {_text(k): int(v) for k, v in raw.items()}

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
        for event_id in sorted(_text(m) for m in members):
            event, attempts = await self.event(event_id)
            if event is not None:
                history.append((event, attempts))
        history.sort(key=lambda pair: str(pair[0]["receivedAt"]))
        return history

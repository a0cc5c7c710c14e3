"""What people read: counters, queue sizes, dead letters, logs and health, all bounded.

Each method but the last few returns a `Read` (app/store/reads.py): commands and the pure
function that parses their replies, no I/O. Pages combine them and `Queries.read` runs them in
one pipeline, so a page costs one round trip however many subscriptions it shows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from redis.asyncio.client import Pipeline

from app.store.client import Store, text
from app.store.reads import Read, gather, single
from app.store.schema import Breaker, Delivery, Enablement, Keys, State

T = TypeVar("T")

Event = tuple[dict[str, Any] | None, list[dict[str, Any]]]  # as routed (None: gone), attempts


@dataclass(frozen=True)
class Ranking:
    """A page of dead letters of some subscriptions, merged newest first: their delivery ids,
    and the queues' total size."""

    ids: list[str]
    total: int


class Queries:
    """What the admin API, the stats, the metrics and the dashboard read."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.client = store.client
        self.keys: Keys = store.keys

    async def read(self, read: Read[T]) -> T:
        """`read`'s value, in one round trip (none when it has no commands)."""
        if read.size == 0:
            return read.parse([])

        async def execute() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                read.queue(pipe)
                if len(pipe) != read.size:  # a Read that miscounts its commands: a bug here
                    raise RuntimeError(f"a read queued {len(pipe)} commands, not {read.size}")
                return list(await pipe.execute())

        return read.parse(await self.store.guard(execute))

    def counters(self) -> Read[dict[str, int]]:
        """The stats hash (Counter, stat_field)."""
        return single(lambda pipe: pipe.hgetall(self.keys.stats), _ints)

    def ingest_per_minute(self, minutes: int) -> Read[list[tuple[int, int]]]:
        """(Unix minute, events accepted) for the last `minutes` minutes, oldest first."""
        now = int(time.time() // 60)
        span = list(range(now - minutes + 1, now + 1))
        keys = [self.keys.ingest_minute(m) for m in span]
        return single(
            lambda pipe: pipe.mget(keys),
            lambda values: [(m, int(v or 0)) for m, v in zip(span, values, strict=True)],
        )

    def health(self, sub: str) -> Read[dict[str, Any]]:
        """Oldest undelivered delivery's creation (ms), recent latencies, last error and last
        success (ms)."""

        def queue(pipe: Pipeline) -> None:
            pipe.zrange(self.keys.pending_age(sub), 0, 0, withscores=True)
            pipe.lrange(self.keys.latencies(sub), 0, -1)
            pipe.hmget(
                self.keys.state(sub), State.LAST_ERROR, State.LAST_ERROR_MS, State.LAST_DELIVERED_MS
            )

        return Read(queue, 3, health_view)

    def latency_histogram(self, sub: str) -> Read[dict[str, int]]:
        """The fields of the subscription's latency histogram (app/store/latency.py)."""
        return single(lambda pipe: pipe.hgetall(self.keys.latency_histogram(sub)), _ints)

    def recent_attempts(self, count: int) -> Read[list[dict[str, Any]]]:
        return single(
            lambda pipe: pipe.lrange(self.keys.recent_attempts, 0, count - 1),
            lambda rows: [orjson.loads(row) for row in rows],
        )

    def subscription_counts(self, sub: str) -> Read[dict[str, Any]]:
        def queue(pipe: Pipeline) -> None:
            pipe.zcard(self.keys.ready(sub))
            pipe.zcard(self.keys.inflight(sub))
            pipe.zcard(self.keys.dlq(sub))
            pipe.hgetall(self.keys.state(sub))
            pipe.zcard(self.keys.pending_age(sub))

        return Read(queue, 5, counts_view)

    def dead_letter_ranking(
        self, subs: tuple[str, ...] | list[str], offset: int, limit: int
    ) -> Read[Ranking]:
        """Which dead letters of `subs` together are on the page (newest first, by when they
        died), and how many there are; `deliveries` reads the page's."""
        if isinstance(subs, str):  # a str is a Sequence[str] of its characters
            raise TypeError("subs is a tuple or list of subscription ids, not one str")
        subs = tuple(subs)
        start = offset if len(subs) == 1 else 0  # one queue: Redis pages it; more: merged here

        def queue(pipe: Pipeline) -> None:
            for sub in subs:
                pipe.zrevrange(self.keys.dlq(sub), start, offset + limit - 1, withscores=True)
                pipe.zcard(self.keys.dlq(sub))

        def parse(replies: Sequence[Any]) -> Ranking:
            return ranking(replies, offset - start, limit)

        return Read(queue, 2 * len(subs), parse)

    def deliveries(self, ids: Sequence[str]) -> Read[list[dict[str, Any]]]:
        """The deliveries `ids` as the dead-letter views show them; those gone left out."""

        def queue(pipe: Pipeline) -> None:
            for delivery_id in ids:
                pipe.hgetall(self.keys.delivery(delivery_id))

        return Read(queue, len(ids), lambda rows: [_delivery_view(row) for row in rows if row])

    def order_events(self, order_id: str) -> Read[list[str]]:
        """The ids of an order's events still in the log, sorted."""
        return single(
            lambda pipe: pipe.smembers(self.keys.order(order_id)),
            lambda members: sorted(text(m) for m in members),
        )

    def events(self, event_ids: Sequence[str]) -> Read[list[Event]]:
        """Events as routed and their attempts (newest first), while the log keeps them."""

        def one(event_id: str) -> Read[Event]:
            def queue(pipe: Pipeline) -> None:
                pipe.get(self.keys.event(event_id))
                pipe.lrange(self.keys.event_log(event_id), 0, -1)

            return Read(queue, 2, lambda replies: event_view(replies[0], replies[1]))

        return gather([one(event_id) for event_id in event_ids])

    async def dead_letters(
        self, subs: tuple[str, ...] | list[str], offset: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of the dead-letter queues of `subs` together, newest first (by when they
        died), and their total size. Only the page's deliveries are read: two round trips."""
        page = await self.read(self.dead_letter_ranking(subs, offset, limit))
        return await self.read(self.deliveries(page.ids)), page.total

    async def event(self, event_id: str) -> Event:
        """An event as routed and its attempts (newest first), while the log keeps them."""
        found = await self.read(self.events([event_id]))
        return found[0]

    async def order_history(self, order_id: str) -> list[tuple[dict[str, Any], list[Any]]]:
        """An order's events still in the log, oldest first, each with its attempts: two round
        trips (the order's event ids, then all of its events)."""
        event_ids = await self.read(self.order_events(order_id))
        return history(await self.read(self.events(event_ids)))


def health_view(replies: Sequence[Any]) -> dict[str, Any]:
    """`Queries.health`'s replies as its value."""
    oldest, latencies, (last_error, error_ms, delivered_ms) = replies
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


def counts_view(replies: Sequence[Any]) -> dict[str, Any]:
    """`Queries.subscription_counts`' replies as its value."""
    queued, in_flight, dead, raw_state, undelivered = replies
    state = {text(k): text(v) for k, v in raw_state.items()}
    return {
        "state": state.get(State.STATE, Enablement.ENABLED.value),
        "reason": state.get(State.REASON) or None,
        "breaker": state.get(State.BREAKER, Breaker.CLOSED.value),
        "consecutiveFailures": int(state.get(State.FAILURES, 0)),
        "breakerOpenUntil": _seconds(state.get(State.OPEN_UNTIL)),
        "nextProbeAt": _next_probe(state),
        "queued": int(queued),
        "inFlight": int(in_flight),
        "deadLetters": int(dead),
        # per-order: waiting their order's turn (or its reorder window)
        "held": max(0, int(undelivered) - int(queued) - int(in_flight)),
    }


def ranking(replies: Sequence[Any], skip: int, limit: int) -> Ranking:
    """The dead-letter page from each queue's (top entries with scores, size) replies: the
    entries merged newest first, `skip` of them passed over, `limit` kept."""
    merged = sorted((pair for reply in replies[::2] for pair in reply), key=lambda p: -p[1])
    ids = [text(member) for member, _ in merged[skip : skip + limit]]
    return Ranking(ids, sum(int(n) for n in replies[1::2]))


def event_view(raw: bytes | None, attempts: Sequence[bytes]) -> Event:
    return (orjson.loads(raw) if raw else None), [orjson.loads(a) for a in attempts]


def history(events: Sequence[Event]) -> list[tuple[dict[str, Any], list[Any]]]:
    """The events still in the log (in id order), oldest first by receipt."""
    found = [(event, attempts) for event, attempts in events if event is not None]
    found.sort(key=lambda pair: str(pair[0]["receivedAt"]))
    return found


def _ints(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {text(k): int(v) for k, v in raw.items()}


def _seconds(ms: str | None) -> float | None:
    return int(ms) / 1000 if ms else None


def _next_probe(state: dict[str, str]) -> float | None:
    """When the breaker lets its next probe go (Unix s): an open one at the end of its cooldown,
    a half-open one (a probe in flight) when that probe's lease ends; None when closed."""
    until: dict[str, str] = {Breaker.OPEN: State.OPEN_UNTIL, Breaker.HALF_OPEN: State.PROBE_UNTIL}
    field = until.get(state.get(State.BREAKER, ""))
    return _seconds(state.get(field)) if field else None


def _delivery_view(row: dict[bytes, bytes]) -> dict[str, Any]:
    fields = {text(k): text(v) for k, v in row.items()}
    status = fields.get(Delivery.LAST_STATUS)
    overtaken = fields.get(Delivery.OVERTAKEN_BY)
    return {
        "id": fields[Delivery.ID],
        "eventId": fields[Delivery.EVENT_ID],
        "orderId": fields.get(Delivery.ORDER_ID),
        "subscription": fields[Delivery.SUB],
        "attempts": int(fields.get(Delivery.ATTEMPTS, 0)),
        "lastStatus": int(status) if status else None,
        "lastError": fields.get(Delivery.LAST_ERROR) or None,
        "deadAt": _seconds(fields.get(Delivery.DEAD_MS)),
        "overtakenBy": overtaken.split(",") if overtaken else [],
    }

"""Routing in Redis: reading the ingest stream and turning its entries into deliveries.

The router (app/router.py) reads entries, plans each entry's deliveries, and `route` creates
them and acknowledges the entries in one script run (route.lua).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec

from app.events import order_key, received_ms
from app.ordering import OrderPlace
from app.store.client import Store, now_ms, text
from app.store.schema import Entry, Keys
from app.store.scripts import register


class Planned(msgspec.Struct, rename="camel", omit_defaults=True):
    """A delivery to create; with a lease it goes straight in flight, claimed by this process.
    Encoded as route.lua reads it (its names are that script's)."""

    delivery_id: str = msgspec.field(name="id")
    sub: str
    lease_until_ms: int = msgspec.field(default=0, name="lease")
    # its subscription's max_per_second, for admission (admission.lua's token bucket)
    max_per_second: float = msgspec.field(default=0, name="rate")
    # per-order subscriptions: its place in its order
    ordered: OrderPlace | None = None
    # why the router could not plan it: route.lua dead-letters it at once with this reason
    error: str = ""
    # single fire: how long its order's first match is remembered (0: every match is delivered)
    single_fire_s: int = 0


class _Entry(msgspec.Struct, rename="camel", omit_defaults=True):
    entry: str
    event_id: str
    order_id: str
    order: str  # app/events.py's order_key
    received_ms: int  # app/events.py's received_ms: the replay index's score
    deliveries: Sequence[Planned]
    trace: str = ""  # the trace context its deliveries keep (D.tp), if any


class _RoutePlan(msgspec.Struct, rename="camel"):
    """route.lua's ARGV[1]; the entries' event JSON follows it, one argument each."""

    group: str
    now: int
    retention_s: int
    window_s: int
    entries: list[_Entry]


class StreamEntry(NamedTuple):
    """An ingest stream entry as read: its id, its event's JSON and its trace context (a W3C
    traceparent, "" for none: written before tracing, or with tracing off)."""

    entry_id: str
    raw: bytes
    trace: str = ""


def _stream_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> StreamEntry:
    return StreamEntry(text(entry_id), fields[b"event"], text(fields.get(_TRACE, b"")))


_TRACE = Entry.TRACE.encode()


@dataclass(frozen=True)
class Routed:
    """One ingest entry and the deliveries it makes; `trace`, the trace context they keep."""

    entry_id: str
    event: dict[str, Any]
    event_json: bytes
    deliveries: Sequence[Planned]
    trace: str = ""


class Routing:
    """The router's side of the store."""

    def __init__(self, store: Store, retention_s: int) -> None:
        self.store = store
        self.retention_s = retention_s
        self.client = store.client
        self.keys: Keys = store.keys
        self._route = register(self.client, self.keys, "route.lua")

    async def ensure_group(self) -> None:
        await self.store.ensure_group(self.keys.ingest_stream, Keys.ROUTER_GROUP)

    async def read_new(self, consumer: str, count: int, block_ms: int) -> list[StreamEntry]:
        reply: Any = await self.store.guard(
            lambda: self.client.xreadgroup(
                Keys.ROUTER_GROUP, consumer, {self.keys.ingest_stream: ">"}, count, block_ms
            )
        )
        entries: list[Any] = [e for _, stream_entries in reply or [] for e in stream_entries]
        return [_stream_entry(i, f) for i, f in entries]

    async def reclaim_entries(self, consumer: str, idle_ms: int, count: int) -> list[StreamEntry]:
        """Take over entries another router read but did not route within `idle_ms`."""
        reply = await self.store.guard(
            lambda: self.client.xautoclaim(
                self.keys.ingest_stream, Keys.ROUTER_GROUP, consumer, idle_ms, "0-0", count
            )
        )
        return [_stream_entry(i, f) for i, f in reply[1] if f]

    async def route(self, routed: Sequence[Routed]) -> tuple[set[str], set[str]]:
        """Create the deliveries and acknowledge the entries; returns the delivery ids claimed
        and the entry ids deferred (an earlier entry of their order is not routed yet)."""
        plan = _RoutePlan(
            Keys.ROUTER_GROUP,
            now_ms(),
            self.retention_s,
            self.store.dedupe_window_s,
            [
                _Entry(
                    r.entry_id,
                    r.event["id"],
                    r.event["orderId"],
                    order_key(r.event),
                    received_ms(r.event),
                    r.deliveries,
                    r.trace,
                )
                for r in routed
            ],
        )
        args = [msgspec.json.encode(plan), *(r.event_json for r in routed)]
        keys = [self.keys.ingest_stream]
        claimed, deferred = await self.store.script(self._route, keys, args)
        return {text(i) for i in claimed}, {text(i) for i in deferred}

    async def count(self, increments: dict[str, int]) -> None:
        """Add to the counters in the stats hash."""

        async def add() -> None:
            async with self.client.pipeline(transaction=False) as pipe:
                for name, n in increments.items():
                    pipe.hincrby(self.keys.stats, name, n)
                await pipe.execute()

        await self.store.guard(add)

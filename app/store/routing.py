"""Routing in Redis: reading the ingest stream and turning its entries into deliveries.

The router (app/router.py) reads entries, plans each entry's deliveries, and `route` creates
them and acknowledges the entries in one script run (route.lua).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import ResponseError

from app.events import order_key
from app.store.client import Store, now_ms, text
from app.store.schema import Keys
from app.store.scripts import register


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


class Routing:
    """The router's side of the store."""

    def __init__(self, store: Store, retention_s: int) -> None:
        self.store = store
        self.retention_s = retention_s
        self.client = store.client
        self.keys: Keys = store.keys
        self._route = register(self.client, self.keys, "route.lua")

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
        return [(text(i), f[b"event"]) for i, f in entries]

    async def reclaim_entries(
        self, consumer: str, idle_ms: int, count: int
    ) -> list[tuple[str, bytes]]:
        """Take over entries another router read but did not route within `idle_ms`."""
        reply = await self.store.guard(
            lambda: self.client.xautoclaim(
                self.keys.ingest_stream, Keys.ROUTER_GROUP, consumer, idle_ms, "0-0", count
            )
        )
        return [(text(i), f[b"event"]) for i, f in reply[1] if f]

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
        return {text(i) for i in claimed}, {text(i) for i in deferred}

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

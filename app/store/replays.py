"""A replay of a time range in Redis: the routed events by receipt time (Keys.received), read in
chunks; the chunk's deliveries made again (replay_range.lua); the job's progress (Keys.job).

The job itself (which events match, when to stop) is app/subscriptions/replay.py's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgspec

from app.ordering import OrderPlace
from app.store.client import Store, now_ms, text
from app.store.schema import Job, JobState, Keys
from app.store.scripts import register

# A job's hash is kept this long after its last write (its end, or its last heartbeat).
JOB_KEPT_S = 24 * 3600


class Again(msgspec.Struct, rename="camel", omit_defaults=True):
    """A delivery to make again, as replay_range.lua reads it."""

    delivery_id: str = msgspec.field(name="id")
    event_id: str
    order_id: str
    order: str  # app/events.py's order_key
    ordered: OrderPlace | None = None  # per-order subscriptions: its place in its order


class _Chunk(msgspec.Struct, rename="camel"):
    """replay_range.lua's ARGV[1]; the deliveries' event JSON follows, one argument each."""

    sub: str
    job: str
    now: int
    keep_s: int
    looked: int
    deliveries: Sequence[Again]


@dataclass(frozen=True)
class Made:
    """What one chunk did: deliveries made, skipped (they still exist), and whether the
    subscription is gone (then nothing was made)."""

    replayed: int
    skipped: int
    gone: bool


@dataclass
class Cursor:
    """Where a read of the index is: the receipt time (ms) of the last id read and how many ids
    of that time were read (the next read starts there, skipping them)."""

    score: int
    same: int = 0

    def advance(self, rows: Sequence[tuple[str, int]]) -> None:
        for _, score in rows:
            if score == self.score:
                self.same += 1
            else:
                self.score, self.same = score, 1


class Replays:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.client = store.client
        self.keys: Keys = store.keys
        self._make = register(self.client, self.keys, "replay_range.lua")

    async def count(self, since_ms: int, until_ms: int) -> int:
        """Events received in [since, until)."""
        found = await self.store.guard(
            lambda: self.client.zcount(self.keys.received, since_ms, f"({until_ms}")
        )
        return int(found)

    async def received(self, cursor: Cursor, until_ms: int, count: int) -> list[tuple[str, int]]:
        """The next `count` event ids received from the cursor to `until` (excluded), with their
        receipt times, oldest first."""
        rows: list[Any] = await self.store.guard(
            lambda: self.client.zrangebyscore(
                self.keys.received,
                cursor.score,
                f"({until_ms}",
                start=cursor.same,
                num=count,
                withscores=True,
            )
        )
        return [(text(member), int(score)) for member, score in rows]

    async def waiting(self, sub: str) -> int:
        """The subscription's deliveries waiting in its ready set."""
        return int(await self.store.guard(lambda: self.client.zcard(self.keys.ready(sub))))

    async def events(self, ids: Sequence[str]) -> list[bytes | None]:
        """The events' JSON (None for one no longer kept)."""
        if not ids:
            return []
        found: list[Any] = await self.store.guard(
            lambda: self.client.mget([self.keys.event(i) for i in ids])
        )
        return found

    async def make(
        self, sub: str, job: str, looked: int, again: Sequence[tuple[Again, bytes]]
    ) -> Made:
        """Make the deliveries again (those still existing are skipped) and count the chunk's
        progress in the job."""
        chunk = _Chunk(sub, job, now_ms(), JOB_KEPT_S, looked, [a for a, _ in again])
        args = [msgspec.json.encode(chunk), *(raw for _, raw in again)]
        made, skipped, gone = await self.store.script(self._make, [self.keys.job(job)], args)
        return Made(int(made), int(skipped), bool(gone))

    async def begin(self, job: str, fields: Mapping[str, str | int]) -> None:
        """A new job's hash, running, its heartbeat now."""
        values = {**fields, Job.STATE: JobState.RUNNING, Job.HEARTBEAT_MS: now_ms()}
        await self._write(job, values)

    async def end(
        self, job: str, state: JobState, total: int | None, error: str | None = None
    ) -> None:
        """The job ended: its state, its total (the events it looked at, if it knows), why it
        failed."""
        fields: dict[str, str | int] = {Job.STATE: state, Job.ENDED_MS: now_ms()}
        fields |= {Job.TOTAL: total} if total is not None else {}
        await self._write(job, fields | ({Job.ERROR: error} if error else {}))

    async def beat(self, jobs: Sequence[str]) -> None:
        """The jobs' process lives: their heartbeats now."""
        beat = now_ms()

        async def write() -> None:
            async with self.client.pipeline(transaction=False) as pipe:
                for job in jobs:
                    pipe.hset(self.keys.job(job), Job.HEARTBEAT_MS, beat)
                    pipe.expire(self.keys.job(job), JOB_KEPT_S)
                await pipe.execute()

        await self.store.guard(write)

    async def read(self, job: str) -> dict[str, str]:
        """The job's hash (empty: no such job, or it expired)."""
        found = await self.store.guard(lambda: self.client.hgetall(self.keys.job(job)))
        return {text(k): text(v) for k, v in found.items()}

    async def _write(self, job: str, fields: Mapping[str, str | int]) -> None:
        key = self.keys.job(job)

        async def write() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=cast(Any, fields))
                pipe.expire(key, JOB_KEPT_S)
                await pipe.execute()

        await self.store.guard(write)

"""The catalog of subscriptions in Redis: one record per subscription (Keys.subscriptions), a
revision every change raises (Keys.subscriptions_revision) and the audit of changes
(Keys.audit). Every process keeps a live copy of it (app/subscriptions/live.py).

A change is written only if the stored version is the one it was made from (catalog_put.lua),
so two processes changing a subscription at once cannot lose one another's change unseen.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import msgspec
import orjson

from app.store.client import Store, text
from app.store.schema import subscription_pattern
from app.store.scripts import register
from app.subscriptions.secrets import StoredSecrets
from app.subscriptions.spec import SubscriptionSpec

log = logging.getLogger("orderhook.catalog")

AUDIT_KEPT = 1000
DROPPING = -1  # Conflict.found: the id's deleted subscription is still being removed
DROP_CHUNK = 500  # deliveries removed per run of catalog_drop.lua
SCAN_COUNT = 1000

Origin = Literal["config", "api"]


class Record(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A subscription as the catalog keeps it: its spec without secret values, where those
    are (app/subscriptions/secrets.py), its version (raised by every change), where it came
    from, and for one from the config file the digest of the file's spec last applied (a
    start-up with the same file changes nothing, not even what the API changed since)."""

    spec: SubscriptionSpec
    secrets: StoredSecrets
    version: int
    origin: Origin
    created_ms: int
    updated_ms: int
    applied: str = ""


class Conflict(Exception):
    """The stored version was not the one the change was made from; `found` is the stored
    version (0: the id is free, or was deleted meanwhile; DROPPING: a deleted subscription of
    this id is still being removed)."""

    def __init__(self, found: int) -> None:
        super().__init__(f"the subscription's version is {found} now")
        self.found = found


def decode_record(raw: bytes | str) -> Record:
    return msgspec.json.decode(raw, type=Record)


class Catalog:
    """The store's side of the catalog."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.keys = store.keys
        self.client = store.client
        self._put = register(self.client, self.keys, "catalog_put.lua", rules=False)
        self._drop = register(self.client, self.keys, "catalog_drop.lua", rules=False)

    async def revision(self) -> int:
        found = await self.store.guard(lambda: self.client.get(self.keys.subscriptions_revision))
        return int(found or 0)

    async def load(self) -> tuple[int, dict[str, bytes]]:
        """The revision and every record (JSON, by id), read together."""

        async def both() -> list[Any]:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.get(self.keys.subscriptions_revision)
                pipe.hgetall(self.keys.subscriptions)
                return list(await pipe.execute())

        revision, records = await self.store.guard(both)
        return int(revision or 0), {text(k): v for k, v in records.items()}

    async def get(self, sub: str) -> Record | None:
        raw = await self.store.guard(lambda: self.client.hget(self.keys.subscriptions, sub))
        return decode_record(raw) if raw is not None else None

    async def put(self, record: Record, expect: int, audit: dict[str, Any] | None) -> int:
        """Write `record` (version expect + 1) if the stored version is `expect` (0: none is
        stored); Conflict if not. Returns the catalog's new revision."""
        args = {
            "id": record.spec.id,
            "expect": expect,
            "version": record.version,
            "auditKept": AUDIT_KEPT,
        }
        entry = orjson.dumps(audit) if audit is not None else b""
        body = msgspec.json.encode(record)
        done, value = await self.store.script(
            self._put, [self.keys.subscriptions], [orjson.dumps(args), body, entry]
        )
        if not done:
            raise Conflict(int(value))
        return int(value)

    async def delete(self, sub: str, audit: dict[str, Any]) -> int | None:
        """Delete the subscription and everything it had queued; the number of deliveries
        removed (undelivered and dead), or None if there was no such subscription."""
        first = await self._drop_run(sub, audit)
        if first is None:
            return None
        return first[0] + await self.purge(sub)

    async def purge(self, sub: str) -> int:
        """Finish deleting a subscription of this id (the rest of a delete, or one cut short
        by a crash, before the id is used again): its deliveries (counted), then every other
        key of it. Nothing is done unless the id was deleted (a subscription of an older
        orderhook, not in the catalog yet, keeps what it has queued)."""
        dropping = self.keys.subscriptions_dropping
        if not await self.store.guard(partial(self.client.sismember, dropping, sub)):
            return 0
        dropped, more = 0, True
        while more:
            removed, more = await self._drop_run(sub, None) or (0, False)
            dropped += removed
        cursor = 0
        pattern = subscription_pattern(self.keys, sub)
        while True:
            scan = partial(self.client.scan, cursor, match=pattern, count=SCAN_COUNT)
            cursor, found = await self.store.guard(scan)
            if found:
                await self.store.guard(partial(self.client.unlink, *found))
            if cursor == 0:
                await self.store.guard(partial(self.client.srem, dropping, sub))
                return dropped

    async def finish_drops(self) -> int:
        """Finish the deletes a crash cut short (ids still marked as being dropped); the
        deliveries removed. Safe beside a delete still running: while an id is marked, no
        subscription of that id can be made (catalog_put.lua), so nothing new is removed."""
        dropping = await self.store.guard(
            partial(self.client.smembers, self.keys.subscriptions_dropping)
        )
        return sum([await self.purge(text(sub)) for sub in dropping])

    async def _drop_run(self, sub: str, audit: dict[str, Any] | None) -> tuple[int, bool] | None:
        """One run of catalog_drop.lua (the first, removing the record, when given the audit
        entry): the deliveries it removed and whether more are left; None if the first run
        found no record."""
        first = audit is not None
        args = {"id": sub, "first": first, "chunk": DROP_CHUNK, "auditKept": AUDIT_KEPT}
        entry = orjson.dumps(audit) if first else b""
        removed, more = await self.store.script(
            self._drop, [self.keys.subscriptions], [orjson.dumps(args), entry]
        )
        return None if removed < 0 else (int(removed), bool(more))

    async def note(self, audit: dict[str, Any]) -> None:
        """Record an audit entry of a change outside the catalog (a pause, a resume)."""

        async def push() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.lpush(self.keys.audit, orjson.dumps(audit))
                pipe.ltrim(self.keys.audit, 0, AUDIT_KEPT - 1)
                await pipe.execute()

        await self.store.guard(push)

    async def audit(self, offset: int, limit: int) -> list[dict[str, Any]]:
        """Audit entries, newest first."""
        rows: Sequence[bytes | str] = await self.store.guard(
            lambda: self.client.lrange(self.keys.audit, offset, offset + limit - 1)
        )
        return [orjson.loads(row) for row in rows]

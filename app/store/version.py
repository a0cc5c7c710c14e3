"""The layout's version in Redis, checked when a process opens the store.

The data under a key prefix carries the SCHEMA_VERSION (app/store/schema.py) it was written
in, at `Keys.schema_version`. On open:

- no version and no other key under the prefix: a fresh store, stamped with SCHEMA_VERSION;
- no version but data: written before versions were stamped, version 0, migrated;
- an older version: migrated, one MIGRATIONS step at a time, then stamped;
- this version: nothing to do;
- a newer version, or not a version number: SchemaMismatch (`orderhook serve`, `worker` and
  `check` say so in one line and exit 2): a newer orderhook wrote it, or something else did.

The stamp is written with SET NX, so processes starting at once agree on one value. A future
migration that rewrites data must also keep two processes from running it at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import orjson
from redis.exceptions import ResponseError

from app.errors import SchemaMismatch
from app.events import received_ms
from app.store.client import Store, text
from app.store.schema import SCHEMA_VERSION

log = logging.getLogger("orderhook.store")

UNVERSIONED = 0  # data written before the layout's version was stamped
SCAN_COUNT = 1000


async def _stamp_unversioned(store: Store) -> None:
    """Version 0 → 1: the unversioned layout is version 1's; the stamp is all it lacks."""


async def _index_received(store: Store) -> None:
    """Version 1 → 2: the catalog of subscriptions (Keys.subscriptions) is new and is filled
    from the config file at start-up; the events kept for the delivery log (Keys.event) are
    indexed by when they were received (Keys.received), so that a replay of a time range
    finds them too. An event that is not an orderhook event's JSON is left out (and logged)."""
    cursor = 0
    while True:
        scan = partial(
            store.client.scan, cursor, match=store.keys.event("*"), count=SCAN_COUNT, _type="string"
        )
        cursor, found = await store.guard(scan)
        if found:
            await _index(store, found)
        if cursor == 0:
            return


async def _index(store: Store, names: list[Any]) -> None:
    bodies = await store.guard(partial(store.client.mget, names))
    scores: dict[str, int] = {}
    for name, body in zip(names, bodies, strict=True):
        try:
            event = orjson.loads(body or b"")
            scores[event["id"]] = received_ms(event)
        except Exception:  # not an event this gateway wrote: not indexed
            log.warning("migration: %s is not an orderhook event; not indexed", text(name))
    if scores:
        await store.guard(partial(store.client.zadd, store.keys.received, scores))


# from_version: the coroutine that turns data of that version into the next version's.
MIGRATIONS: dict[int, Callable[[Store], Awaitable[None]]] = {
    UNVERSIONED: _stamp_unversioned,
    1: _index_received,
}


async def check_schema(store: Store) -> None:
    """Make the data under the store's prefix SCHEMA_VERSION's (stamp, or migrate then stamp);
    SchemaMismatch if it is of a newer or unknown version."""
    try:
        found = await store.guard(partial(store.client.get, store.keys.schema_version))
    except ResponseError as exc:  # WRONGTYPE: not a version this orderhook wrote
        raise SchemaMismatch(
            f"redis at {store.address} holds a {store.keys.schema_version} that is no "
            f"orderhook schema version ({exc}); this orderhook reads version {SCHEMA_VERSION}: "
            "delete that key if it is not another program's, or set [store] key_prefix to a "
            "fresh prefix"
        ) from exc
    if found is None:
        version = UNVERSIONED if await _holds_data(store) else SCHEMA_VERSION
    else:
        version = _parse(store, text(found))
    if version == SCHEMA_VERSION and found is not None:
        return
    await _migrate(store, version)
    stamped = await store.guard(
        partial(store.client.set, store.keys.schema_version, SCHEMA_VERSION, nx=found is None)
    )
    if not stamped:  # another process stamped it first: read what it wrote
        await check_schema(store)


async def _holds_data(store: Store) -> bool:
    """Whether any key exists under the prefix (SCAN, stopping at the first)."""
    cursor = 0
    while True:
        scan = partial(store.client.scan, cursor, match=store.keys.pattern, count=SCAN_COUNT)
        cursor, found = await store.guard(scan)
        if found:
            return True
        if cursor == 0:
            return False


async def _migrate(store: Store, version: int) -> None:
    """Run the migrations from `version` up to SCHEMA_VERSION, logging each."""
    while version < SCHEMA_VERSION:
        log.warning(
            "redis at %s: migrating orderhook data under key prefix %r from schema version %d "
            "to %d",
            store.address,
            store.keys.prefix,
            version,
            version + 1,
        )
        await MIGRATIONS[version](store)
        version += 1


def _parse(store: Store, found: str) -> int:
    """The stored version, if this orderhook reads or can migrate it; else SchemaMismatch."""
    where = f"redis at {store.address} holds orderhook data"
    remedy = "set [store] key_prefix to a fresh prefix"
    if not found.isascii() or not found.isdigit():
        raise SchemaMismatch(
            f"{where} under key prefix {store.keys.prefix!r} whose schema version "
            f"({store.keys.schema_version}) is {found!r}, not a number; this orderhook reads "
            f"version {SCHEMA_VERSION}: fix or delete that key, or {remedy}"
        )
    version = int(found)
    if version > SCHEMA_VERSION:
        raise SchemaMismatch(
            f"{where} of schema version {version} under key prefix {store.keys.prefix!r}; "
            f"this orderhook reads version {SCHEMA_VERSION}: upgrade orderhook, or {remedy}"
        )
    return version

"""The store and its sides, opened once per process (`open_runtime`) from the settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from app.config import Settings
from app.errors import SchemaMismatch, StoreUnavailable
from app.store.client import Store, open_store
from app.store.deliveries import Deliveries
from app.store.embedded import EmbeddedRedis
from app.store.pull import PullQueue
from app.store.queries import Queries
from app.store.routing import Routing
from app.store.schema import Keys
from app.store.version import check_schema

log = logging.getLogger("orderhook.store")


@dataclass(frozen=True)
class Runtime:
    """What the endpoints, the router and the deliverer reach Redis through: the routing side
    (the ingest stream into deliveries), the deliveries (claim, settle, an operator's
    actions), the pull queues and the queries people read."""

    settings: Settings
    store: Store
    routing: Routing
    deliveries: Deliveries
    pull: PullQueue
    queries: Queries

    @classmethod
    def on(cls, settings: Settings, store: Store) -> Runtime:
        breakers = {s.id: s.breaker() for s in settings.subscriptions}
        retention_s = settings.log_retention_s
        return cls(
            settings,
            store,
            Routing(store, retention_s),
            Deliveries(store, retention_s, breakers),
            PullQueue(store),
            Queries(store),
        )


async def start_embedded(settings: Settings) -> EmbeddedRedis:
    """The embedded store on `settings.data_dir`, started and watched (restarted if it dies;
    if it cannot be, this process stops and exits 1). The caller stops it."""
    embedded = EmbeddedRedis(settings.data_dir, settings.embedded_appendfsync)
    await embedded.start()
    embedded.watch()
    return embedded


@asynccontextmanager
async def open_runtime(
    settings: Settings, *, wait_for_redis: bool = True
) -> AsyncIterator[Runtime]:
    """The one way a process opens the store: REDIS_URL's Redis, or the embedded one started
    here (and stopped on the way out); its data's schema version checked (app/store/version.py).

    SchemaMismatch if the data is of a version this orderhook does not read. A Redis that does
    not answer yet is StoreUnavailable when not `wait_for_redis` (the CLI's checks); else the
    runtime is yielded all the same (hooks are answered 503 meanwhile) and the schema is
    checked once Redis answers: a mismatch found then stops this process (`schema_refused`)."""
    async with contextlib.AsyncExitStack() as stack:
        url = settings.redis_url
        if url is None:
            embedded = await start_embedded(settings)
            stack.push_async_callback(embedded.stop)
            url = embedded.url
        store = await stack.enter_async_context(
            open_store(
                url,
                Keys(settings.key_prefix),
                settings.redis_timeout_s,
                settings.dedupe_window_s,
                assume_noeviction=settings.assume_noeviction,
            )
        )
        try:
            await check_schema(store)
        except StoreUnavailable:
            if not wait_for_redis:
                raise
            later = asyncio.create_task(check_schema_when_answering(store))
            stack.callback(later.cancel)
        yield Runtime.on(settings, store)


SCHEMA_RETRY_S = 0.5

# Set when the schema, checked once Redis answered, was one this orderhook does not read: the
# process was stopped, and exits 2 (app.cli).
schema_refused = threading.Event()


async def check_schema_when_answering(store: Store) -> None:
    """Check the schema as soon as Redis answers; on a mismatch, log it and stop the process
    as on SIGTERM (it exits 2)."""
    while True:
        await asyncio.sleep(SCHEMA_RETRY_S)
        try:
            await check_schema(store)
        except StoreUnavailable:
            continue
        except SchemaMismatch as exc:
            log.error("refusing to go on: %s", exc)
            schema_refused.set()
            os.kill(os.getpid(), signal.SIGTERM)
        except Exception:  # e.g. a key of another type there: said, and tried again
            log.exception("cannot check the data's schema version; retrying")
            continue
        return

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
from app.sealing import Sealer as RealSealer
from app.store.alerts import AlertStore
from app.store.catalog import Catalog
from app.store.client import Store, open_store
from app.store.deliveries import Deliveries
from app.store.embedded import EmbeddedRedis
from app.store.pull import PullQueue
from app.store.queries import Queries
from app.store.routing import Routing
from app.store.schema import Keys
from app.store.version import check_schema
from app.subscriptions.apply import apply_config
from app.subscriptions.live import LiveSubscriptions
from app.subscriptions.secrets import Sealer

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
    catalog: Catalog
    subscriptions: LiveSubscriptions
    sealer: Sealer
    alerts: AlertStore

    @classmethod
    def on(cls, settings: Settings, store: Store) -> Runtime:
        retention_s = settings.log_retention_s
        catalog = Catalog(store)
        sealer = RealSealer.from_env(settings.env)
        live = LiveSubscriptions(catalog, settings, sealer)
        return cls(
            settings,
            store,
            Routing(store, retention_s),
            Deliveries(store, retention_s),
            PullQueue(store),
            Queries(store),
            catalog,
            live,
            sealer,
            AlertStore(store),
        )

    async def start(self, apply: bool) -> None:
        """Once the schema is checked: the config file's subscriptions applied to the catalog
        (`apply`: serve and worker), and the live copy read."""
        await self.catalog.finish_drops()  # deletes a crash cut short
        if apply:
            await apply_config(self.catalog, self.settings, self.sealer)
        await self.subscriptions.refresh()


async def start_embedded(settings: Settings) -> EmbeddedRedis:
    """The embedded store on `settings.data_dir`, started and watched (restarted if it dies;
    if it cannot be, this process stops and exits 1). The caller stops it."""
    embedded = EmbeddedRedis(settings.data_dir, settings.embedded_appendfsync)
    await embedded.start()
    embedded.watch()
    return embedded


@asynccontextmanager
async def open_runtime(
    settings: Settings, *, wait_for_redis: bool = True, apply: bool = False
) -> AsyncIterator[Runtime]:
    """The one way a process opens the store: REDIS_URL's Redis, or the embedded one started
    here (and stopped on the way out); its data's schema version checked (app/store/version.py).

    SchemaMismatch if the data is of a version this orderhook does not read. A Redis that does
    not answer yet is StoreUnavailable when not `wait_for_redis` (the CLI's checks); else the
    runtime is yielded all the same (hooks are answered 503 meanwhile) and the schema is
    checked once Redis answers: a mismatch found then stops this process (`schema_refused`).
    The subscriptions' live copy is read once the schema is checked (and with `apply`, after
    the config file's subscriptions are applied), then kept fresh until the runtime closes;
    until then it is the config file's."""
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
                watched_accounts=settings.watched_accounts,
            )
        )
        runtime = Runtime.on(settings, store)
        ready = asyncio.Event()
        try:
            await check_schema(store)
            await runtime.start(apply)
            ready.set()
        except StoreUnavailable:
            if not wait_for_redis:
                raise
            later = asyncio.create_task(check_schema_when_answering(runtime, apply, ready))
            stack.callback(later.cancel)
        stopping = asyncio.Event()
        refresh = asyncio.create_task(_keep_fresh(runtime, ready, stopping))
        stack.push_async_callback(_stop, refresh, stopping)
        yield runtime


async def _keep_fresh(runtime: Runtime, ready: asyncio.Event, stopping: asyncio.Event) -> None:
    await ready.wait()
    await runtime.subscriptions.run(stopping)


async def _stop(task: asyncio.Task[None], stopping: asyncio.Event) -> None:
    stopping.set()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


SCHEMA_RETRY_S = 0.5

# Set when the schema, checked once Redis answered, was one this orderhook does not read: the
# process was stopped, and exits 2 (app.cli).
schema_refused = threading.Event()


async def check_schema_when_answering(runtime: Runtime, apply: bool, ready: asyncio.Event) -> None:
    """Check the schema as soon as Redis answers, then start the runtime's subscriptions (and
    set `ready`); on a mismatch, log it and stop the process as on SIGTERM (it exits 2)."""
    while True:
        await asyncio.sleep(SCHEMA_RETRY_S)
        try:
            await check_schema(runtime.store)
            await runtime.start(apply)
            ready.set()
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

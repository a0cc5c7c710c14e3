"""The relay: router and deliverer together, with the one aiohttp session they share.

`orderhook serve` runs it beside the HTTP API; `orderhook worker` runs it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import aiohttp

from app import logs
from app.alerts.service import Alerting
from app.alerts.unavailable import warn_while_unreachable
from app.config import Settings
from app.delivery import Deliverer, Transforms
from app.lifecycle import finish
from app.router import Router
from app.runtime import Runtime, open_runtime
from app.ssrf import GuardedConnector
from app.vtex.enrich import Enricher
from app.vtex.feed_backup import FeedPoller

log = logging.getLogger("orderhook.relay")

DRAIN_GRACE_S = 10.0


class Relay:
    def __init__(self, runtime: Runtime) -> None:
        self.settings = runtime.settings
        self.runtime = runtime
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # No pool-wide cap: each subscription's worker holds at most its max_in_flight.
        connector = GuardedConnector(
            self.settings.allow_networks, limit=0, limit_per_host=0, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        subscriptions = self.runtime.subscriptions
        self.transforms = Transforms(subscriptions.all())  # the feed's too
        self.deliverer = Deliverer(
            subscriptions.all(), self.runtime.deliveries, self._session, self.transforms
        )
        subscriptions.listen(self.transforms.update)  # before the deliverer's: its workers
        subscriptions.listen(self.deliverer.apply)  # may use a new transform at once
        enricher = None
        if any(s.enrich for s in self.settings.sources):
            enricher = Enricher(self.settings, self.runtime.store, self._session)
        self.router = Router(
            self.settings, self.runtime.routing, self.deliverer, enricher, subscriptions
        )
        self.alerts = Alerting(self.settings, self.runtime.alerts, self._session)
        self.alerts.start()  # its own tasks: a target down or hanging holds nothing else
        self._tasks = [
            asyncio.create_task(self.router.run(self._stopping), name="orderhook-router"),
            asyncio.create_task(self.deliverer.run(), name="orderhook-deliverer"),
        ]
        self._tasks += [
            asyncio.create_task(
                FeedPoller(self.settings, source, self.runtime.store, self._session).run(
                    self._stopping
                ),
                name=f"orderhook-feed-{source.account}",
            )
            for source in self.settings.sources
            if source.feed_backup
        ]

    async def stop(self, grace_s: float = DRAIN_GRACE_S) -> None:
        """Route nothing more, let attempts in flight finish, close the session."""
        self._stopping.set()
        if self._tasks:
            router, others = self._tasks[0], self._tasks[2:]  # the router, the feed pollers
            # The router first (within one blocking read): it hands work to the workers.
            await asyncio.wait([router, *others], timeout=grace_s)
            await self.deliverer.stop(grace_s)
            await finish(self._tasks, grace_s, log, "relay task")
        if self._tasks:
            await self.alerts.stop()
            await self.router.close()  # the filters' worker
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()


async def run_worker(settings: Settings) -> None:
    """`orderhook worker`: the relay alone, on the shared Redis, until SIGTERM or SIGINT. It
    delivers for every subscription in the catalog, as it changes (made through the admin API
    or applied from a config file)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_runtime(settings, apply=True) as runtime:
        relay = Relay(runtime)
        await relay.start()
        log.info("worker %s started", relay.router.consumer)
        if not runtime.subscriptions.current:
            log.warning(
                "worker waiting for subscriptions: the catalog has none yet; events wait in "
                "the stream until one is created (admin API) or applied from a config file"
            )
        flusher = asyncio.create_task(logs.flush_periodically())
        stop_pinging = asyncio.Event()
        every_s = settings.unreachable_warning_s
        ping = asyncio.create_task(
            warn_while_unreachable(runtime.store, every_s, stop_pinging, relay.alerts.reachability)
        )
        await stop.wait()
        flusher.cancel()
        stop_pinging.set()
        ping.cancel()
        await asyncio.wait([ping], timeout=every_s)
        log.info("worker stopping: finishing deliveries in flight")
        await relay.stop()

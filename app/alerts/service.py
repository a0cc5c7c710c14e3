"""The alert tasks of one process (`serve` and `worker` alike): evaluation, the outbox's
sender and the store.unavailable watch. Started with the relay, on its SSRF-guarded session."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from app.alerts.evaluate import evaluate_periodically
from app.alerts.send import Outbox
from app.alerts.unavailable import HostLock, Reachability, Unavailable, host_lock_path
from app.config import Settings
from app.lifecycle import finish
from app.store.alerts import AlertStore

log = logging.getLogger("orderhook.alerts")

STOP_S = 5.0


class Alerting:
    def __init__(
        self, settings: Settings, store: AlertStore, session: aiohttp.ClientSession
    ) -> None:
        self.settings = settings
        self.store = store
        self.reachability = Reachability()
        self.outbox = Outbox(
            self.store, session, {t.id: t for t in settings.alerts}, settings.ops_public_url
        )
        self.unavailable = Unavailable(
            self.reachability,
            settings.alerts,
            session,
            settings.alert_unavailable_s,
            settings.ops_public_url,
            HostLock(host_lock_path(store.store.address, store.keys.prefix)),
        )
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if not self.settings.alerts:
            return
        stopping = self._stopping
        self._tasks = [
            asyncio.create_task(
                evaluate_periodically(self.settings, self.store, stopping),
                name="orderhook-alerts-evaluate",
            ),
            asyncio.create_task(self.outbox.run(stopping), name="orderhook-alerts-outbox"),
            asyncio.create_task(self.unavailable.run(stopping), name="orderhook-alerts-store"),
        ]

    async def stop(self) -> None:
        self._stopping.set()
        await self.outbox.stop()
        if self._tasks:
            await finish(self._tasks, STOP_S, log, "alert task")

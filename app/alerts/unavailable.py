"""store.unavailable, from memory: Redis cannot queue an alert about itself.

`Reachability` is what the pinger (`warn_while_unreachable`: `serve` and `worker`) found last. While
Redis has not answered for `alert_unavailable_s`, `Unavailable` sends "firing" straight to each
target that wants it (retried with backoff while it lasts) and "resolved" once Redis answers
again (to the targets that were told)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import Sequence

import aiohttp

from app.alerts.compose import FIRING, RESOLVED, Notification
from app.alerts.config import UNAVAILABLE, AlertTarget
from app.alerts.send import GIVE_UP_S, backoff, post
from app.errors import StoreUnavailable
from app.lifecycle import sleep_unless
from app.redaction import origin
from app.store.client import Store

log = logging.getLogger("orderhook.alerts")
ping_log = logging.getLogger("orderhook.server")  # the pinger's lines, as they always were

CHECK_S = 1.0


class Reachability:
    """Whether Redis answered this process's last ping, and since when it has not (ms)."""

    def __init__(self) -> None:
        self.down_since_ms: int | None = None
        self.reason = ""

    def failed(self, reason: str) -> None:
        if self.down_since_ms is None:
            self.down_since_ms = int(time.time() * 1000)
        self.reason = reason

    def answered(self) -> None:
        self.down_since_ms = None


async def warn_while_unreachable(
    store: Store, every_s: float, stop: asyncio.Event, reachability: Reachability
) -> None:
    """Log a warning now and every `every_s` while Redis does not answer (naming its address
    and why), and once when it answers again: hooks are answered 503 meanwhile; what it finds
    goes to `reachability`. Ends when `stop` is set (a cancel that lands inside the Redis
    client's connect can be lost there)."""
    down = False
    while not stop.is_set():
        try:
            await store.ping()
        except StoreUnavailable as exc:
            ping_log.warning("%s; hooks are answered 503 until it answers", exc)
            reachability.failed(exc.public)
            down = True
        else:
            reachability.answered()
            if down:
                ping_log.warning("redis at %s answers now: hooks are accepted", store.address)
            down = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


class Unavailable:
    def __init__(
        self,
        reachability: Reachability,
        targets: Sequence[AlertTarget],
        session: aiohttp.ClientSession,
        threshold_s: float,
        public_url: str | None,
    ) -> None:
        self.reachability = reachability
        self.targets = [t for t in targets if t.wants(UNAVAILABLE)]
        self.session = session
        self.threshold_s = threshold_s
        self.public_url = public_url
        self.subject = socket.gethostname()
        self.firing: dict[str, asyncio.Task[bool]] = {}
        self.since_ms = 0

    async def run(self, stopping: asyncio.Event) -> None:
        while self.targets and not stopping.is_set():
            self.check(int(time.time() * 1000))
            await sleep_unless(stopping, CHECK_S)
        for task in self.firing.values():
            task.cancel()

    def check(self, now: int) -> None:
        down = self.reachability.down_since_ms
        if down is not None and not self.firing and now - down > self.threshold_s * 1000:
            self.since_ms = down
            details = {"downS": (now - down) // 1000, "reason": self.reachability.reason}
            note = Notification(UNAVAILABLE, FIRING, self.subject, down, now, "store", details)
            self.firing = {t.id: self._start(t, note) for t in self.targets}
        elif down is None and self.firing:
            told = [t for t in self.targets if _told(self.firing.get(t.id))]
            for task in self.firing.values():
                task.cancel()
            self.firing = {}
            note = Notification(UNAVAILABLE, RESOLVED, self.subject, self.since_ms, now, "store")
            for target in told:
                self._start(target, note)

    def _start(self, target: AlertTarget, note: Notification) -> asyncio.Task[bool]:
        return asyncio.create_task(self._deliver(target, note), name="orderhook-alert-store")

    async def _deliver(self, target: AlertTarget, note: Notification) -> bool:
        """Until the target takes it (True), or a day has passed (False)."""
        msg_id, attempt = f"unavailable-{uuid.uuid4().hex}", 0
        while time.time() - note.at / 1000 < GIVE_UP_S:
            error = await post(self.session, target, note, msg_id, self.public_url)
            if error is None:
                log.warning("alert %s %s sent to %s", note.event, note.status, target.id)
                return True
            attempt += 1
            log.warning(
                "alert %s %s to %s (%s) failed: %s; retried in %g s",
                note.event, note.status, target.id, origin(target.url), error, backoff(attempt),
            )  # fmt: skip
            await asyncio.sleep(backoff(attempt))
        return False


def _told(task: asyncio.Task[bool] | None) -> bool:
    if task is None or not task.done() or task.cancelled():
        return False
    with contextlib.suppress(Exception):
        return task.result()
    return False

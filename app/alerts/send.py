"""Sending alerts: POST a notification to its target, retried with backoff, never in the way.

`post` is one attempt (signed for a cloudevents target; a timeout; the SSRF-guarded session the
deliveries use). `Outbox` reads the outbox stream through the consumer group and sends each
entry in a task of its own (at most MAX_SENDING at once, MAX_HELD held): a target that is down
or hangs holds only its own tasks, never ingest or the deliveries. A failed entry is retried in
this process, RETRY_FIRST_S doubling to RETRY_MAX_S, kept as this process's meanwhile (`keep`);
one a dead process held is taken over after CLAIM_IDLE_S; after GIVE_UP_S it is dropped, said
in the log. Failures are logged with the target's origin only (its path may be its secret) and
counted in the stats hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping

import aiohttp
import msgspec

from app.alerts.compose import Notification, body, decode
from app.alerts.config import AlertTarget
from app.errors import StoreUnavailable
from app.lifecycle import sleep_unless
from app.redaction import describe, origin
from app.signing import signature_headers
from app.store.alerts import AlertStore, Queued
from app.store.schema import Counter

log = logging.getLogger("orderhook.alerts")

TIMEOUT_S = 10.0  # one attempt, connection to last byte
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 300.0
GIVE_UP_S = 24 * 3600.0  # from when the notification was queued
CLAIM_IDLE_S = 60.0  # an entry unsettled this long is taken over (its process died)
KEEP_EVERY_S = 20.0  # entries being retried are marked this process's this often
POLL_S = 0.5  # how soon a queued notification is read
MAX_SENDING = 4  # requests at once, per process
MAX_HELD = 200  # entries held at once, retried ones included
READ_COUNT = 20
USER_AGENT = "orderhook/0.1 (alerts)"


def backoff(attempt: int) -> float:
    """The wait after the `attempt`-th failure (1-based)."""
    return min(RETRY_MAX_S, RETRY_FIRST_S * 2.0 ** min(attempt - 1, 20))


async def post(
    session: aiohttp.ClientSession,
    target: AlertTarget,
    note: Notification,
    msg_id: str,
    public_url: str | None,
) -> str | None:
    """One attempt; None if the target took it (2xx), else why not (no URL path or secret)."""
    data = body(target, note, msg_id, public_url)
    kind = "application/cloudevents+json" if target.format == "cloudevents" else "application/json"
    headers = {"Content-Type": kind, "User-Agent": USER_AGENT}
    headers |= signature_headers(target.signing_keys(), msg_id, int(time.time()), data)
    try:
        async with session.post(
            target.url,
            data=data,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
            allow_redirects=False,
        ) as response:
            return None if 200 <= response.status < 300 else f"HTTP {response.status}"
    except TimeoutError:
        return f"no answer within {TIMEOUT_S:g} s"
    except (aiohttp.ClientError, ValueError, OSError) as exc:
        return describe(exc, target.url)


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Outbox:
    """This process's reader of the alert outbox."""

    def __init__(
        self,
        alerts: AlertStore,
        session: aiohttp.ClientSession,
        targets: Mapping[str, AlertTarget],
        public_url: str | None,
    ) -> None:
        self.alerts = alerts
        self.session = session
        self.targets = targets
        self.public_url = public_url
        self.consumer = consumer_name()
        self.sending = asyncio.Semaphore(MAX_SENDING)
        self.held: dict[str, asyncio.Task[None]] = {}

    async def run(self, stopping: asyncio.Event) -> None:
        ready = False
        last_claim = last_keep = 0.0
        while not stopping.is_set():
            try:
                if not ready:
                    await self.alerts.ensure_group()
                    ready = True
                if time.monotonic() - last_claim > CLAIM_IDLE_S / 2:
                    self._hold(await self.alerts.take_over(self.consumer, _ms(CLAIM_IDLE_S), 50))
                    last_claim = time.monotonic()
                if time.monotonic() - last_keep > KEEP_EVERY_S:
                    await self.alerts.keep(self.consumer, list(self.held))
                    last_keep = time.monotonic()
                room = MAX_HELD - len(self.held)
                if room > 0:
                    self._hold(await self.alerts.read_new(self.consumer, min(room, READ_COUNT)))
            except StoreUnavailable:
                pass  # said by the pinger; tried again after the pause
            except Exception:  # never ends the task: said, and tried again after the pause
                log.exception("alert outbox read failed")
            await sleep_unless(stopping, POLL_S)

    def _hold(self, entries: list[Queued]) -> None:
        for entry in entries:
            if entry.entry_id not in self.held:
                task = asyncio.create_task(self._send(entry), name="orderhook-alert")
                self.held[entry.entry_id] = task
                task.add_done_callback(self._release(entry.entry_id))

    def _release(self, entry_id: str) -> Callable[[asyncio.Task[None]], None]:
        def release(_: asyncio.Task[None]) -> None:
            self.held.pop(entry_id, None)

        return release

    async def _send(self, entry: Queued) -> None:
        target = self.targets.get(entry.target)
        try:
            note = decode(entry.alert)
        except (msgspec.ValidationError, msgspec.DecodeError):
            log.error("alert outbox entry %s is not a notification: dropped", entry.entry_id)
            return await self._settle(entry, None)
        if target is None:  # not in this process's config: one that has it takes it over
            if time.time() - entry.queued_ms / 1000 > GIVE_UP_S:
                log.error("alert for target %r, which no process knows, dropped", entry.target)
                return await self._settle(entry, None)
            return None
        attempt = 0
        while True:
            async with self.sending:
                error = await post(self.session, target, note, entry.entry_id, self.public_url)
            if error is None:
                return await self._settle(entry, (target, Counter.ALERTS_SENT))
            attempt += 1
            await self._count(target, Counter.ALERTS_FAILED)
            if time.time() - entry.queued_ms / 1000 > GIVE_UP_S:
                log.error(
                    "alert %s %s to %s (%s): giving up after %d attempts over a day: %s",
                    note.event, note.status, target.id, origin(target.url), attempt, error,
                )  # fmt: skip
                return await self._settle(entry, (target, Counter.ALERTS_DROPPED))
            wait = backoff(attempt)
            log.warning(
                "alert %s %s to %s (%s) failed: %s; retried in %g s",
                note.event, note.status, target.id, origin(target.url), error, wait,
            )  # fmt: skip
            await asyncio.sleep(wait)

    async def _settle(self, entry: Queued, counted: tuple[AlertTarget, Counter] | None) -> None:
        """Acknowledge and delete the entry (shielded: a stop does not cut it), and count."""
        for _ in range(3):
            with contextlib.suppress(StoreUnavailable):
                await asyncio.shield(self.alerts.done(entry.entry_id))
                break
            await asyncio.sleep(1)
        if counted is not None:
            await self._count(*counted)

    async def _count(self, target: AlertTarget, counter: Counter) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.alerts.count(target.id, counter)

    async def stop(self) -> None:
        """Cancel what is held (it stays in the group: another process, or this one started
        again, takes it over)."""
        for task in list(self.held.values()):
            task.cancel()
        if self.held:
            await asyncio.wait(list(self.held.values()), timeout=5)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)

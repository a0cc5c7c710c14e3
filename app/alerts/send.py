"""Sending alerts: POST a notification to its target, retried with backoff, never in the way.

`post` is one attempt (signed for a cloudevents target; a timeout; the SSRF-guarded session the
deliveries use). `Outbox` reads the outbox stream through the consumer group and gives each
entry to its target's `Lane`: a task per entry, at most MAX_HELD tasks and MAX_SENDING requests
at once per target, the rest waiting in memory in order (at most MAX_KEPT in all). A target that
is down or hangs holds only its own lane: never the other targets, ingest or the deliveries.
A failed entry is retried in this process, RETRY_FIRST_S doubling to RETRY_MAX_S, kept as this
process's meanwhile (`keep`); one a dead process held is taken over after CLAIM_IDLE_S; after
GIVE_UP_S it is dropped, said in the log. Before each attempt the entry must still be the
latest word on its condition (`current`): a firing or reminder whose condition ended meanwhile
is not sent (its resolved says all), nor a resolved once the condition began again; attempts
of one condition go one at a time (`Turns`). An entry sent is acked and deleted, retried with
backoff while the process lives, and never sent again by this process meanwhile. Failures are
logged with the target's origin only (its path may be its secret) and counted in the stats hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
import msgspec

from app.alerts.compose import RESOLVED, Notification, body, decode
from app.alerts.config import AlertTarget
from app.errors import StoreUnavailable
from app.lifecycle import sleep_unless
from app.redaction import describe, origin
from app.signing import signature_headers
from app.store.alerts import AlertStore, Queued
from app.store.schema import ALERTS_OUTBOX_MAX, Counter

log = logging.getLogger("orderhook.alerts")

TIMEOUT_S = 10.0  # one attempt, connection to last byte
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 300.0
GIVE_UP_S = 24 * 3600.0  # from when the notification was queued
CLAIM_IDLE_S = 60.0  # an entry unsettled this long is taken over (its process died)
KEEP_EVERY_S = 20.0  # entries being retried are marked this process's this often
POLL_S = 0.5  # how soon a queued notification is read
MAX_SENDING = 2  # requests at once, per target
MAX_HELD = 50  # entries in tasks at once (sent or retried), per target
MAX_KEPT = ALERTS_OUTBOX_MAX  # entries read and not settled, all targets: then reading waits
SETTLE_MAX_S = 5.0  # an ack that fails is retried this often at most
SETTLED_KEPT = 1000  # ids of the latest entries settled, not taken again if claimed meanwhile
READ_COUNT = 100
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


class Turns:
    """One attempt at a time per condition (`event|subject`), in the order they asked."""

    def __init__(self) -> None:
        self.locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def of(self, key: str) -> AsyncIterator[None]:
        lock, users = self.locks.get(key, (asyncio.Lock(), 0))
        self.locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self.locks[key]
            if users == 1:
                del self.locks[key]
            else:
                self.locks[key] = (lock, users - 1)


class Lane:
    """One target's share of this process: its entries in tasks, the ones waiting for room
    (in the order read), its requests at once and its conditions' turns."""

    def __init__(self, target: AlertTarget) -> None:
        self.target = target
        self.sending = asyncio.Semaphore(MAX_SENDING)
        self.held: dict[str, asyncio.Task[None]] = {}
        self.waiting: deque[Queued] = deque()
        self.turns = Turns()


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
        self.lanes = {name: Lane(target) for name, target in targets.items()}
        self.public_url = public_url
        self.consumer = consumer_name()
        self.kept: set[str] = set()  # read and not settled: held or waiting
        self.settled: OrderedDict[str, None] = OrderedDict()
        self.chores: set[asyncio.Task[None]] = set()  # settling entries of no lane
        self.stopped = False

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
                    await self.alerts.keep(self.consumer, list(self.kept))
                    last_keep = time.monotonic()
                if await self._read() >= READ_COUNT:
                    continue  # a full batch: more is queued, read on at once
            except StoreUnavailable:
                pass  # said by the pinger; tried again after the pause
            except Exception:  # never ends the task: said, and tried again after the pause
                log.exception("alert outbox read failed")
            await sleep_unless(stopping, POLL_S)

    async def _read(self) -> int:
        """Read what was queued since, as much as there is room for: how many entries."""
        count = min(MAX_KEPT - len(self.kept), READ_COUNT)
        if count <= 0:
            return 0
        entries = await self.alerts.read_new(self.consumer, count)
        self._hold(entries)
        return len(entries)

    def _hold(self, entries: list[Queued]) -> None:
        for entry in entries:
            if entry.entry_id in self.kept or entry.entry_id in self.settled:
                continue  # this process's already (or just acked: a claim that crossed it)
            lane = self.lanes.get(entry.target)
            if lane is None:
                self._unknown(entry)
                continue
            self.kept.add(entry.entry_id)
            lane.waiting.append(entry)
            self._start(lane)

    def _start(self, lane: Lane) -> None:
        while lane.waiting and len(lane.held) < MAX_HELD and not self.stopped:
            entry = lane.waiting.popleft()
            task = asyncio.create_task(self._send(lane, entry), name="orderhook-alert")
            lane.held[entry.entry_id] = task
            task.add_done_callback(self._release(lane, entry.entry_id))

    def _release(self, lane: Lane, entry_id: str) -> Callable[[asyncio.Task[None]], None]:
        def release(_: asyncio.Task[None]) -> None:
            lane.held.pop(entry_id, None)
            self.kept.discard(entry_id)
            self._start(lane)

        return release

    def _unknown(self, entry: Queued) -> None:
        """An entry for a target not in this process's config: left for a process that has
        it to take over, unless a day old (dropped)."""
        if time.time() - entry.queued_ms / 1000 > GIVE_UP_S:
            log.error("alert for target %r, which no process knows, dropped", entry.target)
            task = asyncio.create_task(self._settle(entry, None), name="orderhook-alert")
            self.chores.add(task)
            task.add_done_callback(self.chores.discard)

    async def _send(self, lane: Lane, entry: Queued) -> None:
        target = lane.target
        try:
            note = decode(entry.alert)
        except (msgspec.ValidationError, msgspec.DecodeError):
            log.error("alert outbox entry %s is not a notification: dropped", entry.entry_id)
            return await self._settle(entry, None)
        attempt = 0
        while True:
            async with lane.turns.of(f"{note.event}|{note.subject}"):
                if not await self._current(target, note):
                    return await self._settle(entry, None)
                async with lane.sending:
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

    async def _current(self, target: AlertTarget, note: Notification) -> bool:
        """Whether `note` is still the latest word on its condition: a firing or reminder
        while that very condition is in force, a resolved unless it began again. Without an
        answer from Redis, yes (better an alarm late than none)."""
        try:
            since = await self.alerts.active_since(target.id, note.event, note.subject)
        except StoreUnavailable:
            return True
        current = (
            since is None or since <= note.since if note.status == RESOLVED else since == note.since
        )
        if not current:
            log.info(
                "alert %s %s for %s to %s not sent: the condition %s since",
                note.event, note.status, note.subject, target.id,
                "began again" if note.status == RESOLVED else "ended",
            )  # fmt: skip
        return current

    async def _settle(self, entry: Queued, counted: tuple[AlertTarget, Counter] | None) -> None:
        """Acknowledge and delete the entry (shielded: a stop does not cut it), retried with
        backoff while this process lives (it stays this process's meanwhile: taken over, it
        is not sent again), and count."""
        wait = RETRY_FIRST_S
        while True:
            try:
                await asyncio.shield(self.alerts.done(entry.entry_id))
                break
            except StoreUnavailable:
                await asyncio.sleep(wait)
                wait = min(SETTLE_MAX_S, wait * 2)
        self.settled[entry.entry_id] = None
        if len(self.settled) > SETTLED_KEPT:
            self.settled.popitem(last=False)
        if counted is not None:
            await self._count(*counted)

    async def _count(self, target: AlertTarget, counter: Counter) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.alerts.count(target.id, counter)

    async def stop(self) -> None:
        """Cancel what is held (it stays in the group: another process, or this one started
        again, takes it over)."""
        self.stopped = True
        tasks = [t for lane in self.lanes.values() for t in lane.held.values()] + list(self.chores)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)

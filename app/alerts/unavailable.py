"""store.unavailable, from memory: Redis cannot queue an alert about itself.

`Reachability` is what the pinger (`warn_while_unreachable`: `serve` and `worker`) found last. While
Redis has not answered for `alert_unavailable_s`, `Unavailable` sends "firing" straight to each
target that wants it (retried with backoff while it lasts) and "resolved" once Redis answers
again (to the targets that were told). One process per host and Redis sends it (`HostLock`: the
gateway processes of `serve --workers N`, or several gateways on one host, each see the same
outage): the others only log."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

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


def host_lock_path(address: str, prefix: str) -> Path:
    """The lock file of the processes on this host using Redis at `address` under `prefix`."""
    digest = hashlib.sha256(f"{address}\n{prefix}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"orderhook-{os.getuid()}-unavailable-{digest}.lock"


class HostLock:
    """Whether this process is the one on its host that sends store.unavailable: it holds an
    exclusive flock on the lock file from when it first needs it until it exits (the kernel
    releases it then, and another process takes it at its next check). Without a path, or a
    lock file this process cannot open, it sends (twice is better than never)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.fd: int | None = None

    def held(self) -> bool:
        if self.path is None or self.fd is not None:
            return True
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            log.warning("cannot open %s (%s): this process sends store.unavailable", self.path, exc)
            self.path = None
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Unavailable:
    def __init__(
        self,
        reachability: Reachability,
        targets: Sequence[AlertTarget],
        session: aiohttp.ClientSession,
        threshold_s: float,
        public_url: str | None,
        lock: HostLock | None = None,
    ) -> None:
        self.reachability = reachability
        self.targets = [t for t in targets if t.wants(UNAVAILABLE)]
        self.session = session
        self.threshold_s = threshold_s
        self.public_url = public_url
        self.subject = socket.gethostname()
        self.firing: dict[str, asyncio.Task[bool]] = {}
        self.since_ms = 0
        self.lock = lock or HostLock(None)
        self.deferred = False  # this outage is another process's to tell

    async def run(self, stopping: asyncio.Event) -> None:
        while self.targets and not stopping.is_set():
            self.check(int(time.time() * 1000))
            await sleep_unless(stopping, CHECK_S)
        for task in self.firing.values():
            task.cancel()
        self.lock.release()

    def check(self, now: int) -> None:
        down = self.reachability.down_since_ms
        if down is None:
            self.deferred = False
            if self.firing:
                self._resolve(now)
        elif not self.firing and now - down > self.threshold_s * 1000 and not self._defer():
            self.since_ms = down
            details = {"downS": (now - down) // 1000, "reason": self.reachability.reason}
            note = Notification(UNAVAILABLE, FIRING, self.subject, down, now, "store", details)
            self.firing = {t.id: self._start(t, note) for t in self.targets}

    def _resolve(self, now: int) -> None:
        told = [t for t in self.targets if _told(self.firing.get(t.id))]
        for task in self.firing.values():
            task.cancel()
        self.firing = {}
        note = Notification(UNAVAILABLE, RESOLVED, self.subject, self.since_ms, now, "store")
        for target in told:
            self._start(target, note)

    def _defer(self) -> bool:
        """True (said once an outage) while another process on this host sends it."""
        if self.lock.held():
            return False
        if not self.deferred:
            log.warning("store.unavailable: sent by another process on this host, not this one")
            self.deferred = True
        return True

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

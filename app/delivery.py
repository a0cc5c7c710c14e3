"""Delivery: each subscription's own worker claims due deliveries and POSTs them, signed.

A worker keeps at most `max_in_flight` attempts going, so a dead or hung subscriber only ever
holds its own slots. Every attempt's outcome is recorded in Redis, shielded from cancellation;
an attempt cut short by a crash is found by its expired lease and tried again (at least once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from app import tracing
from app.errors import OutboundAuthError, StoreUnavailable
from app.events import cloudevent, default_data, utc_now_iso
from app.filters import EvaluationError, order_document
from app.lifecycle import sleep_unless
from app.logs import log_event
from app.redaction import describe, redirect_origin, scrub
from app.retry import Dead, Delivered, Gone, Outcome, Retry, decide, parse_retry_after
from app.sandbox import (
    DEADLINE_S,
    TRANSFORM,
    ConfigExpressions,
    SandboxBusy,
    Verdict,
    expression_sources,
)
from app.signing import signature_headers
from app.slots import Grant, Slots
from app.ssrf import Refused
from app.store.batcher import Batcher
from app.store.client import now_ms
from app.store.deliveries import Claimed, Deliveries, Settlement
from app.store.schema import Outcome as Settled
from app.subscriptions.spec import Subscription

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger("orderhook.delivery")

IDLE_POLL_S = 0.25  # how soon work routed by another process, or a retry, is noticed
LEASE_MARGIN_S = 5.0  # a lease outlives the attempt's timeout by this much
MAX_RESPONSE_READ = 64 * 1024
LOGGED_BODY = 4096
USER_AGENT = "orderhook/0.1"
SETTLE_LINGER_S = 0.005
RETIRE_GRACE_S = 30.0  # a deleted subscription's attempts in flight: this long to finish
TRANSFORM_BATCH = 16  # attempts whose transforms share one round trip to the worker


@dataclass(frozen=True)
class PostResult:
    status: int | None  # None: no HTTP answer (timeout, refused, reset)
    error: str
    retry_after_s: float | None
    head: bytes  # the first bytes of the response body, for the delivery log
    duration_ms: int
    refused: bool = False  # by the SSRF guard


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _latency_ms(event: dict[str, Any]) -> int:
    """From receipt at ingest until now."""
    received = datetime.fromisoformat(event["receivedAt"].replace("Z", "+00:00"))
    return max(0, int((datetime.now(UTC) - received).total_seconds() * 1000))


def build_body(sub: Subscription, event: dict[str, Any], traceparent: str = "") -> bytes:
    """The CloudEvent the subscriber receives; its data is the transform's result, if any
    (evaluated here, in this process: push deliveries use Transforms' worker instead), and
    with a `traceparent`, the attempt's trace context."""
    if sub.transform is None:
        data = default_data(event)
    else:
        data = sub.transform.evaluate(order_document(event))
    return orjson.dumps(cloudevent(event, data, traceparent))


class Transforms:
    """The subscriptions' transforms (push and pull), evaluated in a worker pool of their own
    (a transform that allocates without bound kills its worker, not the gateway). Attempts
    waiting at the same time share one round trip. `update` follows the catalog: a changed
    set of transforms gets a new pool; the old one is closed once its evaluations are done."""

    def __init__(self, subscriptions: Iterable[Subscription]) -> None:
        self.pool: ConfigExpressions | None = None
        self._sources: dict[str, tuple[str, Any]] = {}
        self._started = False
        self._retiring: set[asyncio.Task[None]] = set()
        self.update({s.id: s for s in subscriptions})
        self.batcher: Batcher[tuple[str, bytes], Verdict] = Batcher(
            self._evaluate, name="transform", max_batch=TRANSFORM_BATCH
        )

    def update(self, subscriptions: Mapping[str, Subscription]) -> None:
        expressions = {TRANSFORM + s.id: s.transform for s in subscriptions.values() if s.transform}
        sources = expression_sources(expressions)
        if sources == self._sources:
            return
        old, self._sources = self.pool, sources
        self.pool = ConfigExpressions(expressions) if expressions else None
        if old is not None:
            task = asyncio.create_task(old.retire())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def body(
        self, sub: Subscription, event: dict[str, Any], event_json: bytes, traceparent: str = ""
    ) -> bytes:
        """build_body's CloudEvent, its transform run in the pool: EvaluationError if it
        failed or hit a limit, SandboxBusy (or OSError) if the pool could not run it."""
        if sub.transform is None or self.pool is None:
            return build_body(sub, event, traceparent)
        data = await self.batcher.submit((TRANSFORM + sub.id, event_json))
        if isinstance(data, EvaluationError):
            raise data
        return orjson.dumps(cloudevent(event, data, traceparent))

    async def _evaluate(self, items: Sequence[tuple[str, bytes]]) -> list[Verdict]:
        pool = self.pool
        if pool is None or any(name not in pool.names for name, _ in items):
            # changed meanwhile (removed, or not in this pool yet): tried again, as a busy pool
            raise SandboxBusy("the subscription's transform changed; trying again")
        rows = await pool.evaluate([([name], event) for name, event in items])
        return [row[0] for row in rows]

    def start(self) -> None:
        if not self._started:
            self._started = True
            self.batcher.start()

    async def close(self) -> None:
        if self._started:
            await self.batcher.close()
        if self.pool is not None:
            await self.pool.close()
        if self._retiring:
            await asyncio.wait(self._retiring, timeout=DEADLINE_S)


class SubscriptionWorker:
    def __init__(
        self,
        sub: Subscription,
        deliveries: Deliveries,
        session: aiohttp.ClientSession,
        settler: Batcher[Settlement, bool],
        transforms: Transforms,
    ) -> None:
        self.sub = sub  # replaced when the subscription changes: the next attempt uses it
        self.transforms = transforms
        self.deliveries = deliveries
        self.session = session
        self.settler = settler
        self.tasks: set[asyncio.Task[None]] = set()  # attempts: at most max_in_flight
        self.settling: set[asyncio.Task[None]] = set()  # outcomes on their way to Redis
        self._reserved = 0  # slots promised to deliveries the router is claiming for us
        self._wake = asyncio.Event()
        self._stopping = False

    @property
    def lease_s(self) -> float:
        """An attempt's lease: its POST's timeout, and as much again for an OAuth2 token."""
        waits = 2 if self.sub.outbound is not None else 1
        return waits * self.sub.timeout_s + LEASE_MARGIN_S

    @property
    def _refill_at(self) -> int:
        return max(1, self.sub.max_in_flight // 4)  # claim in chunks when busy

    def wake(self) -> None:
        self._wake.set()

    def reserve(self, wanted: int) -> Grant:
        """Free slots for deliveries the router creates in flight for us (admission, in
        route.lua, decides which may go); `release` gives them back."""
        granted = 0 if self._stopping else max(0, min(wanted, self._free()))
        self._reserved += granted
        return Grant(granted, now_ms() + int(self.lease_s * 1000))

    def release(self, reserved: int) -> None:
        self._reserved -= reserved

    def _free(self) -> int:
        return self.sub.max_in_flight - len(self.tasks) - self._reserved

    def start(self, item: Claimed) -> None:
        task = asyncio.create_task(self._attempt(item))
        self.tasks.add(task)
        task.add_done_callback(self._finished)

    async def run(self) -> None:
        while not self._stopping:
            try:
                wait_s = await self._claim_and_start()
            except Exception:  # a bug must not stop this subscription for good
                log.exception("subscription %s: worker error", self.sub.id)
                wait_s = 1.0
            try:
                await asyncio.wait_for(self._wake.wait(), wait_s)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _claim_and_start(self) -> float:
        """Start what is due; return how long to wait before looking again."""
        free = self._free()
        if free <= 0:
            return IDLE_POLL_S  # a finishing attempt wakes us
        try:
            claimed, next_due = await self.deliveries.claim(
                self.sub.id, free, self.lease_s, self.sub.max_per_second
            )
        except StoreUnavailable as exc:
            log.warning("subscription %s: cannot claim: %s", self.sub.id, exc)
            return 1.0
        for item in claimed:
            self.start(item)
        if len(claimed) == free:
            return IDLE_POLL_S
        if next_due < 0:
            return IDLE_POLL_S
        return min(IDLE_POLL_S, max(0.0, (next_due - now_ms()) / 1000))

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self._free() >= self._refill_at:
            self._wake.set()

    async def _attempt(self, item: Claimed) -> None:
        if not tracing.on:
            await self._try(item, None)
            return
        span = tracing.start("deliver", item.trace, "client", self._span_attributes(item))
        try:
            await self._try(item, span)
        finally:
            if span.is_recording():  # ended without an answer (a transform not run, a stop)
                span.end()

    def _span_attributes(self, item: Claimed) -> dict[str, str | int | bool]:
        return {
            "orderhook.subscription": self.sub.id,
            "orderhook.delivery_id": item.delivery_id,
            "orderhook.attempt": item.attempts + 1,
            "http.request.method": "POST",
        }

    async def _try(self, item: Claimed, span: Span | None) -> None:
        """One attempt; `span`, its span when tracing is on (ended once the answer is in)."""
        event = item.event if item.event is not None else orjson.loads(item.event_json)
        traceparent = "" if span is None else tracing.traceparent_of(span)
        trace = traceparent or item.trace  # for the log line
        try:
            body = await self.transforms.body(self.sub, event, item.event_json, traceparent)
        except (EvaluationError, orjson.JSONEncodeError) as exc:  # dead: no retry can help
            what = "transform failed" if isinstance(exc, EvaluationError) else "not JSON-writable"
            result = PostResult(None, f"{what}: {exc}", None, b"", 0)
            _end_span(span, result)
            await self._settle(item, event, Dead(), result, trace)
            return
        except (SandboxBusy, OSError) as exc:  # its lease expires and it is tried again
            log.warning("subscription %s: transform not run (%s); retried", self.sub.id, exc)
            return
        result = await self._post(event["id"], body, traceparent)
        _end_span(span, result)
        attempts = item.attempts + 1
        outcome = decide(result.status, attempts, self.sub.retry_schedule_s, result.retry_after_s)
        if result.refused:  # retrying cannot help: a clear error in the log, not a storm
            outcome = Dead()
        if isinstance(outcome, Delivered):
            self._record(self._settle(item, event, outcome, result, trace))
        else:  # the slot is held until the failure is counted: the breaker sees it first
            await self._settle(item, event, outcome, result, trace)

    def _record(self, settle: Coroutine[Any, Any, None]) -> None:
        """Record a success without holding the attempt's slot: the next attempt starts while
        the outcome waits for its batch (its delivery stays leased until it is recorded)."""
        task = asyncio.create_task(settle)
        self.settling.add(task)
        task.add_done_callback(self.settling.discard)

    async def _post(self, msg_id: str, body: bytes, traceparent: str = "") -> PostResult:
        """One POST, and what came of it. The subscription's own headers and auth go first:
        the content type, the trace context and the signature are the gateway's."""
        sub, started = self.sub, time.monotonic()
        try:  # within the attempt's timeout: the lease covers two (LEASE_MARGIN_S, lease_s)
            async with asyncio.timeout(sub.timeout_s):
                extra = await sub.outbound.headers(self.session) if sub.outbound else {}
        except TimeoutError:
            error = f"no OAuth2 token within the timeout ({sub.timeout_s:g} s)"
            return PostResult(None, error, None, b"", _ms_since(started))
        except OutboundAuthError as exc:  # the token endpoint failed: retried, unless refused
            return PostResult(None, str(exc), None, b"", _ms_since(started), exc.refused)
        headers = {
            **extra,
            "Content-Type": "application/cloudevents+json",
            "User-Agent": USER_AGENT,
            **({"traceparent": traceparent} if traceparent else {}),
            **signature_headers(sub.signing_keys(), msg_id, int(time.time()), body),
        }
        result = await self._send(sub, body, headers, started)
        if result.status == 401 and sub.outbound is not None:
            sub.outbound.rejected(extra)  # an OAuth2 token refused: the next asks for a new one
        return result

    async def _send(
        self, sub: Subscription, body: bytes, headers: dict[str, str], started: float
    ) -> PostResult:
        try:
            async with self.session.post(
                sub.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=sub.timeout_s),
                allow_redirects=False,
            ) as response:
                head = await _read_head(response.content, MAX_RESPONSE_READ)
                error = "" if 200 <= response.status < 300 else f"HTTP {response.status}"
                if 300 <= response.status < 400:
                    location = redirect_origin(sub.url, response.headers.get("Location", ""))
                    error += f" redirect to {location}, not followed"
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                return PostResult(
                    response.status, error, retry_after, head[:LOGGED_BODY], _ms_since(started)
                )
        except Refused as exc:
            error = scrub(str(exc), sub.url)
            return PostResult(None, error, None, b"", _ms_since(started), refused=True)
        except TimeoutError:
            error = f"timeout after {sub.timeout_s:g} s"
        except (aiohttp.ClientError, ValueError, OSError) as exc:  # ValueError: a bad URL
            error = describe(exc, sub.url)
        return PostResult(None, error, None, b"", _ms_since(started))

    async def _settle(
        self,
        item: Claimed,
        event: dict[str, Any],
        outcome: Outcome,
        result: PostResult,
        trace: str = "",
    ) -> None:
        """Record the attempt's outcome, then log it (with `trace`'s trace id, if any)."""
        name, due_ms = _outcome_name(outcome)
        record = {
            "at": utc_now_iso(),
            "subscription": self.sub.id,
            "deliveryId": item.delivery_id,
            "eventId": event["id"],
            "orderId": event["orderId"],
            "attempt": item.attempts + 1,
            "outcome": name,
            "status": result.status,
            "error": result.error or None,
            "durationMs": result.duration_ms,
            "response": scrub(result.head.decode("utf-8", "replace"), self.sub.url),
        }
        settlement = Settlement(
            self.sub.id,
            item.delivery_id,
            name,
            due_ms,
            result.status,
            result.error,
            event_id=event["id"],
            record=orjson.dumps(record),
            latency_ms=_latency_ms(event) if name == "delivered" else 0,
            breaker=self.sub.breaker(),
        )
        try:
            await asyncio.shield(self.settler.submit(settlement))
        except StoreUnavailable as exc:  # the lease expires and the delivery is tried again
            log.warning("subscription %s: cannot record an outcome: %s", self.sub.id, exc)
            return
        if self.sub.ordered and name in ("delivered", "dead"):
            self._wake.set()  # recording it released the order's next event: claim it now
        log_event(
            "delivery",
            trace=trace,
            outcome=name,
            eventId=event["id"],
            orderId=event["orderId"],
            subscription=self.sub.id,
            attempt=item.attempts + 1,
            status=result.status,
            error=result.error or None,
            durationMs=result.duration_ms,
        )
        if isinstance(outcome, Gone):
            log.warning("subscription %s answered 410: disabled until replayed", self.sub.id)

    async def stop(self, grace_s: float) -> None:
        """Claim nothing more; let attempts in flight finish for up to `grace_s`."""
        self._stopping = True
        self._wake.set()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=grace_s)
        for task in self.tasks:
            task.cancel()  # their leases expire and they are tried again
        if self.settling:  # the settler is still running: their batch goes out
            await asyncio.wait(self.settling, timeout=grace_s)


def _end_span(span: Span | None, result: PostResult) -> None:
    """An attempt's span, ended with what came of it: the HTTP status or the error."""
    if span is None:
        return
    if result.status is not None:
        span.set_attribute("http.response.status_code", result.status)
    span.set_attribute("orderhook.duration_ms", result.duration_ms)
    if result.error:
        tracing.failed(span, result.error)
    span.end()


async def _read_head(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The body up to `limit` bytes (the rest of a large body is not wanted, nor waited for).
    A body cut short of its length raises ClientPayloadError: the answer is not complete,
    so the delivery is not counted as made."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _outcome_name(outcome: Outcome) -> tuple[Settled, int]:
    if isinstance(outcome, Delivered):
        return Settled.DELIVERED, 0
    if isinstance(outcome, Retry):
        return Settled.RETRY, now_ms() + int(outcome.delay_s * 1000)
    if isinstance(outcome, Gone):
        return Settled.GONE, 0
    return Settled.DEAD, 0


class Deliverer:
    """Every push subscription's worker, and the sweep that returns expired leases to the
    queue. `apply` follows the catalog: a new subscription gets a worker, a changed one's
    worker uses it from its next attempt, a deleted (or pull) one's worker finishes what it
    has in flight and stops."""

    RECLAIM_EVERY_S = 1.0

    def __init__(
        self,
        subscriptions: Iterable[Subscription],
        deliveries: Deliveries,
        session: aiohttp.ClientSession,
        transforms: Transforms,
    ) -> None:
        self.deliveries = deliveries
        self.session = session
        # The subscriber has its event by now: recording the outcome can wait a moment and
        # share one round trip with the outcomes of other attempts.
        self.settler: Batcher[Settlement, bool] = Batcher(
            deliveries.settle, name="settle", linger_s=SETTLE_LINGER_S
        )
        self.transforms = transforms  # started and closed here
        self.workers: dict[str, SubscriptionWorker] = {}
        self._tasks: dict[SubscriptionWorker, asyncio.Task[None]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._running = False
        self._stopping = asyncio.Event()
        self.apply({s.id: s for s in subscriptions})

    def apply(self, subscriptions: Mapping[str, Subscription]) -> None:
        """Follow a change of the subscriptions (app/subscriptions/live.py)."""
        wanted = {
            sub_id: sub
            for sub_id, sub in subscriptions.items()
            if sub.mode == "push" and sub.secrets_problem is None
        }
        for sub_id in [s for s in self.workers if s not in wanted]:
            self._retire(self.workers.pop(sub_id))
        for sub_id, sub in wanted.items():
            if sub_id in self.workers:
                self.workers[sub_id].sub = sub
            else:
                worker = SubscriptionWorker(
                    sub, self.deliveries, self.session, self.settler, self.transforms
                )
                self.workers[sub_id] = worker
                if self._running:
                    self._launch(worker)

    def _launch(self, worker: SubscriptionWorker) -> None:
        self._tasks[worker] = asyncio.create_task(worker.run(), name=f"deliver-{worker.sub.id}")

    def _retire(self, worker: SubscriptionWorker) -> None:
        """Stop a worker the catalog no longer has: what it has in flight finishes."""
        task = self._tasks.pop(worker, None)

        async def retire() -> None:
            await worker.stop(RETIRE_GRACE_S)
            if task is not None:
                await asyncio.wait([task], timeout=RETIRE_GRACE_S)

        retiring = asyncio.create_task(retire())
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)

    def wake(self, sub_ids: Iterable[str]) -> None:
        for sub_id in sub_ids:
            if sub_id in self.workers:
                self.workers[sub_id].wake()

    @contextmanager
    def reserve(self, wanted: Mapping[str, int]) -> Iterator[Slots]:
        """Slots of the workers of `wanted`'s subscriptions, all given back on the way out
        (those used are then counted by their attempts)."""
        workers = {sub: self.workers[sub] for sub in wanted if sub in self.workers}
        grants = {sub: worker.reserve(wanted[sub]) for sub, worker in workers.items()}
        slots = Slots(grants, self._start)
        try:
            yield slots
        finally:
            for sub, count in slots.reserved.items():
                workers[sub].release(count)

    def _start(self, sub_id: str, item: Claimed) -> None:
        self.workers[sub_id].start(item)

    async def run(self) -> None:
        self.settler.start()
        self.transforms.start()
        self._running = True
        for worker in self.workers.values():
            self._launch(worker)
        await self._reclaim_expired_leases()

    async def _reclaim_expired_leases(self) -> None:
        while not self._stopping.is_set():
            for sub_id, worker in list(self.workers.items()):
                try:
                    if await self.deliveries.reclaim_expired(sub_id):
                        worker.wake()
                except StoreUnavailable as exc:
                    log.warning("lease sweep: %s", exc)
                except Exception:  # never let the sweep die: it is what makes crashes safe
                    log.exception("lease sweep error")
            await sleep_unless(self._stopping, self.RECLAIM_EVERY_S)

    async def stop(self, grace_s: float) -> None:
        self._stopping.set()
        await asyncio.gather(*(w.stop(grace_s) for w in self.workers.values()))
        tasks = [*self._tasks.values(), *self._retiring]
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        await self.settler.close()
        await self.transforms.close()

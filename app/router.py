"""The router: reads the ingest stream through a consumer group, applies every subscription's
filter, and creates the matching deliveries while acknowledging the entry, in one atomic step.

A single-fire FromOrders filter (VTEX's default, without `disableSingleFire`) makes a delivery
for an order's first match only: route.lua decides, atomically across processes.

Several gateway processes share the stream through the group; entries a dead process read but
never routed are taken over after `router_claim_idle_s` (XAUTOCLAIM).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from app import tracing
from app.config import Settings
from app.errors import StoreUnavailable
from app.filters import (
    EVALUATION_PAUSE_S,
    EvaluationError,
    Expression,
    FromOrders,
    Slices,
    order_document,
    single_fire_s,
)
from app.lifecycle import sleep_unless
from app.ordering import place
from app.sandbox import (
    FILTER,
    ConfigExpressions,
    Job,
    SandboxBusy,
    Verdict,
    expression_sources,
)
from app.slots import Slots
from app.store.deliveries import Claimed
from app.store.routing import Planned, Routed, Routing, StreamEntry
from app.store.schema import Counter as Stat
from app.store.schema import stat_field
from app.subscriptions.live import Subscriptions
from app.subscriptions.spec import Subscription
from app.vtex.enrich import Enricher

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger("orderhook.router")

READ_COUNT = 200
READ_BLOCK_MS = 1000
DEFERRED_RETRY_MS = 10
RETRY_AFTER_STORE_ERROR_S = 1.0
# The filters' worker busy or failing to start: the batch waits this long, this many times,
# then stays pending (claimed again later); never routed without its filters.
FILTERS_RETRY_S = 0.5
FILTERS_ATTEMPTS = 10


class FiltersUnavailable(Exception):
    """The filters' worker pool could not evaluate a batch: its entries stay pending."""


def delivery_id(event_id: str, subscription_id: str) -> str:
    """Stable per (event, subscription): routing the same entry twice makes no second one."""
    return f"{event_id}.{subscription_id}"


def matching(
    subscriptions: Sequence[Subscription],
    event: dict[str, Any],
    on_error: Callable[[Subscription, EvaluationError], None],
    verdicts: dict[str, Verdict] | None = None,
) -> list[Subscription]:
    """The subscriptions that want this event; a filter failing at run time is a non-match.
    `verdicts`: the FromOrders filters' answers, by subscription, from the worker pool (without
    them, FromOrders filters are evaluated here, in this process)."""
    document = order_document(event)
    matched = []
    for sub in subscriptions:
        if not sub.wants_account(event["account"]):
            continue
        try:
            if _matches(sub, event, document, verdicts):
                matched.append(sub)
        except EvaluationError as exc:
            on_error(sub, exc)
    return matched


def _matches(
    sub: Subscription,
    event: dict[str, Any],
    document: dict[str, Any],
    verdicts: dict[str, Verdict] | None,
) -> bool:
    if verdicts is None or not isinstance(sub.filter, FromOrders):
        return sub.filter.matches(event, document)
    verdict = verdicts[sub.id]
    if isinstance(verdict, EvaluationError):
        raise verdict
    return verdict is True


def filter_expressions(subscriptions: Sequence[Subscription]) -> dict[str, Expression]:
    """The subscriptions' FromOrders filters, by their names in the filters' pool."""
    return {
        FILTER + s.id: s.filter.expression
        for s in subscriptions
        if isinstance(s.filter, FromOrders)
    }


def filter_pool(subscriptions: Sequence[Subscription]) -> ConfigExpressions | None:
    """The worker pool of the subscriptions' FromOrders filters (None: there are none)."""
    expressions = filter_expressions(subscriptions)
    return ConfigExpressions(expressions) if expressions else None


class Dispatch(Protocol):
    """This process's deliverer, as the router sees it."""

    def reserve(self, wanted: Mapping[str, int]) -> AbstractContextManager[Slots]:
        """Up to `wanted` free slots per subscription, given back on the way out."""

    def wake(self, sub_ids: Iterable[str]) -> None:
        """Deliveries wait in these subscriptions' ready queues."""


class Router:
    def __init__(
        self,
        settings: Settings,
        routing: Routing,
        dispatch: Dispatch,
        enricher: Enricher | None = None,
        subscriptions: Subscriptions | None = None,
    ) -> None:
        self.enricher = enricher
        # The catalog's copy (app/subscriptions/live.py); each batch is planned with the
        # subscriptions it has when the batch starts.
        self.live = subscriptions or Subscriptions(settings.subscriptions)
        self.subscriptions = self.live.all()
        self.claim_idle_ms = int(settings.router_claim_idle_s * 1000)
        self.routing = routing
        self.dispatch = dispatch
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._filter_errors: Counter[str] = Counter()
        self._filter_sources = expression_sources(filter_expressions(self.subscriptions))
        self.filters = filter_pool(self.subscriptions)
        # Entries routed after their order's earlier ones, which another process still holds.
        self._deferred: list[StreamEntry] = []

    async def run(self, stopping: asyncio.Event) -> None:
        next_reclaim = 0.0
        while not stopping.is_set():
            await self._until_ready(stopping)
            try:
                while not stopping.is_set():
                    if not self.live.routable:  # none yet, or one unreadable: events wait
                        await sleep_unless(stopping, READ_BLOCK_MS / 1000)
                        continue
                    if time.monotonic() >= next_reclaim:
                        next_reclaim = time.monotonic() + self.claim_idle_ms / 2000
                        await self.route(
                            await self.routing.reclaim_entries(
                                self.consumer, self.claim_idle_ms, READ_COUNT
                            )
                        )
                    if self._deferred:  # their order's earlier entries may be routed by now
                        deferred, self._deferred = self._deferred, []
                        await self._route_ready(deferred)
                    block_ms = DEFERRED_RETRY_MS if self._deferred else READ_BLOCK_MS
                    await self.route(
                        await self.routing.read_new(self.consumer, READ_COUNT, block_ms)
                    )
            except (StoreUnavailable, FiltersUnavailable) as exc:
                log.warning("router: %s", exc)
            except Exception:  # e.g. the stream or group deleted under us: set up again
                log.exception("router error")
            await sleep_unless(stopping, RETRY_AFTER_STORE_ERROR_S)

    async def _until_ready(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.routing.ensure_group()
                return
            except StoreUnavailable as exc:
                log.warning("router waiting for redis: %s", exc)
                await sleep_unless(stopping, RETRY_AFTER_STORE_ERROR_S)

    async def route(self, entries: Sequence[StreamEntry]) -> None:
        if entries and self.enricher is not None:
            entries = await self.enricher.ready(entries)  # the rest wait, pending, for later
        await self._route_ready(entries)

    async def _route_ready(self, entries: Sequence[StreamEntry]) -> None:
        """Route entries as they are (already enriched, if an enricher is set)."""
        if not entries:
            return
        routed = await self._plan_all(entries)
        if tracing.on:
            routed, spans = _route_spans(routed)
            try:
                deferred = await self._route_planned(routed)
            except BaseException as exc:  # left pending: routed again later
                _end_route_spans(spans, routed, set(), type(exc).__name__)
                raise
            _end_route_spans(spans, routed, deferred)
        else:
            deferred = await self._route_planned(routed)
        if deferred:
            self._deferred += [
                StreamEntry(r.entry_id, r.event_json, r.trace)
                for r in routed
                if r.entry_id in deferred
            ]
        if self._filter_errors:
            errors, self._filter_errors = self._filter_errors, Counter()
            await self.routing.count(
                {stat_field(sub, Stat.FILTER_ERRORS): n for sub, n in errors.items()}
            )

    async def _route_planned(self, routed: list[Routed]) -> set[str]:
        """Create the deliveries, start those put in flight for this process, wake the others'
        workers; returns the entry ids deferred (an earlier entry of their order is not
        routed yet)."""
        with self.dispatch.reserve(Counter(d.sub for r in routed for d in r.deliveries)) as slots:
            for d in (d for r in routed for d in r.deliveries):
                d.lease_until_ms = slots.take(d.sub)
            claimed, deferred = await self.routing.route(routed)
            queued = self._start_claimed(routed, claimed, slots)
        self.dispatch.wake(queued)
        return deferred

    async def _follow_catalog(self) -> None:
        """Take the subscriptions as they are now; a changed set of FromOrders filters gets a
        new worker pool (no batch is using the old one: batches are planned one at a time)."""
        self.subscriptions = self.live.all()
        sources = expression_sources(filter_expressions(self.subscriptions))
        if sources != self._filter_sources:
            old, self._filter_sources = self.filters, sources
            self.filters = filter_pool(self.subscriptions)
            if old is not None:
                await old.close()

    async def _plan_all(self, entries: Sequence[StreamEntry]) -> list[Routed]:
        """Plan each entry: the batch's FromOrders filters in one round trip to their worker
        pool (awaited: the event loop runs meanwhile), the rest here."""
        await self._follow_catalog()
        events = []
        for entry_id, raw, trace in entries:
            try:
                event = orjson.loads(raw)
                events.append((entry_id, raw, trace, event, self._pool_filters(event)))
            except Exception:  # not an event this gateway wrote: left pending, logged, and
                # the batch's other entries go on (its deliveries are planned one by one)
                log.exception("ingest entry %s could not be read; left pending", entry_id)
        verdicts = await self._verdicts([(names, raw) for _, raw, _, _, names in events])
        routed = []
        slices = Slices()  # without a pool, filters are evaluated here: let others run
        for (entry_id, raw, trace, event, names), answers in zip(events, verdicts, strict=True):
            try:
                pairs = zip(names, answers, strict=True)
                found = {name.removeprefix(FILTER): v for name, v in pairs}
                routed.append(self.plan(entry_id, raw, event, found, trace))
            except Exception:
                log.exception("ingest entry %s could not be planned; left pending", entry_id)
            if slices.over():
                await asyncio.sleep(EVALUATION_PAUSE_S)
        return routed

    def _pool_filters(self, event: dict[str, Any]) -> list[str]:
        """The names of the pool's filters this event is to be tried against (an event without
        the fields filters read is answered with an error, then refused by `plan`)."""
        if self.filters is None:
            return []
        return [
            FILTER + s.id
            for s in self.subscriptions
            if isinstance(s.filter, FromOrders) and s.wants_account(event["account"])
        ]

    async def _verdicts(self, jobs: list[Job]) -> list[list[Verdict]]:
        """The filters' answers, per job; waits (bounded) for a busy or restarting pool."""
        wanted = [job for job in jobs if job[0]]
        if self.filters is None or not wanted:
            return [[] for _ in jobs]
        for _ in range(FILTERS_ATTEMPTS):
            try:
                answers = iter(await self.filters.evaluate(wanted))
                return [next(answers) if names else [] for names, _ in jobs]
            except (SandboxBusy, OSError) as exc:
                log.warning("router: filters' worker unavailable (%s); waiting", exc)
                await asyncio.sleep(FILTERS_RETRY_S)
        raise FiltersUnavailable(
            f"the filters' worker stayed unavailable for {FILTERS_ATTEMPTS} tries; "
            f"{len(jobs)} entries left pending"
        )

    def plan(
        self,
        entry_id: str,
        raw: bytes,
        event: dict[str, Any],
        verdicts: dict[str, Verdict],
        trace: str = "",
    ) -> Routed:
        """`verdicts`: the pool's answers for this event's FromOrders filters, by subscription
        (the pool holds every FromOrders filter; the others are evaluated here); `trace`, the
        entry's trace context."""
        subs = matching(self.subscriptions, event, self._filter_failed, verdicts)
        planned = [self._planned(event, sub) for sub in subs]
        return Routed(entry_id, event, raw, planned, trace)

    @staticmethod
    def _planned(event: dict[str, Any], sub: Subscription) -> Planned:
        """The delivery to create; one that cannot be planned carries its error, and route.lua
        dead-letters it with that reason (the event's other deliveries go on)."""
        planned = Planned(delivery_id(event["id"], sub.id), sub.id)
        planned.single_fire_s = single_fire_s(sub.filter)  # route.lua decides: once per order
        planned.max_per_second = sub.max_per_second  # admission's, with the lease
        if sub.ordered:
            try:
                planned.ordered = place(event, planned.delivery_id, sub)
            except Exception as exc:  # a value no rule foresaw: dead-lettered, not lost
                log.exception("delivery %s could not be planned", planned.delivery_id)
                planned.error = f"{type(exc).__name__}: {exc}"[:500]
        return planned

    @staticmethod
    def _start_claimed(routed: Sequence[Routed], claimed: set[str], slots: Slots) -> set[str]:
        """Start the deliveries route.lua put in flight for this process; returns the
        subscriptions whose ready queues got the others."""
        queued = set()
        for r in routed:
            for d in r.deliveries:
                if d.delivery_id in claimed:
                    slots.start(d.sub, Claimed(d.delivery_id, r.event_json, 0, r.event, r.trace))
                else:  # in the ready set (or its order's line: it may have let another go)
                    queued.add(d.sub)
        return queued

    async def close(self) -> None:
        if self.filters is not None:
            await self.filters.close()

    def _filter_failed(self, sub: Subscription, exc: EvaluationError) -> None:
        log.warning("filter of subscription %s failed, counted as no match: %s", sub.id, exc)
        self._filter_errors[sub.id] += 1


def _route_spans(routed: list[Routed]) -> tuple[list[Routed], list[Span]]:
    """A "route" span per event, child of its stored context; its deliveries keep the span's."""
    spans = [tracing.start("route", r.trace, "internal", _route_attributes(r)) for r in routed]
    pairs = zip(routed, spans, strict=True)
    traced = [replace(r, trace=tracing.traceparent_of(s)) for r, s in pairs]
    return traced, spans


def _route_attributes(r: Routed) -> dict[str, str | int | bool]:
    return {
        "orderhook.event_id": r.event["id"],
        "orderhook.order_id": r.event["orderId"],
        "orderhook.deliveries": len(r.deliveries),
    }


def _end_route_spans(
    spans: list[Span], routed: list[Routed], deferred: set[str], error: str = ""
) -> None:
    for span, r in zip(spans, routed, strict=True):
        if r.entry_id in deferred:  # its order's earlier event first: routed again later
            span.set_attribute("orderhook.deferred", True)
        if error:
            tracing.failed(span, error)
        span.end()

"""The replay of a time range, as a background job: every retained event received in
[since, until) that matches a subscription's filter now is delivered to it again (with the
same `webhook-id`, its event id), whether or not it was delivered before.

The routed events are read by receipt time (Keys.received) in chunks of CHUNK; each chunk's
events are tried against the subscription's filter (a FromOrders filter in a worker pool of the
job's own: jsonatapy holds the GIL, and the gateway must go on serving meanwhile; the others
here, as the router does) and its deliveries are made in one script run (app/store/replays.py):
one that still exists, pending or dead, is skipped; single fire is not asked (a replay is
explicit).

Jobs run in the process that was asked (`ReplayJobs`, started and stopped with the server): at
most MAX_RUNNING at once, MAX_JOBS in all (running or waiting; more: TooManyJobs, 429). Their
progress is in Redis (Keys.job), so any process can answer for them; a job's heartbeat is
renewed every HEARTBEAT_S while its process runs it, and one older than STALE_S reads as
failed. A job stopped with the server is marked failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from app.api_types import JobStatus
from app.errors import BadRequest, StoreUnavailable, TooManyJobs
from app.events import TICKS_PER_S, iso_ticks, order_key
from app.filters import EvaluationError
from app.ordering import place
from app.router import FILTERS_ATTEMPTS, FILTERS_RETRY_S, delivery_id, filter_pool, matching
from app.sandbox import FILTER, ConfigExpressions, SandboxBusy, Verdict
from app.store.client import now_ms
from app.store.replays import Again, Cursor, Replays
from app.store.schema import Job, JobState
from app.subscriptions.spec import Subscription

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger("orderhook.replay")

CHUNK = 100  # events per read and per script run: Redis is never held long
# The job goes at the subscription's delivery pace: a chunk is made once its ready set holds at
# most BACKLOG, so its live deliveries wait behind at most BACKLOG + CHUNK replayed ones; a
# ready set that does not shrink for STALL_S (paused, breaker open, slow) does not hold it.
BACKLOG = 50
BACKLOG_POLL_S = 0.02
STALL_S = 2.0
MAX_RUNNING = 2
MAX_JOBS = 16
HEARTBEAT_S = 5.0
STALE_S = 30.0
STOPPED = "the process running it stopped"


class JobFailed(Exception):
    """Why a job could not go on (its message is the job's `error`)."""


@dataclass(frozen=True)
class Range:
    """A time range of receipt, [since, until), in Unix ms."""

    since_ms: int
    until_ms: int


def rfc3339(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def time_ms(value: str, field: str) -> int:
    """An RFC 3339 date-time (app.events.iso_ticks) in Unix ms; BadRequest if not one."""
    ticks = iso_ticks(value)
    if ticks is None:
        raise BadRequest(f"`{field}` must be an RFC 3339 date-time, got {value[:60]!r}")
    return ticks // (TICKS_PER_S // 1000)


def replay_range(since: str, until: str | None, now: int, retention_s: int) -> Range:
    """The range asked (until: now by default): since before until, at most the delivery log's
    retention long (nothing older is kept); BadRequest otherwise."""
    # never past now: the events received while the job runs are delivered already
    wanted = Range(
        time_ms(since, "since"), now if until is None else min(now, time_ms(until, "until"))
    )
    if wanted.since_ms >= wanted.until_ms:
        raise BadRequest("`since` must be before `until`")
    if wanted.until_ms - wanted.since_ms > retention_s * 1000:
        raise BadRequest(
            f"the range is longer than the delivery log's retention ({retention_s} s): "
            "older events are not kept"
        )
    return wanted


def backfill_range(since: str, now: int, retention_s: int) -> Range:
    """A new subscription's backfill: from `since` (or the retention's start, if later) to now;
    BadRequest if `since` is not an RFC 3339 date-time in the past."""
    start = time_ms(since, "backfill_since")
    if start >= now:
        raise BadRequest("`backfill_since` must be in the past")
    return Range(max(start, now - retention_s * 1000), now)


def job_status(fields: dict[str, str], now: int) -> JobStatus:
    """A job as its hash says; running with a heartbeat older than STALE_S: failed."""
    state = JobState(fields[Job.STATE])
    error = fields.get(Job.ERROR)
    if state is JobState.RUNNING and now - int(fields[Job.HEARTBEAT_MS]) > STALE_S * 1000:
        state, error = JobState.FAILED, STOPPED
    status = JobStatus(
        state,
        fields[Job.SUBSCRIPTION],
        rfc3339(int(fields[Job.SINCE_MS])),
        rfc3339(int(fields[Job.UNTIL_MS])),
        total=int(fields.get(Job.TOTAL, 0)),
        done=int(fields.get(Job.DONE, 0)),
        replayed=int(fields.get(Job.REPLAYED, 0)),
        skipped=int(fields.get(Job.SKIPPED, 0)),
    )
    if error is not None:
        status.error = error
    return status


class _Run:
    """One job's work: the chunks, the filter, the deliveries to make."""

    def __init__(self, replays: Replays, job: str, sub: Subscription, wanted: Range) -> None:
        self.replays, self.job, self.sub, self.range = replays, job, sub, wanted
        self.filter_errors = 0

    async def __call__(self, wake: Callable[[Iterable[str]], None] | None) -> int:
        """Replay the range; returns the number of events looked at."""
        pool = filter_pool([self.sub])
        try:
            return await self._chunks(pool, wake)
        finally:
            if pool is not None:
                await pool.close()
            if self.filter_errors:
                log.warning(
                    "replay %s: the filter of %s failed on %d events (no match)",
                    self.job,
                    self.sub.id,
                    self.filter_errors,
                )

    async def _chunks(
        self, pool: ConfigExpressions | None, wake: Callable[[Iterable[str]], None] | None
    ) -> int:
        cursor, looked = Cursor(self.range.since_ms), 0
        while True:
            await self._room()
            rows = await self.replays.received(cursor, self.range.until_ms, CHUNK)
            if not rows:
                return looked
            cursor.advance(rows)
            again = await self._matching(pool, await self.replays.events([i for i, _ in rows]))
            made = await self.replays.make(self.sub.id, self.job, len(rows), again)
            if made.gone:
                raise JobFailed(f"subscription {self.sub.id!r} was deleted")
            if made.replayed and wake is not None:
                wake([self.sub.id])
            looked += len(rows)

    async def _room(self) -> None:
        """Wait while the subscription's ready set holds over BACKLOG and shrinks (a pull
        subscription's is its feed, taken at its consumer's pace: never waited for)."""
        if self.sub.mode == "pull":
            return
        least, since = None, time.monotonic()
        while (waiting := await self.replays.waiting(self.sub.id)) > BACKLOG:
            if least is None or waiting < least:
                least, since = waiting, time.monotonic()
            elif time.monotonic() - since > STALL_S:
                break
            await asyncio.sleep(BACKLOG_POLL_S)

    async def _matching(
        self, pool: ConfigExpressions | None, raws: Sequence[bytes | None]
    ) -> list[tuple[Again, bytes]]:
        events = [(raw, event) for raw in raws if raw and (event := _event(raw)) is not None]
        verdicts = await self._verdicts(pool, events)
        found = []
        for (raw, event), verdict in zip(events, verdicts, strict=True):
            if matching([self.sub], event, self._failed, verdict) and (again := self._again(event)):
                found.append((again, raw))
        return found

    async def _verdicts(
        self, pool: ConfigExpressions | None, events: Sequence[tuple[bytes, dict[str, Any]]]
    ) -> list[dict[str, Verdict] | None]:
        """The FromOrders filter's answers, by event, from the pool (None: in-process)."""
        if pool is None:
            return [None] * len(events)
        name = FILTER + self.sub.id
        wanted = [raw for raw, event in events if self.sub.wants_account(event["account"])]
        answers = iter(await _evaluate(pool, [([name], raw) for raw in wanted]))
        return [
            {self.sub.id: next(answers)[0]} if self.sub.wants_account(event["account"]) else {}
            for _, event in events
        ]

    def _again(self, event: dict[str, Any]) -> Again | None:
        did = delivery_id(event["id"], self.sub.id)
        try:
            ordered = place(event, did, self.sub) if self.sub.ordered else None
        except Exception:  # a value no rule foresaw (the router dead-lettered it, if so)
            log.exception("replay %s: delivery %s could not be placed; not made", self.job, did)
            return None
        return Again(did, event["id"], event["orderId"], order_key(event), ordered)

    def _failed(self, sub: Subscription, exc: EvaluationError) -> None:
        self.filter_errors += 1


def _event(raw: bytes) -> dict[str, Any] | None:
    """An event as routed; None when it is not one this gateway wrote."""
    with contextlib.suppress(ValueError):
        event = orjson.loads(raw)
        if isinstance(event, dict) and all(k in event for k in ("id", "orderId", "account")):
            return event
    return None


async def _evaluate(
    pool: ConfigExpressions, jobs: list[tuple[Sequence[str], bytes]]
) -> list[list[Verdict]]:
    """The pool's answers; waits (bounded, as the router does) for a busy or restarting pool."""
    if not jobs:
        return []
    for _ in range(FILTERS_ATTEMPTS):
        try:
            return await pool.evaluate(jobs)
        except (SandboxBusy, OSError) as exc:
            log.warning("replay: the filter's worker is unavailable (%s); waiting", exc)
            await asyncio.sleep(FILTERS_RETRY_S)
    raise JobFailed(f"the filter's worker stayed unavailable for {FILTERS_ATTEMPTS} tries")


_BY_RUNTIME: dict[int, ReplayJobs] = {}  # each process's jobs, for start_backfill


class ReplayJobs:
    """This process's replay jobs. `wake`: this process's deliverer's (deliveries made wait in
    these subscriptions' ready sets); other processes notice them within their poll."""

    def __init__(
        self, runtime: Runtime, wake: Callable[[Iterable[str]], None] | None = None
    ) -> None:
        self.runtime = runtime
        self.replays = Replays(runtime.store)
        self._wake = wake
        self._running = asyncio.Semaphore(MAX_RUNNING)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._beat: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._beat = asyncio.create_task(self._heartbeats(), name="orderhook-job-heartbeats")
        _BY_RUNTIME[id(self.runtime)] = self

    async def close(self) -> None:
        """Stop every job (each marked failed) and the heartbeats."""
        _BY_RUNTIME.pop(id(self.runtime), None)
        tasks = [*self._tasks.values(), *([self._beat] if self._beat else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def replay(self, sub_id: str, wanted: Range) -> str:
        """Start replaying `wanted` to the subscription; returns the job's id. TooManyJobs when
        this process has MAX_JOBS already."""
        if len(self._tasks) >= MAX_JOBS:
            raise TooManyJobs(f"this process runs {MAX_JOBS} jobs already; try again later")
        job = uuid.uuid4().hex
        total = await self.replays.count(wanted.since_ms, wanted.until_ms)
        fields: dict[str, str | int] = {
            Job.SUBSCRIPTION: sub_id,
            Job.SINCE_MS: wanted.since_ms,
            Job.UNTIL_MS: wanted.until_ms,
            Job.TOTAL: total,
            Job.STARTED_MS: now_ms(),
        }
        await self.replays.begin(
            job, fields | {f: 0 for f in (Job.DONE, Job.REPLAYED, Job.SKIPPED)}
        )
        task = asyncio.create_task(self._run(job, sub_id, wanted), name=f"orderhook-job-{job}")
        self._tasks[job] = task
        task.add_done_callback(lambda _: self._tasks.pop(job, None))
        return job

    async def status(self, job: str) -> JobStatus | None:
        fields = await self.replays.read(job)
        return job_status(fields, now_ms()) if Job.STATE in fields else None

    async def _run(self, job: str, sub_id: str, wanted: Range) -> None:
        try:
            async with self._running:
                sub = self.runtime.subscriptions.get(sub_id)
                if sub is None:
                    raise JobFailed(f"subscription {sub_id!r} was deleted")
                looked = await _Run(self.replays, job, sub, wanted)(self._wake)
            await self.replays.end(job, JobState.DONE, looked)
        except asyncio.CancelledError:
            await asyncio.shield(self._fail(job, f"stopped: {STOPPED}"))
            raise
        except JobFailed as exc:
            await self._fail(job, str(exc))
        except StoreUnavailable as exc:
            await self._fail(job, exc.public)
        except Exception:
            log.exception("replay %s failed", job)
            await self._fail(job, "internal error (see the gateway's log)")

    async def _fail(self, job: str, error: str) -> None:
        try:
            await self.replays.end(job, JobState.FAILED, None, error)
        except StoreUnavailable as exc:  # its heartbeat goes stale: it reads as failed
            log.warning("replay %s failed (%s), and could not be marked so: %s", job, error, exc)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            if self._tasks:
                try:
                    await self.replays.beat(list(self._tasks))
                except StoreUnavailable as exc:
                    log.warning("replay jobs' heartbeat: %s", exc)


async def start_backfill(runtime: Runtime, sub_id: str, since: str) -> str:
    """A new subscription's `backfill_since`: a replay from `since` (or the retention's start)
    to now, run by this process's jobs; returns the job's id. BadRequest for a `since` that is
    not an RFC 3339 date-time in the past; TooManyJobs (429) when this process has MAX_JOBS."""
    jobs = _BY_RUNTIME.get(id(runtime))
    if jobs is None:
        raise RuntimeError("no replay jobs run in this process (ReplayJobs not started)")
    wanted = backfill_range(since, now_ms(), runtime.settings.log_retention_s)
    return await jobs.replay(sub_id, wanted)

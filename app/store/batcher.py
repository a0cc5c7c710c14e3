"""Group commit: what many callers want written goes to Redis together.

Each caller puts its item on a bounded list and waits for its own result. One flusher task
takes everything waiting (up to `max_batch`), writes it with a single call (one Lua script run,
one round trip) and hands every caller its own result; meanwhile the next batch collects. A
caller is therefore answered only once its own item is written, and a busy gateway pays one
round trip per batch instead of one per item.

Used for ingest (each hook request is answered only once its event is durable) and for the
outcomes of delivery attempts.

With a `deadline_s`, every caller has its answer within that time, however many wait and
however long Redis takes: one sweep (not a timer per caller) fails, with StoreUnavailable,
whoever has waited `deadline_s` — still queued (its item is then never written) or in a batch
being written (its item may still be written; for ingest the caller answers 503, VTEX retries
and dedupe recognizes the event, so nothing is lost or doubled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from app.errors import StoreUnavailable

log = logging.getLogger("orderhook.store")

DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_WAITING = 10_000
SWEEP_SLACK_S = 0.05  # a caller is answered this soon after its deadline (one sweep for many)

T = TypeVar("T")
R = TypeVar("R")

# A caller: its item, the future it waits on, and when it stops waiting (loop time).
_Waiter = tuple[T, "asyncio.Future[R]", float]


class Batcher(Generic[T, R]):
    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        name: str,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_waiting: int = DEFAULT_MAX_WAITING,
        linger_s: float = 0.0,
        deadline_s: float | None = None,
    ) -> None:
        self.write = write
        self.linger_s = linger_s
        self.name = name
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.deadline_s = deadline_s
        # Callers in arrival order, so (with one deadline for all) in order of expiry too.
        self._waiting: deque[_Waiter[T, R]] = deque()
        self._writing: dict[int, list[_Waiter[T, R]]] = {}  # the batches being written
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sweep: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"orderhook-{self.name}")

    async def submit(self, item: T) -> R:
        """Write one item with the next batch; returns its own result once written, or raises
        StoreUnavailable once it has waited `deadline_s`."""
        if len(self._waiting) >= self.max_waiting:
            raise StoreUnavailable(f"{self.max_waiting} {self.name} items already wait for redis")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        expires = math.inf
        if self.deadline_s is not None:
            expires = loop.time() + self.deadline_s
            if self._sweep is None:
                self._sweep = loop.call_at(expires + SWEEP_SLACK_S, self._expire)
        self._waiting.append((item, future, expires))
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            if self.linger_s:  # let more gather where a short wait costs nobody anything
                await asyncio.sleep(self.linger_s)
            self._wakeup.clear()
            while self._waiting:
                await self._flush_one_batch()

    def _take_batch(self) -> list[_Waiter[T, R]]:
        """Up to `max_batch` callers still waiting (not failed by the sweep, not cancelled)."""
        batch: list[_Waiter[T, R]] = []
        while self._waiting and len(batch) < self.max_batch:
            waiter = self._waiting.popleft()
            if not waiter[1].done():
                batch.append(waiter)
        return batch

    async def _flush_one_batch(self) -> None:
        batch = self._take_batch()
        if not batch:
            return
        self._writing[id(batch)] = batch
        try:
            results = await self.write([item for item, _, _ in batch])
        except StoreUnavailable as exc:  # every waiter learns of it; the flusher carries on
            self._fail(batch, exc)
            return
        except Exception:  # one item's fault, maybe: each is written alone, so only it fails
            log.exception("%s batch failed; writing its %d items one by one", self.name, len(batch))
            await self._one_by_one(batch)
            return
        finally:
            del self._writing[id(batch)]
        for (_, future, _), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _one_by_one(self, batch: list[_Waiter[T, R]]) -> None:
        for waiter in batch:
            item, future, _ = waiter
            if future.done():
                continue
            self._writing[id(waiter)] = [waiter]
            try:
                [result] = await self.write([item])
            except Exception as exc:
                self._fail([waiter], exc)
            else:
                if not future.done():
                    future.set_result(result)
            finally:
                del self._writing[id(waiter)]

    @staticmethod
    def _fail(batch: list[_Waiter[T, R]], exc: Exception) -> None:
        for _, future, _ in batch:
            if not future.done():
                future.set_exception(exc)

    def _expire(self) -> None:
        """The sweep: fail every caller past its deadline, queued or in a batch being written;
        then sleep until the next deadline (callers are kept in arrival order: order of expiry)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._waiting and self._waiting[0][2] <= now:
            self._give_up(self._waiting.popleft()[1])
        upcoming = [self._waiting[0][2]] if self._waiting else []
        for batch in self._writing.values():
            for _, future, expires in batch:
                if expires > now:
                    upcoming.append(expires)
                    break
                self._give_up(future)
        when = min(upcoming, default=None)
        self._sweep = None if when is None else loop.call_at(when + SWEEP_SLACK_S, self._expire)

    def _give_up(self, future: asyncio.Future[R]) -> None:
        if not future.done():
            future.set_exception(
                StoreUnavailable(f"redis did not take the {self.name} within {self.deadline_s} s")
            )

    async def close(self) -> None:
        """Write what still waits, then stop the flusher."""
        while self._waiting:
            await self._flush_one_batch()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

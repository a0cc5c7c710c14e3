"""Group commit: what many callers want written goes to Redis together.

Each caller puts its item on a bounded list and waits for its own result. One flusher task
takes everything waiting (up to `max_batch`), writes it with a single call (one Lua script run,
one round trip) and hands every caller its own result; meanwhile the next batch collects. A
caller is therefore answered only once its own item is written, and a busy gateway pays one
round trip per batch instead of one per item.

Used for ingest (each hook request is answered only once its event is durable) and for the
outcomes of delivery attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from app.errors import StoreUnavailable

log = logging.getLogger("orderhook.store")

DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_WAITING = 10_000

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        name: str,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_waiting: int = DEFAULT_MAX_WAITING,
        linger_s: float = 0.0,
    ) -> None:
        self.write = write
        self.linger_s = linger_s
        self.name = name
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"orderhook-{self.name}")

    async def submit(self, item: T) -> R:
        """Write one item with the next batch; returns its own result once written."""
        if len(self._waiting) >= self.max_waiting:
            raise StoreUnavailable(f"{self.max_waiting} {self.name} items already wait for redis")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
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

    async def _flush_one_batch(self) -> None:
        batch = self._waiting[: self.max_batch]
        del self._waiting[: self.max_batch]
        try:
            results = await self.write([item for item, _ in batch])
        except Exception as exc:  # every waiter learns of it; the flusher carries on
            if not isinstance(exc, StoreUnavailable):
                log.exception("%s batch failed", self.name)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Write what still waits, then stop the flusher."""
        while self._waiting:
            await self._flush_one_batch()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

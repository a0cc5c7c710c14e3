"""Group commit: the events of the hook requests in flight go to Redis together.

Each request puts its event on a bounded list and waits for its own result. One flusher task
takes everything waiting (up to `max_batch`), sends it in a single run of the ingest script and
hands every request its own outcome; meanwhile the next batch collects. A request is therefore
answered only once its own event is durable, and a busy gateway pays one Redis round trip per
batch instead of one per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from app.errors import StoreUnavailable
from app.store.client import Appended, Store

log = logging.getLogger("orderhook.store")

DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_WAITING = 10_000

_Waiting = tuple[dict[str, Any], "asyncio.Future[Appended]"]


class GroupCommit:
    def __init__(
        self,
        store: Store,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_waiting: int = DEFAULT_MAX_WAITING,
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self._waiting: list[_Waiting] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="orderhook-group-commit")

    async def append(self, event: dict[str, Any]) -> Appended:
        """Dedupe and append one event; returns once it is durable in Redis."""
        if len(self._waiting) >= self.max_waiting:
            raise StoreUnavailable(f"{self.max_waiting} events already wait for redis")
        future: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._waiting.append((event, future))
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._waiting:
                await self._flush_one_batch()

    async def _flush_one_batch(self) -> None:
        batch = self._waiting[: self.max_batch]
        del self._waiting[: self.max_batch]
        try:
            results = await self.store.append([event for event, _ in batch])
        except Exception as exc:  # every waiter learns of it; the flusher carries on
            if not isinstance(exc, StoreUnavailable):
                log.exception("ingest batch failed")
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Flush what still waits, then stop the flusher."""
        while self._waiting:
            await self._flush_one_batch()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

"""Process-wide helpers: the one wait every background loop of the relay shares, and the
garbage collector's tuning for every gateway process."""

from __future__ import annotations

import asyncio
import gc


async def sleep_unless(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `stopping` is set meanwhile."""
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
    except TimeoutError:
        pass


GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Fewer, cheaper collections: request objects die by reference counting, and the
    cyclic collector's full passes over the framework's long-lived objects were the p99 of
    ingest (bench/ingest.py: 29 ms with the defaults, 13-18 ms with these settings).
    """
    gc.freeze()  # what exists at start-up is permanent: never scan it again
    gc.set_threshold(GC_GEN0_THRESHOLD, 50, 100)

"""Process-wide helpers: the one wait every background loop of the relay shares, the garbage
collector's tuning and the open-files limit for every gateway process."""

from __future__ import annotations

import asyncio
import gc
import logging
import resource

log = logging.getLogger("orderhook.server")


async def finish(
    tasks: list[asyncio.Task[None]], timeout_s: float, logger: logging.Logger, what: str
) -> None:
    """Wait up to `timeout_s` for `tasks`, cancel those still running, and log each that
    failed on `logger` (as `what failed`)."""
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s failed", what, exc_info=task.exception())


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


FALLBACK_OPEN_FILES = 1_048_576  # where the hard limit is "unlimited" (the kernel's nr_open)


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard limit: every connection is a file
    descriptor, and the usual soft limit (1,024) let 1,100 held connections make the hook
    unreachable. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FALLBACK_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %s to %s: %s", soft, wanted, exc)
    return soft

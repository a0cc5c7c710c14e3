"""Structured logs: one JSON line per ingest and delivery outcome, on standard output.

Only the fields given are written: event ids, order ids, subscription ids, statuses, errors.
Request headers, tokens and secrets are never passed here, so they cannot appear.

The lines are written to a buffered stream and flushed every `FLUSH_EVERY_S` (and at exit),
not line by line: a write system call per hook request cost ~20% of ingest throughput.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
from typing import Any, BinaryIO, TextIO

import orjson

from app.events import utc_now_iso

FLUSH_EVERY_S = 0.5


class _Outcomes:
    def __init__(self) -> None:
        self.stream: TextIO | None = None
        self.binary: BinaryIO | None = None  # the stream's buffer: lines go there as bytes

    def write(self, kind: str, fields: dict[str, Any], at: str | None = None) -> None:
        if self.stream is not None:
            line = orjson.dumps(
                {"time": at or utc_now_iso(), "kind": kind, **fields},
                option=orjson.OPT_APPEND_NEWLINE,
            )
            if self.binary is not None:  # as bytes: no decoding to encode them again
                self.binary.write(line)
            else:
                self.stream.write(line.decode())

    def flush(self) -> None:
        if self.stream is not None:
            self.stream.flush()


outcomes = _Outcomes()


def log_event(kind: str, at: str | None = None, **fields: Any) -> None:
    """One outcome line; `at` is its time (RFC 3339), now unless the caller has it already."""
    outcomes.write(kind, fields, at)


async def flush_periodically() -> None:
    """Run for the life of the process (serve's lifespan, or the worker)."""
    while True:
        await asyncio.sleep(FLUSH_EVERY_S)
        outcomes.flush()


def configure(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Plain lines on stderr for the gateway's own messages; outcome lines (JSON) on stdout."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the CLI's requests are not news
    outcomes.stream = stream or sys.stdout
    outcomes.binary = getattr(outcomes.stream, "buffer", None)
    atexit.register(outcomes.flush)

"""Structured logs: one JSON line per ingest and delivery outcome, on standard output.

Only the fields given are written: event ids, order ids, subscription ids, statuses, errors.
Request headers, tokens and secrets are never passed here, so they cannot appear.

The lines are written to a buffered stream and flushed every `FLUSH_EVERY_S` (and at exit),
not line by line: a write system call per hook request cost ~20% of ingest throughput.

The gateway's own messages are plain lines on stderr, one line per record: the formatter
installed by `configure` escapes every control character of the rendered line (message, its
arguments, a traceback), so an order id or a JSONata error holding a newline or an ANSI escape
cannot forge a line or repaint the terminal, whichever call site logged it.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
from typing import Any, BinaryIO, TextIO

import orjson

from app import tracing
from app.errors import one_line
from app.events import utc_now_iso

FLUSH_EVERY_S = 0.5
LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class OneLineFormatter(logging.Formatter):
    """The plain-text format, each record on exactly one line (app.errors.one_line: the same
    escaping as the config errors' messages)."""

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))


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


def log_event(kind: str, at: str | None = None, trace: str = "", **fields: Any) -> None:
    """One outcome line; `at` is its time (RFC 3339), now unless the caller has it already;
    `trace`, the event's W3C traceparent if it has one: the line then carries its `traceId`."""
    if trace and (trace_id := tracing.trace_id(trace)) is not None:
        fields["traceId"] = trace_id
    outcomes.write(kind, fields, at)


async def flush_periodically() -> None:
    """Run for the life of the process (serve's lifespan, or the worker)."""
    while True:
        await asyncio.sleep(FLUSH_EVERY_S)
        outcomes.flush()


def configure(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Plain lines on stderr for the gateway's own messages, uvicorn's included (serve runs it
    with `log_config=None`, so its loggers reach this handler); outcome lines (JSON) on stdout."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(LINE_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the CLI's requests are not news
    outcomes.stream = stream or sys.stdout
    outcomes.binary = getattr(outcomes.stream, "buffer", None)
    atexit.register(outcomes.flush)

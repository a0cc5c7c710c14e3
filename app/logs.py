"""Structured logs: one JSON line per ingest and delivery outcome.

Only the fields given are written: event ids, order ids, subscription ids, statuses, errors.
Request headers, tokens and secrets are never passed here, so they cannot appear.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

from app.events import utc_now_iso

outcomes = logging.getLogger("orderhook.outcomes")


def log_event(kind: str, **fields: Any) -> None:
    if outcomes.isEnabledFor(logging.INFO):
        outcomes.info("%s", orjson.dumps({"time": utc_now_iso(), "kind": kind, **fields}).decode())


def configure(level: int = logging.INFO) -> None:
    """Plain lines for the gateway's own messages; outcome lines are JSON as they are."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    raw = logging.StreamHandler(sys.stdout)
    raw.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    outcomes.handlers[:] = [raw]
    outcomes.propagate = False
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the CLI's requests are not news

"""JSON responses and the one place where errors become HTTP statuses."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import orjson
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from app.errors import RequestError, StoreUnavailable
from app.logs import log_event
from app.store.schema import rejected_field

log = logging.getLogger("orderhook.http")

# VTEX retries a 503; this tells other clients when to come back.
RETRY_AFTER_S = 5


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


REJECTION_REASONS = {
    400: "invalid",
    401: "unauthorized",
    408: "timeout",
    413: "too_large",
    415: "media_type",
}


async def on_request_error(request: Request, exc: Exception) -> Response:
    message = exc.message if isinstance(exc, RequestError) else str(exc)
    status = exc.status if isinstance(exc, RequestError) else 400
    # After a 408 the rest of the body is not awaited: the connection is closed with it.
    headers = {"Connection": "close"} if status == 408 else None
    return json_response({"error": message}, status, headers)


async def count_rejection(state: State, status: int) -> None:
    """A refused hook request: an outcome line, and a count in Redis (if it answers)."""
    reason = REJECTION_REASONS.get(status, str(status))
    log_event("ingest", outcome="rejected", reason=reason, status=status)
    runtime = getattr(state, "runtime", None)
    if runtime is not None:
        with contextlib.suppress(StoreUnavailable):
            await runtime.routing.count({rejected_field(reason): 1})


def unavailable(exc: Exception) -> dict[str, str]:
    """The answer (503, with Retry-After) while Redis is down."""
    log.warning("store unavailable: %s", exc)
    return {"error": "storage is unavailable, try again later"}


async def on_store_unavailable(request: Request, exc: Exception) -> Response:
    return json_response(unavailable(exc), 503, {"Retry-After": str(RETRY_AFTER_S)})


async def on_http_exception(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return json_response({"error": detail}, status, getattr(exc, "headers", None))


async def on_unexpected(request: Request, exc: Exception) -> Response:
    return json_response({"error": "internal error"}, 500)


EXCEPTION_HANDLERS = {
    Exception: on_unexpected,
    RequestError: on_request_error,
    StoreUnavailable: on_store_unavailable,
    HTTPException: on_http_exception,
}

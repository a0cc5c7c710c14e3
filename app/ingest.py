"""`POST /hooks/vtex`: authenticate, read, validate, normalize, then dedupe and append atomically.

The order of the checks is the contract: the auth header is checked before the body is read,
the body is read no further than the limit, and the answer 200 is given only once the event is
durable in Redis (or known to be a duplicate of one that is).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Sequence
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from app.config import Settings, Source
from app.errors import PayloadTooLarge, RequestTimeout, Unauthorized, UnsupportedMedia
from app.events import Notification, Ping, normalize, parse_body, utc_now_iso
from app.http import json_response
from app.logs import log_event
from app.store.batcher import Batcher
from app.store.client import Appended

log = logging.getLogger("orderhook.ingest")


def authenticate(headers: Headers, sources: Sequence[Source]) -> list[Source]:
    """The sources whose auth header matches; every token is compared in constant time."""
    matched = []
    for source in sources:
        given = headers.get(source.auth_header)
        expected = str(source.auth_token).encode()
        if given is not None and hmac.compare_digest(given.encode(), expected):
            matched.append(source)
    if not matched:
        raise Unauthorized("missing or invalid auth header")
    return matched


def authorize(notification: Notification, sources: Sequence[Source]) -> None:
    if not any(source.allows(notification.account) for source in sources):
        raise Unauthorized(f"account {notification.account!r} is not allowed for this auth header")


def check_content_type(headers: Headers) -> None:
    value = headers.get("content-type")
    if value is None:
        return
    media = value.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMedia(f"content type must be application/json, got {media!r}")


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body; PayloadTooLarge as soon as it is known to be over `limit` bytes, and
    RequestTimeout when it has not all arrived within `timeout_s` (a trickled body)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout_s:g} s") from None
    return b"".join(chunks)


class HookEndpoint:
    """The hook route; events go through the group commit the lifespan put on `app.state`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def handle(self, request: Request) -> Response:
        sources = authenticate(request.headers, self.settings.sources)
        check_content_type(request.headers)
        body = await read_body(request, self.settings.max_body_bytes, self.settings.body_timeout_s)
        message = parse_body(body)
        if isinstance(message, Ping):
            return json_response({"status": "pong"})
        authorize(message, sources)
        event = normalize(message, utc_now_iso())
        commit: Batcher[dict[str, Any], Appended] = request.app.state.commit
        result = await commit.submit(event)
        status = "accepted" if result.created else "duplicate"
        log_event(
            "ingest",
            outcome=status,
            eventId=event["id"],
            orderId=message.order_id,
            account=message.account,
        )
        return json_response({"status": status, "id": event["id"]})

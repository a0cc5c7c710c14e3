"""`POST /hooks/vtex`: authenticate, read, validate, normalize, then dedupe and append atomically.

The order of the checks is the contract: the auth header is checked before the body is read,
the body is read no further than the limit, and the answer 200 is given only once the event is
durable in Redis (or known to be a duplicate of one that is).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from app import tracing
from app.bodies import read_body
from app.config import Settings, Source
from app.errors import (
    RequestError,
    RequestTimeout,
    StoreUnavailable,
    Unauthorized,
    UnsupportedMedia,
)
from app.events import Notification, Ping, normalize, parse_body, utc_now_iso
from app.http import RETRY_AFTER_S, count_rejection, unavailable
from app.logs import log_event
from app.store.batcher import Batcher
from app.store.client import Appended, Store

log = logging.getLogger("orderhook.ingest")


# A request's headers as the server gives them (ASGI: names in lower case), read once.
RawHeaders = Mapping[bytes, bytes]


def authenticate(headers: RawHeaders, sources: Sequence[Source]) -> list[Source]:
    """The sources whose auth header matches; every token is compared in constant time."""
    matched = []
    for source in sources:
        given = headers.get(source.auth_header.encode("latin-1"))
        expected = str(source.auth_token).encode()
        if given is not None and hmac.compare_digest(given, expected):
            matched.append(source)
    if not matched:
        raise Unauthorized("missing or invalid auth header")
    return matched


def authorize(notification: Notification, sources: Sequence[Source]) -> None:
    if not any(source.allows(notification.account) for source in sources):
        raise Unauthorized(f"account {notification.account!r} is not allowed for this auth header")


def check_content_type(headers: RawHeaders) -> None:
    value = headers.get(b"content-type")
    if value is None:
        return
    media = value.decode("latin-1").split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMedia(f"content type must be application/json, got {media!r}")


class BodyDeadlines:
    """The body timeout of every hook request, kept by one periodic sweep rather than a timer
    per request (asyncio.timeout cost ~3% of ingest throughput): a request still reading its
    body after `timeout_s` is cancelled within `timeout_s / 4` more, and gets RequestTimeout."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.sweep_every_s = timeout_s / 4
        self._reading: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweep: asyncio.TimerHandle | None = None

    async def read(self, receive: Receive, headers: RawHeaders, limit: int) -> bytes:
        task = asyncio.current_task()
        assert task is not None
        self._reading[task] = time.monotonic() + self.timeout_s
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self.sweep_every_s, self._cut)
        try:
            return await read_body(receive, headers, limit)
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            task.uncancel()
            raise RequestTimeout(f"the body did not arrive within {self.timeout_s:g} s") from None
        finally:
            del self._reading[task]
            self._expired.discard(task)

    def _cut(self) -> None:
        now = time.monotonic()
        for task, deadline in self._reading.items():
            if deadline <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        loop = asyncio.get_running_loop()
        self._sweep = loop.call_later(self.sweep_every_s, self._cut) if self._reading else None


HOOK_PATH = "/hooks/vtex"
# VTEX counts a hook answered after 5 s as failed. Once its body is read, a hook request waits
# at most this long for Redis (the group commit's queue, a pooled connection and the round
# trip together), then answers 503 + Retry-After: every answer well within VTEX's 5 s (the rest
# is for the network, the body and a busy event loop), however many requests wait and however
# long Redis hangs. A 503 whose append did reach Redis is safe:
# VTEX retries, and the retry is answered 200 "duplicate" with the same event id.
HOOK_DEADLINE_S = 2.0
JSON_HEADERS = [(b"content-type", b"application/json")]

# What a hook request hands the group commit: its event, and its trace context (a W3C
# traceparent, "" when tracing is off).
Submitted = tuple[dict[str, Any], str]


def append_traced(store: Store) -> Callable[[Sequence[Submitted]], Awaitable[list[Appended]]]:
    """The group commit's write: the events, each with its trace context."""

    async def write(items: Sequence[Submitted]) -> list[Appended]:
        return await store.append([event for event, _ in items], [trace for _, trace in items])

    return write


HOOK_SPAN_ATTRIBUTES = {"http.request.method": "POST", "url.path": HOOK_PATH}


class HookEndpoint:
    """The hook route, as a plain ASGI app: the busiest path skips the framework's request and
    response objects. Events go through the group commit the lifespan put on `app.state`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bodies = BodyDeadlines(settings.body_timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        if not tracing.on:
            await self.answer(scope, headers, receive, send, "")
            return
        incoming = headers.get(b"traceparent", b"").decode("latin-1")
        span = tracing.start("POST " + HOOK_PATH, incoming, "server", HOOK_SPAN_ATTRIBUTES)
        try:
            status = await self.answer(scope, headers, receive, send, tracing.traceparent_of(span))
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                tracing.failed(span, str(status))
        finally:
            span.end()

    async def answer(
        self, scope: Scope, headers: RawHeaders, receive: Receive, send: Send, trace: str
    ) -> int:
        """Answer one hook request (`trace`: its span's traceparent, or ""); the status sent."""
        extra: list[tuple[bytes, bytes]] = []
        try:
            status, answer = 200, await self.accept(scope, headers, receive, trace)
        except RequestError as exc:
            status, answer = exc.status, {"error": exc.message}
            await count_rejection(scope["app"].state, status)
        except StoreUnavailable as exc:
            status, answer = 503, unavailable(exc)
            # logged, not counted in Redis: it is the one thing down
            log_event("ingest", outcome="rejected", reason="unavailable", status=503)
            extra = [(b"retry-after", str(RETRY_AFTER_S).encode())]
        except ClientDisconnect:
            return 499  # nobody to answer; nothing was stored
        except Exception:  # a bug: logged, and a 500 (VTEX retries)
            log.exception("hook request failed")
            status, answer = 500, {"error": "internal error"}
        body = orjson.dumps(answer)
        length = [(b"content-length", str(len(body)).encode())]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": JSON_HEADERS + length + extra,
            }
        )
        await send({"type": "http.response.body", "body": body})
        return status

    async def accept(
        self, scope: Scope, headers: RawHeaders, receive: Receive, trace: str = ""
    ) -> dict[str, Any]:
        """Check, parse and store one hook request (with its trace context: `trace`); the
        answer's JSON, or an error raised."""
        settings = self.settings
        sources = authenticate(headers, settings.sources)
        check_content_type(headers)
        body = await self.bodies.read(receive, headers, settings.max_body_bytes)
        message = parse_body(body)
        if isinstance(message, Ping):
            return {"status": "pong"}
        authorize(message, sources)
        event = normalize(message, utc_now_iso())
        commit: Batcher[Submitted, Appended] = scope["app"].state.commit
        result = await commit.submit((event, trace))
        status = "accepted" if result.created else "duplicate"
        log_event(
            "ingest",
            at=event["receivedAt"],
            trace=trace,
            outcome=status,
            eventId=event["id"],
            orderId=message.order_id,
            account=message.account,
        )
        return {"status": status, "id": event["id"]}

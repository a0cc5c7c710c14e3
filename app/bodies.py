"""Request bodies: never read past a limit, on any route.

`read_body` is the one reader. It checks the declared Content-Length first, then counts bytes as
they arrive, and raises PayloadTooLarge (413) as soon as the body is known to be over the limit,
so at most `limit` bytes (and one chunk) are ever held. The hook calls it itself (its fast path
skips the framework); every other route is wrapped by `limit_bodies` in `BodyLimit`, which reads
the body before the endpoint runs and hands it on, so `request.body()`, `.json()` and `.stream()`
in an endpoint only ever see what was read within the route's limit.

Starlette's own RequestBodyLimitMiddleware was considered: it answers 413 as text/plain when the
Content-Length is over (not our JSON error naming the limit), and lets a route that does not
read its body answer as if nothing were wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PayloadTooLarge

# Every route that names no other limit: the admin API's JSON commands, forms, bodyless routes.
DEFAULT_MAX_BODY_BYTES = 64 * 1024


async def read_body(receive: Receive, headers: Mapping[bytes, bytes], limit: int) -> bytes:
    """The body; PayloadTooLarge as soon as it is known to be over `limit` bytes."""
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class BodyLimit:
    """One route's body, read whole (at most `max_bytes`) before the route runs."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(receive, dict(scope["headers"]), self.max_bytes)
        except ClientDisconnect:
            return  # nobody to answer
        await self.app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for the route: the body read, then the client's own (its disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


def limit_bodies(routes: Sequence[BaseRoute], limits: Mapping[str, int]) -> list[BaseRoute]:
    """Every route with its body limit: `limits` by path, DEFAULT_MAX_BODY_BYTES otherwise."""
    unknown = set(limits) - {route.path for route in routes if isinstance(route, Route)}
    if unknown:
        raise ValueError(f"body limits for routes that do not exist: {sorted(unknown)}")
    return [_limited(route, limits) if isinstance(route, Route) else route for route in routes]


def _limited(route: Route, limits: Mapping[str, int]) -> Route:
    max_bytes = limits.get(route.path, DEFAULT_MAX_BODY_BYTES)
    return Route(
        route.path,
        route.endpoint,
        methods=route.methods,
        name=route.name,
        include_in_schema=route.include_in_schema,
        middleware=[Middleware(BodyLimit, max_bytes=max_bytes)],
    )

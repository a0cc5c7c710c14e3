"""Middleware around every endpoint but the hook (which `server.Gateway` sends straight to its
handler: VTEX is not a browser and presents no bearer token):

- `SecurityHeaders`: Content-Security-Policy, X-Frame-Options: DENY and friends on every answer;
- `SameOriginWrites`: a POST, PUT, PATCH or DELETE from another origin is refused (403), and so
  is one carrying the dashboard's session cookie without an Origin or Referer to prove it came
  from the dashboard;
- `SignInThrottle`: failed sign-ins (any 401 to a request presenting a token) counted per
  client address and in total, and 429 once too many (`app.ops.throttle`).

In one place, so that no endpoint added later can forget them.
"""

from __future__ import annotations

import contextlib
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request, cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings
from app.errors import StoreUnavailable
from app.http import RETRY_AFTER_S, json_response, unavailable
from app.ops.access import COOKIE, bearer_token, role_of
from app.ops.dashboard import CONTENT_SECURITY_POLICY
from app.ops.metrics import PATH as METRICS_PATH
from app.ops.throttle import Throttle

SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SIGN_IN_PATH = "/ops/login"


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)


def cross_origin(scope: Scope) -> str | None:
    """Why a state-changing request is refused as cross-origin; None if it is not.

    The origin it claims (Origin, else Referer's) must be this gateway's: the same host as the
    Host header, with this request's scheme or https (the gateway may be behind a TLS proxy
    it does not trust, and only the site itself answers https for its own host name)."""
    headers = Headers(scope=scope)
    claimed = headers.get("origin") or _origin_of(headers.get("referer"))
    if claimed is None:
        if COOKIE in cookie_parser(headers.get("cookie", "")):
            return "signed in by cookie, but no Origin or Referer header: refused as cross-origin"
        return None
    if _is_own(claimed, scope["scheme"], headers.get("host", "")):
        return None
    return f"cross-origin request refused: {claimed[:100]!r} is not this gateway's origin"


def _is_own(origin: str, scheme: str, host: str) -> bool:
    claimed_scheme, _, claimed_host = origin.partition("://")
    same_host = bool(claimed_host) and claimed_host.lower() == host.lower()
    return same_host and claimed_scheme in (scheme, "https")


def _origin_of(referer: str | None) -> str | None:
    if not referer:
        return None
    parts = urlsplit(referer)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


class SameOriginWrites:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            refused = cross_origin(scope)
            if refused is not None:
                await json_response({"error": refused}, 403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def presents_token(scope: Scope) -> bool:
    """A bearer token, or the sign-in form (the session cookie is not a guessable token)."""
    if scope["path"] == SIGN_IN_PATH and scope["method"] == "POST":
        return True
    return any(name == b"authorization" for name, _ in scope["headers"])


class SignInThrottle:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not presents_token(scope):
            await self.app(scope, receive, send)
            return
        throttle = Throttle(scope["app"].state.runtime.store, self.settings)
        client = (scope.get("client") or ("unknown", 0))[0]
        try:
            refused = await throttle.check(client)
        except StoreUnavailable as exc:
            if self._scrape_without_store(scope):  # /metrics tells Redis is down
                await self.app(scope, receive, send)
                return
            retry = {"Retry-After": str(RETRY_AFTER_S)}
            await json_response(unavailable(exc), 503, retry)(scope, receive, send)
            return
        if refused is not None:
            retry = {"Retry-After": str(refused.retry_after_s)}
            await json_response({"error": refused.message}, 429, retry)(scope, receive, send)
            return

        async def send_counting_failure(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                with contextlib.suppress(StoreUnavailable):
                    await throttle.failed(client)  # before the client can ask again
            await send(message)

        await self.app(scope, receive, send_counting_failure)

    def _scrape_without_store(self, scope: Scope) -> bool:
        """A scrape with a right token while failures cannot be counted: let through. A wrong
        one is answered 503 like every guess then, so guessing stays bounded."""
        token = bearer_token(Request(scope))
        return scope["path"] == METRICS_PATH and role_of(token, self.settings) is not None

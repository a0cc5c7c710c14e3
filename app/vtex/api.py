"""The one VTEX API client: base URL, an account's app key and token, timeouts, size caps.

`VtexApi` is the one place the credentials are sent and the one place the base URL is read;
each VTEX API the gateway uses is an `Endpoint` here (its path, its name in messages, its size
cap, its timeout): Get Order (enrichment), Feed v3 (the feed backup), the hook configuration
(`orderhook vtex hook`). The relay's calls go over the relay's session, whose connector is the
SSRF guard (app/ssrf.py); `VtexApi.standalone` opens the CLI's own session.

Every call's URL is built by `vtex_url` from encoded parts; no redirect is ever followed (the
credential headers would go along to wherever VTEX, or whoever answers for it, points); every
answer is read in chunks under a size cap and refused once over it, so memory stays bounded.

VtexError (OrderhookError; it and VtexRefused live beside the URL builder, app/vtex/urls.py)
├── VtexRefused      the account or a path segment is not one a URL is safely built from
├── VtexUnreachable  no answer: connection refused or reset, timed out
├── VtexRedirect     a 3xx answer: never followed (logged with the Location's origin only)
└── VtexTooLarge     the answer is over its size cap
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDictProxy
from yarl import URL

from app.config import Settings, Source
from app.redaction import redirect_origin
from app.vtex.urls import (
    FEED_PATH,
    HOOK_CONFIG_PATH,
    ORDER_PATH,
    VtexError,
    VtexRefused,
    vtex_url,
)

MAX_ORDER_BYTES = 8 * 1024 * 1024  # Get Order: the largest real orders are a few hundred KB
MAX_FEED_BYTES = 1024 * 1024  # a Feed v3 lot: at most 10 items of a few hundred bytes
MAX_CONFIG_BYTES = 256 * 1024  # the hook configuration; a commit's or a delete's answer
READ_CHUNK_BYTES = 64 * 1024
ORDER_TIMEOUT = aiohttp.ClientTimeout(total=10)  # the router waits for it
FEED_TIMEOUT = aiohttp.ClientTimeout(total=15)
CONFIG_TIMEOUT = aiohttp.ClientTimeout(total=15)

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_FEED_BYTES",
    "MAX_ORDER_BYTES",
    "FEED",
    "GET_ORDER",
    "HOOK_CONFIG",
    "Answer",
    "Endpoint",
    "VtexApi",
    "VtexError",
    "VtexRedirect",
    "VtexRefused",
    "VtexTooLarge",
    "VtexUnreachable",
]


class VtexUnreachable(VtexError):
    """No answer: the connection failed or the call timed out."""


class VtexRedirect(VtexError):
    """VTEX answered 3xx. Not followed: the app key and token would go along."""


class VtexTooLarge(VtexError):
    """The answer is over the call's size cap; the rest of it is not read."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON; ValueError (orjson.JSONDecodeError) if it is not."""
        return orjson.loads(self.body)


@dataclass(frozen=True)
class Endpoint:
    """One VTEX API: its path, its name in messages, its answer's size cap, its timeout."""

    segments: tuple[str, ...]
    what: str
    max_bytes: int
    timeout: aiohttp.ClientTimeout


GET_ORDER = Endpoint(ORDER_PATH, "Get Order", MAX_ORDER_BYTES, ORDER_TIMEOUT)  # + the order id
FEED = Endpoint(FEED_PATH, "Feed", MAX_FEED_BYTES, FEED_TIMEOUT)  # GET takes, POST commits
HOOK_CONFIG = Endpoint(HOOK_CONFIG_PATH, "hook configuration", MAX_CONFIG_BYTES, CONFIG_TIMEOUT)


class VtexApi:
    """VTEX's API for the accounts of one base URL template, over a session made elsewhere."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url
        self.session = session

    @classmethod
    def of(cls, settings: Settings, session: aiohttp.ClientSession) -> VtexApi:
        """The configured VTEX (`[vtex] base_url`), over the relay's guarded session."""
        return cls(settings.vtex_base_url, session)

    @classmethod
    @asynccontextmanager
    async def standalone(cls, settings: Settings) -> AsyncIterator[VtexApi]:
        """The configured VTEX over a session of its own (the CLI's), closed on leaving."""
        async with aiohttp.ClientSession(trust_env=False) as session:
            yield cls.of(settings, session)

    async def request(
        self,
        endpoint: Endpoint,
        method: str,
        source: Source,
        account: str,
        *more: str,
        query: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> Answer:
        """One call to `endpoint` (`more`: path segments after its own) with the source's
        credentials; VtexError (VtexRefused included) for no usable answer."""
        return await self.call(
            method,
            source,
            account,
            (*endpoint.segments, *more),
            what=endpoint.what,
            max_bytes=endpoint.max_bytes,
            timeout=endpoint.timeout,
            query=query,
            json=json,
        )

    async def call(
        self,
        method: str,
        source: Source,
        account: str,
        segments: Sequence[str],
        *,
        what: str,
        max_bytes: int,
        timeout: aiohttp.ClientTimeout,
        query: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> Answer:
        """One call; VtexError (VtexRefused included) for no usable answer. `what` names the
        call in messages ("Get Order")."""
        url = URL(vtex_url(self.base_url, account, segments, query), encoded=True)
        headers = credential_headers(source)
        if json is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self.session.request(
                method,
                url,
                headers=headers,
                data=None if json is None else orjson.dumps(json),
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                _refuse_redirect(response, what)
                body = await read_capped(response, max_bytes, what)
                return Answer(response.status, response.headers, body)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise VtexUnreachable(f"VTEX {what} failed: {type(exc).__name__}") from None


def has_credentials(source: Source) -> bool:
    """Whether the source has an app key and token to call VTEX with."""
    return source.app_key is not None and source.app_token is not None


def credential_headers(source: Source) -> dict[str, str]:
    if not has_credentials(source):  # the config refuses this for every user of the API
        raise VtexRefused("refused to call VTEX: the source has no app key and token")
    return {
        "X-VTEX-API-AppKey": str(source.app_key),
        "X-VTEX-API-AppToken": str(source.app_token),
        "Accept": "application/json",
    }


def _refuse_redirect(response: aiohttp.ClientResponse, what: str) -> None:
    if 300 <= response.status < 400:
        where = redirect_origin(str(response.url), response.headers.get("Location", ""))
        raise VtexRedirect(
            f"HTTP {response.status} from VTEX {what}: a redirect to {where}, not followed"
        )


async def read_capped(response: aiohttp.ClientResponse, max_bytes: int, what: str) -> bytes:
    """The body, read in chunks; VtexTooLarge as soon as it is over `max_bytes` (declared or
    read), the rest left unread (the connection is closed, not drained)."""
    too_large = VtexTooLarge(f"VTEX {what} answer over {max_bytes} bytes (the size limit)")
    if response.content_length is not None and response.content_length > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(READ_CHUNK_BYTES):
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)

"""Calls to VTEX's API with an account's app key and token: the one place they are sent.

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDictProxy
from yarl import URL

from app.config import Source
from app.redaction import redirect_origin
from app.vtex.urls import VtexError, VtexRefused, vtex_url

MAX_ORDER_BYTES = 8 * 1024 * 1024  # Get Order: the largest real orders are a few hundred KB
MAX_FEED_BYTES = 1024 * 1024  # a Feed v3 lot: at most 10 items of a few hundred bytes
MAX_CONFIG_BYTES = 256 * 1024  # the hook configuration; a commit's or a delete's answer
READ_CHUNK_BYTES = 64 * 1024

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_FEED_BYTES",
    "MAX_ORDER_BYTES",
    "Answer",
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


class VtexApi:
    """VTEX's API for the accounts of one base URL template, over a session made elsewhere."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url
        self.session = session

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


def credential_headers(source: Source) -> dict[str, str]:
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

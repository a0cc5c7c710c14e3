"""What of a subscriber's URL may be shown, and error texts scrubbed of its secret parts.

A subscriber URL may carry a credential anywhere but in its origin: user info
(`https://user:pass@host/`), a token in the path (`/services/T0/B0/XXXX`), a query value
(`?token=...`), a fragment. Who sees what:

- the ops role, and every /ops page and /metrics whoever reads them: `scheme://host:port`;
- the admin role (/admin/*): the path too, which tells two subscriptions on one host apart
  (the admin token is the gateway's full credential: it reads every event and replays them),
  but never user info nor query values: those are `***`;
- an error text (`lastError`, the delivery log, dead letters, stderr) is stored in Redis and read
  by both roles: `scrub` replaces the URL in it by its origin and any of its secret parts by `***`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Literal
from urllib.parse import SplitResult, quote, unquote, urljoin, urlsplit

Viewer = Literal["admin", "ops"]
HIDDEN = "***"
MIN_SCRUBBED = 6  # a lone path segment, query value, user or password this long is scrubbed
MAX_ERROR_CHARS = 500
DEFAULT_PORTS = {"http": 80, "https": 443}


def shown_url(url: str, viewer: Viewer) -> str:
    """The one view of a subscriber URL anybody gets: see the module docstring."""
    if not url:  # a pull subscription has none
        return url
    return origin(url) if viewer == "ops" else _without_credentials(url)


def origin(url: str) -> str:
    """`scheme://host:port` (the port always written), or `***` for a URL without a host."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # a broken IPv6 literal
        return HIDDEN
    if not host:
        return HIDDEN
    host = f"[{host}]" if ":" in host else host
    port = _port(parts)
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port else "")


def redirect_origin(url: str, location: str) -> str:
    """The origin a redirect from `url` points at (`location` may be relative, or garbage)."""
    try:
        return origin(urljoin(url, location))
    except ValueError:
        return HIDDEN


def _port(parts: SplitResult) -> str:
    try:
        return str(parts.port or DEFAULT_PORTS.get(parts.scheme.lower()) or "")
    except ValueError:  # out of range, or not a number: written as given if it is digits
        given = parts.netloc.rpartition(":")[2]
        return given if given.isdigit() else HIDDEN


def _without_credentials(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return HIDDEN
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{HIDDEN}@" + netloc.rpartition("@")[2]
    query = "&".join(
        f"{pair.partition('=')[0]}={HIDDEN}" if "=" in pair else pair
        for pair in parts.query.split("&")
    )
    fragment = HIDDEN if parts.fragment else ""
    return parts._replace(netloc=netloc, query=query, fragment=fragment).geturl()


def describe(exc: BaseException, url: str) -> str:
    """An error text for a failed request to `url`: the exception's type and its message,
    scrubbed of the URL (aiohttp's InvalidURL and others quote the URL whole), then cut to
    `MAX_ERROR_CHARS` (cutting first could leave half a secret)."""
    return scrub(f"{type(exc).__name__}: {exc}", url)[:MAX_ERROR_CHARS]


def scrub(text: str, url: str) -> str:
    """`text` with `url` replaced by its origin, then each secret part of it by `***`."""
    if not text:
        return text
    shown, spellings, secrets = _scrubbing(url)
    for whole in spellings:
        text = text.replace(whole, shown)
    for secret in secrets:
        text = text.replace(secret, HIDDEN)
    return text


@functools.lru_cache(maxsize=1024)  # one entry a subscription: computed once, not per attempt
def _scrubbing(url: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """The origin; the URL's spellings and its secret parts, each longest first."""
    spellings = sorted(_spellings(url), key=len, reverse=True)
    secrets = sorted(_secret_parts(url), key=len, reverse=True)
    return origin(url), tuple(spellings), tuple(secrets)


def _secret_parts(url: str) -> set[str]:
    try:
        parts = urlsplit(url)
    except ValueError:  # nothing to take apart: the URL itself is all that can be scrubbed
        return set()
    shown = origin(url)
    found: set[str] = set()
    for part in _pieces(parts):
        found.update(_spellings(part))
    return {part for part in found if part not in shown}  # the host is shown: not a secret


def _pieces(parts: SplitResult) -> Iterator[str]:
    """The parts of a URL that may hold a credential: each whole, with the character that
    introduces it, then the pieces of it long enough to be a credential on their own."""
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at:
        yield userinfo + "@"
        yield from _long(userinfo, *userinfo.split(":", 1))
    if len(parts.path) > 1:
        yield parts.path
        yield from _long(*parts.path.split("/"))
    if parts.query:
        yield "?" + parts.query
        yield from _long(parts.query, *(pair.partition("=")[2] for pair in parts.query.split("&")))
    if parts.fragment:
        yield "#" + parts.fragment
        yield from _long(parts.fragment)


def _long(*pieces: str) -> Iterator[str]:
    return (piece for piece in pieces if len(piece) >= MIN_SCRUBBED)


def _spellings(text: str) -> set[str]:
    """`text` as written, decoded, and percent-encoded the way yarl (aiohttp's URL) writes it."""
    decoded = unquote(text)
    return {text, decoded, quote(decoded, safe="/:@!$&'()*+,;=?-._~%")} - {""}

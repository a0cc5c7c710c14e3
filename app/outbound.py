"""Outbound authentication: the headers a subscription's deliveries carry to get past the
receiver's gate (an ERP behind an API gateway).

A subscription may have static headers (`X-Api-Key`) and one `Auth`: HTTP Basic, a Bearer
token, or OAuth2 client credentials (RFC 6749 §4.4). The OAuth2 token is asked of the token
endpoint through the deliveries' session (so the SSRF guard stands before it too, and no
redirect is followed), cached until shortly before it expires, and shared: concurrent
deliveries wait for one request. A 401 from the receiver (`rejected`) drops the token that got
it, so the next delivery asks for a new one, once however many deliveries were refused with it;
for `REFETCH_COOLDOWN_S` after that, a 401 drops no token (a receiver that refuses every token
would otherwise have the token endpoint asked once per delivery).

Values are resolved before they come here (literal, from the environment, or opened from Redis);
secrets stay `Secret`s, whose repr hides them. No message raised here holds a secret or a token.
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote_plus

import aiohttp
import orjson
from starlette.datastructures import Secret

from app.errors import OutboundAuthError
from app.redaction import HIDDEN, describe, origin
from app.ssrf import Refused

TOKEN_TIMEOUT_S = 10.0  # the whole token request, connection to last byte
MAX_TOKEN_RESPONSE_BYTES = 64 * 1024
DEFAULT_TOKEN_LIFETIME_S = 300.0  # a token answer without `expires_in` is used this long
MAX_EXPIRY_MARGIN_S = 30.0  # a token is renewed this much (at most 10 %) before it expires
REFETCH_COOLDOWN_S = 10.0  # after a 401 dropped a token, another 401 drops none this long
MAX_ERROR_FIELD_CHARS = 200  # of the token endpoint's `error_description`, in our message
# RFC 6749 §5.2: `error` and `error_description` are printable ASCII without `"` and `\`
ERROR_FIELD = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+")
HEADER_VALUE = re.compile(r"[\x21-\x7e]+")  # a token: no space, no control, ASCII only
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}")  # RFC 9110 §5.6.2, a token
STATIC_VALUE = re.compile(r"[\x20-\x7e]{0,8192}")  # printable ASCII: what every stack passes
# Headers a subscription cannot set: the gateway's own (its content type, the signature) and
# those that frame the request or pick where it goes (Host: another site on an allowed address).
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "user-agent",
        "proxy-authorization",
        "proxy-connection",
    }
)


@dataclass(frozen=True)
class BasicAuth:
    """HTTP Basic (RFC 7617)."""

    username: str
    password: Secret

    def __post_init__(self) -> None:
        if ":" in self.username:
            raise ValueError("a Basic auth username cannot hold `:`")


@dataclass(frozen=True)
class BearerAuth:
    """A fixed Bearer token (RFC 6750)."""

    token: Secret


@dataclass(frozen=True)
class OAuth2ClientCredentials:
    """OAuth2 client credentials grant (RFC 6749 §4.4), the client authenticated by HTTP
    Basic (§2.3.1)."""

    token_url: str
    client_id: str
    client_secret: Secret
    scope: str | None = None


Auth = BasicAuth | BearerAuth | OAuth2ClientCredentials


class OutboundAuth:
    """The headers one subscription's deliveries carry: static `headers` and `auth`'s
    Authorization. One per subscription, kept as long as its configuration is unchanged (it
    caches the OAuth2 token)."""

    def __init__(
        self,
        headers: Mapping[str, Secret] | None = None,
        auth: Auth | None = None,
        *,
        refetch_cooldown_s: float = REFETCH_COOLDOWN_S,
    ) -> None:
        """ValueError (naming the header, never its value) for a value no header can carry,
        or a static Authorization beside `auth`."""
        self._static = dict(headers or {})
        self._check_static(auth)
        self._fixed = _fixed_authorization(auth)
        self._tokens = (
            TokenSource(auth, refetch_cooldown_s)
            if isinstance(auth, OAuth2ClientCredentials)
            else None
        )

    async def headers(self, session: aiohttp.ClientSession) -> dict[str, str]:
        """The headers to add to one delivery; OutboundAuthError if the token endpoint fails."""
        found = {name: str(value) for name, value in self._static.items()}
        if self._fixed is not None:
            found["Authorization"] = str(self._fixed)
        if self._tokens is not None:
            found["Authorization"] = "Bearer " + await self._tokens.token(session)
        return found

    def rejected(self, sent: Mapping[str, str]) -> None:
        """The receiver answered 401 to a delivery that carried `sent` (what `headers`
        returned): drop its OAuth2 token, so that the next delivery asks for a new one."""
        if self._tokens is not None:
            self._tokens.rejected(sent.get("Authorization", "").removeprefix("Bearer "))

    def _check_static(self, auth: Auth | None) -> None:
        for name, value in self._static.items():
            if not HEADER_NAME.fullmatch(name):
                raise ValueError(
                    f"header {name[:64]!a}: a name is letters, digits and !#$%&'*+-.^_`|~"
                )
            if not STATIC_VALUE.fullmatch(str(value)):
                raise ValueError(
                    f"header {name!r}: a value is printable ASCII (no control character)"
                )
            if name.lower() in RESERVED_HEADERS or name.lower().startswith("webhook-"):
                raise ValueError(f"header {name!r} is the gateway's (or HTTP's) own")
            if auth is not None and name.lower() == "authorization":
                raise ValueError("header 'Authorization' is `auth`'s: give one or the other")


def _fixed_authorization(auth: Auth | None) -> Secret | None:
    """The Authorization value of Basic or Bearer auth; ValueError if a header cannot carry it."""
    if isinstance(auth, BasicAuth):
        pair = f"{auth.username}:{auth.password}".encode()
        return Secret("Basic " + base64.b64encode(pair).decode())
    if isinstance(auth, BearerAuth):
        if not HEADER_VALUE.fullmatch(str(auth.token)):
            raise ValueError("the Bearer token holds a space, a control or a non-ASCII character")
        return Secret(f"Bearer {auth.token}")
    return None


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)
    fetched_at: float  # time.monotonic()
    renew_at: float

    def fresh(self, now: float) -> bool:
        return now < self.renew_at


class TokenSource:
    """One OAuth2 client's access token: cached, fetched by one request at a time."""

    def __init__(self, grant: OAuth2ClientCredentials, refetch_cooldown_s: float) -> None:
        self.grant = grant
        self.origin = origin(grant.token_url)
        self.refetch_cooldown_s = refetch_cooldown_s
        self._token: Token | None = None
        self._fetching: asyncio.Task[Token] | None = None
        self._dropped_at = -math.inf  # when a 401 last dropped a token (time.monotonic())

    async def token(self, session: aiohttp.ClientSession) -> str:
        """The cached token while fresh; else the outcome of the one request under way (a
        caller cancelled does not cancel it for the others), started if none is."""
        if self._token is not None and self._token.fresh(time.monotonic()):
            return self._token.value
        if self._fetching is None:
            self._fetching = asyncio.create_task(self._fetch(session))
            self._fetching.add_done_callback(self._fetched)
        return (await asyncio.shield(self._fetching)).value

    def rejected(self, value: str) -> None:
        """Drop the token `value` if it is the cached one (an older token was dropped already:
        a burst of 401s drops one token), unless a 401 dropped one within the cooldown (the
        token that replaced it is refused too: the receiver's problem is not the token)."""
        token, now = self._token, time.monotonic()
        if token is None or token.value != value:
            return
        if now - self._dropped_at >= self.refetch_cooldown_s:
            self._token, self._dropped_at = None, now

    def _fetched(self, task: asyncio.Task[Token]) -> None:
        self._fetching = None
        if not task.cancelled() and task.exception() is None:  # retrieved: no stray warning
            self._token = task.result()

    async def _fetch(self, session: aiohttp.ClientSession) -> Token:
        asked_at = time.monotonic()
        try:
            status, body = await self._request(session)
        except TimeoutError:
            raise self._error(f"no answer within {TOKEN_TIMEOUT_S:g} s") from None
        except Refused as exc:  # the SSRF guard: no retry can help
            error = self._error(describe(exc, self.grant.token_url))
            raise OutboundAuthError(str(error), refused=True) from None
        except aiohttp.ClientError as exc:
            raise self._error(describe(exc, self.grant.token_url)) from None
        if 300 <= status < 400:
            raise self._error(f"HTTP {status}, a redirect (not followed)")
        if not 200 <= status < 300:
            raise self._error(f"HTTP {status}{self._error_fields(body)}")
        value, lifetime_s = self._parse(body, status)
        return Token(value, asked_at, asked_at + lifetime_s - _margin(lifetime_s))

    async def _request(self, session: aiohttp.ClientSession) -> tuple[int, bytes]:
        async with session.post(
            self.grant.token_url,
            data=self._form(),
            headers={"Authorization": str(self._client_auth()), "Accept": "application/json"},
            timeout=aiohttp.ClientTimeout(total=TOKEN_TIMEOUT_S),
            allow_redirects=False,
        ) as response:
            return response.status, await self._read(response)

    def _form(self) -> dict[str, str]:
        form = {"grant_type": "client_credentials"}
        if self.grant.scope:
            form["scope"] = self.grant.scope
        return form

    def _client_auth(self) -> Secret:
        """RFC 6749 §2.3.1: the id and secret form-urlencoded, then HTTP Basic."""
        pair = f"{quote_plus(self.grant.client_id)}:{quote_plus(str(self.grant.client_secret))}"
        return Secret("Basic " + base64.b64encode(pair.encode()).decode())

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        body = bytearray()
        async for chunk in response.content.iter_chunked(MAX_TOKEN_RESPONSE_BYTES):
            body += chunk
            if len(body) > MAX_TOKEN_RESPONSE_BYTES:
                raise self._error(f"HTTP {response.status}, an answer over 64 KiB")
        return bytes(body)

    def _parse(self, body: bytes, status: int) -> tuple[str, float]:
        """The access token and its lifetime, from a successful answer (RFC 6749 §5.1)."""
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            raise self._error(f"HTTP {status}, an answer that is not a JSON object")
        value = answer.get("access_token")
        if not isinstance(value, str) or not HEADER_VALUE.fullmatch(value):
            raise self._error(f"HTTP {status}, no access_token a header can carry")
        kind = answer.get("token_type")
        if not isinstance(kind, str) or kind.lower() != "bearer":
            raise self._error(f"HTTP {status}, token_type is not Bearer")
        return value, self._lifetime(answer.get("expires_in"), status)

    def _lifetime(self, expires_in: object, status: int) -> float:
        if expires_in is None:
            return DEFAULT_TOKEN_LIFETIME_S
        if isinstance(expires_in, str) and expires_in.isdigit():
            expires_in = int(expires_in)  # a common deviation: the number as a string
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            raise self._error(f"HTTP {status}, expires_in is not a number")
        return max(float(expires_in), 0.0)

    def _error_fields(self, body: bytes) -> str:
        """`: error (error_description)` from an error answer (RFC 6749 §5.2), if it is one;
        each field as the RFC allows it, cut short, with the client secret hidden."""
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            return ""
        if not isinstance(answer, dict):
            return ""
        fields = [self._shown(answer.get(name)) for name in ("error", "error_description")]
        code, description = fields
        if not code:
            return ""
        return f": {code}" + (f" ({description})" if description else "")

    def _shown(self, value: object) -> str:
        if not isinstance(value, str) or not ERROR_FIELD.fullmatch(value):
            return ""
        secret = str(self.grant.client_secret)
        return (value.replace(secret, HIDDEN) if secret else value)[:MAX_ERROR_FIELD_CHARS]

    def _error(self, what: str) -> OutboundAuthError:
        return OutboundAuthError(f"OAuth2 token request to {self.origin} failed: {what}")


def _margin(lifetime_s: float) -> float:
    return min(MAX_EXPIRY_MARGIN_S, lifetime_s / 10)

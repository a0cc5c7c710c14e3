"""Outbound auth against a real loopback OAuth2 token endpoint and a real receiver: the headers
deliveries carry, the token's cache and its renewal, and errors that keep secrets out."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

import aiohttp
import orjson
import pytest
from aiohttp import web
from starlette.datastructures import Secret

from app import outbound
from app.errors import OutboundAuthError
from app.outbound import (
    BasicAuth,
    BearerAuth,
    OAuth2ClientCredentials,
    OutboundAuth,
)
from app.ssrf import GuardedConnector
from tests.conftest import free_port
from tests.subscribers import Reply, Sink

CLIENT_ID = "orderhook client"
CLIENT_SECRET = "s3cr:t+/ é&=%"  # every character form-urlencoding (RFC 6749 §2.3.1) changes
LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]

pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes | None = None  # None: a fresh token `tok-N` with a 200, else no body
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Asked:
    headers: dict[str, str]
    form: dict[str, str]
    client: tuple[str, str] | None  # the Basic credentials, form-decoded


class TokenEndpoint(Sink):
    """An OAuth2 token endpoint on 127.0.0.1 (a Sink answering its own way): answers from its
    `answers` in turn, then with a fresh token (`tok-1`, `tok-2`, ...) of `expires_in`."""

    def __init__(self, expires_in: object = None) -> None:
        super().__init__()
        self.token_url = self.url("/oauth/token")
        self.expires_in = expires_in
        self.asked: list[Asked] = []
        self.answers: list[Answer] = []
        self.issued = 0

    def __enter__(self) -> TokenEndpoint:
        super().__enter__()
        return self

    def token(self) -> bytes:
        self.issued += 1
        answer: dict[str, Any] = {"access_token": f"tok-{self.issued}", "token_type": "bearer"}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        return orjson.dumps(answer)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        form = {key: str(value) for key, value in (await request.post()).items()}
        self.asked.append(Asked(dict(request.headers), form, _client(request)))
        answer = self.answers.pop(0) if self.answers else Answer()
        await asyncio.sleep(answer.delay_s)
        fresh = answer.body is None and answer.status == 200
        body = self.token() if fresh else answer.body or b""
        return web.Response(status=answer.status, body=body, headers=answer.headers)


def _client(request: web.Request) -> tuple[str, str] | None:
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Basic":
        return None
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    return unquote_plus(user), unquote_plus(password)


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    with TokenEndpoint() as server:
        yield server


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """As the deliveries' session: the SSRF guard allowing loopback, no proxy from the env."""
    async with aiohttp.ClientSession(
        connector=GuardedConnector(LOOPBACK), trust_env=False
    ) as client:
        yield client


def oauth2(
    endpoint: TokenEndpoint, scope: str | None = None, refetch_cooldown_s: float = 10.0
) -> OutboundAuth:
    grant = OAuth2ClientCredentials(endpoint.token_url, CLIENT_ID, Secret(CLIENT_SECRET), scope)
    return OutboundAuth(auth=grant, refetch_cooldown_s=refetch_cooldown_s)


async def deliver(auth: OutboundAuth, session: aiohttp.ClientSession, sink: Sink) -> int:
    """One delivery as the deliverer makes it: the headers, the POST, `rejected` on a 401."""
    sent = await auth.headers(session)
    async with session.post(sink.url("/erp"), data=b"{}", headers=sent) as response:
        if response.status == 401:
            auth.rejected(sent)
        return response.status


def authorizations(sink: Sink) -> list[str]:
    return [r.headers.get("Authorization", "") for r in sink.at("/erp")]


async def test_basic_auth_and_static_headers_reach_the_receiver(
    session: aiohttp.ClientSession, sink: Sink
) -> None:
    auth = OutboundAuth(
        {"X-Api-Key": Secret("k-123"), "X-Tenant": Secret("acme")},
        BasicAuth("erp user", Secret("pa:ss é")),
    )
    assert await deliver(auth, session, sink) == 200
    (got,) = sink.at("/erp")
    assert got.headers["X-Api-Key"] == "k-123" and got.headers["X-Tenant"] == "acme"
    scheme, _, encoded = got.headers["Authorization"].partition(" ")
    assert scheme == "Basic" and base64.b64decode(encoded).decode() == "erp user:pa:ss é"


async def test_bearer_auth_and_static_headers_alone(
    session: aiohttp.ClientSession, sink: Sink
) -> None:
    assert await deliver(OutboundAuth(auth=BearerAuth(Secret("abc.DEF-1"))), session, sink) == 200
    assert await deliver(OutboundAuth({"X-Api-Key": Secret("k")}), session, sink) == 200
    first, second = sink.at("/erp")
    assert first.headers["Authorization"] == "Bearer abc.DEF-1"
    assert second.headers["X-Api-Key"] == "k" and "Authorization" not in second.headers
    assert await OutboundAuth().headers(session) == {}


async def test_the_token_endpoint_sees_the_grant_the_scope_and_the_client_by_basic_auth(
    session: aiohttp.ClientSession, endpoint: TokenEndpoint, sink: Sink
) -> None:
    assert await deliver(oauth2(endpoint, scope="orders:write erp"), session, sink) == 200
    (asked,) = endpoint.asked
    assert asked.form == {"grant_type": "client_credentials", "scope": "orders:write erp"}
    assert asked.client == (CLIENT_ID, CLIENT_SECRET)
    assert asked.headers["Accept"] == "application/json"
    assert asked.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert authorizations(sink) == ["Bearer tok-1"]
    await oauth2(endpoint).headers(session)
    assert endpoint.asked[1].form == {"grant_type": "client_credentials"}  # no scope: none sent


async def test_one_token_serves_many_deliveries_concurrent_ones_too(
    session: aiohttp.ClientSession, endpoint: TokenEndpoint, sink: Sink
) -> None:
    auth = oauth2(endpoint)  # no expires_in: kept DEFAULT_TOKEN_LIFETIME_S
    statuses = await asyncio.gather(*(deliver(auth, session, sink) for _ in range(30)))
    statuses += [await deliver(auth, session, sink) for _ in range(10)]
    assert statuses == [200] * 40 and len(endpoint.asked) == 1
    assert set(authorizations(sink)) == {"Bearer tok-1"}


async def test_a_token_is_kept_until_shortly_before_it_expires_then_asked_again(
    session: aiohttp.ClientSession, sink: Sink
) -> None:
    with TokenEndpoint(expires_in=2) as endpoint:  # renewed 0.2 s early: after 1.8 s
        auth = oauth2(endpoint)
        await deliver(auth, session, sink)
        await asyncio.sleep(1.0)
        await deliver(auth, session, sink)
        await asyncio.sleep(1.0)
        await asyncio.gather(*(deliver(auth, session, sink) for _ in range(5)))
    assert len(endpoint.asked) == 2
    assert authorizations(sink) == ["Bearer tok-1"] * 2 + ["Bearer tok-2"] * 5


@pytest.mark.parametrize("spacing_s", [0.0, 0.01])  # the 401s at once, or over 200 ms
async def test_a_burst_of_401s_asks_for_one_new_token(
    session: aiohttp.ClientSession, endpoint: TokenEndpoint, sink: Sink, spacing_s: float
) -> None:
    auth = oauth2(endpoint, refetch_cooldown_s=0)
    sink.script("/erp", *[Reply(status=401)] * 20)
    sent = await auth.headers(session)

    async def refused_then_again(nth: int) -> dict[str, str]:
        """A delivery sent with the first token, refused, then the next delivery's headers."""
        await asyncio.sleep(nth * spacing_s)
        async with session.post(sink.url("/erp"), data=b"{}", headers=sent) as response:
            assert response.status == 401
        auth.rejected(sent)
        return await auth.headers(session)

    again = await asyncio.gather(*(refused_then_again(nth) for nth in range(20)))
    assert again == [{"Authorization": "Bearer tok-2"}] * 20
    assert len(endpoint.asked) == 2 and await deliver(auth, session, sink) == 200
    assert authorizations(sink) == ["Bearer tok-1"] * 20 + ["Bearer tok-2"]


async def test_a_401_after_a_new_token_does_not_loop_back_to_the_token_endpoint(
    session: aiohttp.ClientSession, endpoint: TokenEndpoint, sink: Sink
) -> None:
    auth = oauth2(endpoint)  # the default cooldown: only the first 401 asks for a new token
    sink.script("/erp", *[Reply(status=401)] * 3)
    assert [await deliver(auth, session, sink) for _ in range(4)] == [401, 401, 401, 200]
    assert len(endpoint.asked) == 2


async def test_a_401_with_a_token_already_replaced_drops_nothing(
    session: aiohttp.ClientSession, endpoint: TokenEndpoint
) -> None:
    auth = oauth2(endpoint, refetch_cooldown_s=0)
    old = await auth.headers(session)
    auth.rejected(old)
    new = await auth.headers(session)
    auth.rejected(old)  # a late 401 for the old token
    assert await auth.headers(session) == new == {"Authorization": "Bearer tok-2"}
    auth.rejected({})  # a 401 to a delivery that carried no token
    assert len(endpoint.asked) == 2


LEAKY = orjson.dumps(
    {"error": "invalid_client", "error_description": f"secret {CLIENT_SECRET} is wrong"}
)
SCOPE = orjson.dumps({"error": "invalid_scope", "error_description": "scope erp is unknown"})
ECHO = orjson.dumps({"error": "bad\nline", "error_description": "x", "echo": CLIENT_SECRET})


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (Answer(500, b"boom " + CLIENT_SECRET.encode()), "HTTP 500"),
        (Answer(401, LEAKY), "HTTP 401: invalid_client"),  # a description not in RFC's ASCII
        (Answer(400, SCOPE), "HTTP 400: invalid_scope (scope erp is unknown)"),
        (Answer(400, ECHO), "HTTP 400"),
        (Answer(302, b"", headers={"Location": "/elsewhere"}), "HTTP 302, a redirect"),
        (Answer(200, b"{not json"), "HTTP 200, an answer that is not a JSON object"),
        (Answer(200, b"[]"), "HTTP 200, an answer that is not a JSON object"),
        (Answer(200, b'{"token_type": "bearer"}'), "no access_token"),
        (Answer(200, b'{"access_token": "a b", "token_type": "bearer"}'), "no access_token"),
        (Answer(200, b'{"access_token": "tok-9", "token_type": "mac"}'), "token_type is not"),
        (Answer(200, b'{"access_token": "tok-9"}'), "token_type is not Bearer"),
        (
            Answer(200, b'{"access_token": "tok-9", "token_type": "Bearer", "expires_in": "x"}'),
            "expires_in is not a number",
        ),
        (Answer(200, b'{"access_token": "tok-9", "x": "' + b"y" * 70_000 + b'"}'), "64 KiB"),
        (Answer(200, delay_s=1.0), "no answer within 0.3 s"),
    ],
)
async def test_a_failing_token_endpoint_is_one_error_naming_its_origin_and_no_secret(
    session: aiohttp.ClientSession,
    endpoint: TokenEndpoint,
    monkeypatch: pytest.MonkeyPatch,
    answer: Answer,
    expected: str,
) -> None:
    monkeypatch.setattr(outbound, "TOKEN_TIMEOUT_S", 0.3)
    endpoint.answers.append(answer)
    with pytest.raises(OutboundAuthError) as failed:
        await oauth2(endpoint).headers(session)
    message = str(failed.value)
    assert message.startswith(f"OAuth2 token request to http://127.0.0.1:{endpoint.port} failed")
    assert expected in message and "\n" not in message
    for secret in (CLIENT_SECRET, "tok-", "oauth/token", "boom"):
        assert secret not in message


async def test_the_client_secret_is_hidden_in_the_error_description_that_echoes_it(
    session: aiohttp.ClientSession, endpoint: TokenEndpoint
) -> None:
    grant = OAuth2ClientCredentials(endpoint.token_url, CLIENT_ID, Secret("ascii-secret-42"))
    echo = {"error": "invalid_client", "error_description": "ascii-secret-42 is wrong"}
    endpoint.answers.append(Answer(401, orjson.dumps(echo)))
    with pytest.raises(OutboundAuthError, match=r"HTTP 401: invalid_client \(\*\*\* is wrong\)"):
        await OutboundAuth(auth=grant).headers(session)


async def test_a_token_endpoint_that_is_down_or_refused_by_the_ssrf_guard(
    session: aiohttp.ClientSession,
) -> None:
    down = OAuth2ClientCredentials(
        f"http://127.0.0.1:{free_port()}/t?key=abcdefgh", CLIENT_ID, Secret(CLIENT_SECRET)
    )
    with pytest.raises(OutboundAuthError, match="ClientConnectorError") as failed:
        await OutboundAuth(auth=down).headers(session)
    assert "abcdefgh" not in str(failed.value) and CLIENT_SECRET not in str(failed.value)
    async with aiohttp.ClientSession(connector=GuardedConnector([])) as guarded:
        with pytest.raises(OutboundAuthError, match="refused by the SSRF guard"):
            await OutboundAuth(auth=down).headers(guarded)


async def test_concurrent_deliveries_share_one_failed_request_then_the_next_one_asks_again(
    session: aiohttp.ClientSession, endpoint: TokenEndpoint
) -> None:
    auth = oauth2(endpoint)
    endpoint.answers.append(Answer(503, delay_s=0.2))
    outcomes = await asyncio.gather(
        *(auth.headers(session) for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(o, OutboundAuthError) for o in outcomes) and len(endpoint.asked) == 1
    assert await auth.headers(session) == {"Authorization": "Bearer tok-1"}


async def test_a_delivery_cancelled_while_waiting_does_not_cancel_the_others_token(
    session: aiohttp.ClientSession, endpoint: TokenEndpoint
) -> None:
    auth = oauth2(endpoint)
    endpoint.answers.append(Answer(delay_s=0.3))
    first = asyncio.create_task(auth.headers(session))
    second = asyncio.create_task(auth.headers(session))
    await asyncio.sleep(0.1)
    first.cancel()
    assert await second == {"Authorization": "Bearer tok-1"}
    assert len(endpoint.asked) == 1


def test_no_repr_shows_a_secret() -> None:
    shown = repr(
        [
            BasicAuth("u", Secret("pw-1")),
            BearerAuth(Secret("tok-1")),
            OAuth2ClientCredentials("https://idp.example/t", "id", Secret(CLIENT_SECRET), "s"),
        ]
    )
    assert "pw-1" not in shown and "tok-1" not in shown and CLIENT_SECRET not in shown


@pytest.mark.parametrize(
    ("headers", "auth", "refused"),
    [
        ({"Authorization": Secret("x")}, BearerAuth(Secret("t")), "give one or the other"),
        ({"X-Key": Secret("a\r\nX-Injected: 1")}, None, "'X-Key': a value is printable ASCII"),
        ({}, BearerAuth(Secret("to ken")), "the Bearer token holds a space"),
    ],
)
def test_what_no_header_can_carry_is_refused_without_showing_it(
    headers: dict[str, Secret], auth: outbound.Auth | None, refused: str
) -> None:
    with pytest.raises(ValueError, match=refused) as failed:
        OutboundAuth(headers, auth)
    assert "Injected" not in str(failed.value) and "to ken" not in str(failed.value)


def test_a_basic_username_cannot_hold_a_colon() -> None:
    with pytest.raises(ValueError, match="cannot hold `:`"):
        BasicAuth("a:b", Secret("pw"))

"""The one VTEX client, against the fake VTEX: no redirect followed, every answer capped."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from starlette.datastructures import Secret

from app.config import Source
from app.dev.fake_vtex import APP_KEY, APP_TOKEN, FakeVtex
from app.vtex.api import (
    FEED,
    GET_ORDER,
    HOOK_CONFIG,
    Endpoint,
    VtexApi,
    VtexRedirect,
    VtexRefused,
    VtexTooLarge,
    VtexUnreachable,
)
from app.vtex.urls import FEED_PATH, HOOK_CONFIG_PATH, ORDER_PATH
from tests.conftest import free_port

pytestmark = pytest.mark.anyio

SOURCE = Source("mystore", "x-h", Secret("t"), Secret(APP_KEY), Secret(APP_TOKEN))
TIMEOUT = aiohttp.ClientTimeout(total=10)


@pytest.fixture
def vtex() -> Iterator[FakeVtex]:
    with FakeVtex() as fake:
        yield fake


@pytest.fixture
def elsewhere() -> Iterator[FakeVtex]:
    with FakeVtex() as fake:
        yield fake


@pytest.fixture
async def api(vtex: FakeVtex) -> AsyncIterator[VtexApi]:
    async with aiohttp.ClientSession() as session:
        yield VtexApi(vtex.base_url, session)


CALLS = [
    ("GET", (*ORDER_PATH, "v1-01"), None),
    ("GET", FEED_PATH, None),
    ("POST", FEED_PATH, {"handles": ["h"]}),
    ("GET", HOOK_CONFIG_PATH, None),
    ("POST", HOOK_CONFIG_PATH, {"filter": {}}),
    ("DELETE", HOOK_CONFIG_PATH, None),
]


@pytest.mark.parametrize(("method", "segments", "json"), CALLS)
async def test_credentials_never_follow_a_redirect(
    api: VtexApi,
    vtex: FakeVtex,
    elsewhere: FakeVtex,
    method: str,
    segments: tuple[str, ...],
    json: object,
) -> None:
    vtex.redirect_to = elsewhere.url
    with pytest.raises(VtexRedirect) as info:
        await api.call(
            method,
            SOURCE,
            "mystore",
            segments,
            what="x",
            max_bytes=1024,
            timeout=TIMEOUT,
            json=json,
        )
    assert str(info.value) == f"HTTP 302 from VTEX x: a redirect to {elsewhere.url}, not followed"
    assert [(s.method, s.credentials) for s in vtex.requests] == [(method, (APP_KEY, APP_TOKEN))]
    assert elsewhere.requests == []


@pytest.mark.parametrize("declared", [False, True], ids=["streamed", "content-length"])
async def test_answer_over_the_cap_is_refused(api: VtexApi, vtex: FakeVtex, declared: bool) -> None:
    vtex.order_bytes["big"] = (100_000, declared)
    order = (*ORDER_PATH, "big")
    with pytest.raises(VtexTooLarge, match=r"^VTEX Get Order answer over 99999 bytes"):
        await api.call(
            "GET", SOURCE, "mystore", order, what="Get Order", max_bytes=99_999, timeout=TIMEOUT
        )
    answer = await api.call(
        "GET", SOURCE, "mystore", order, what="Get Order", max_bytes=100_000, timeout=TIMEOUT
    )
    assert answer.status == 200 and len(answer.body) == 100_000
    assert answer.json()["orderId"] == "big"


async def test_refused_and_unreachable_name_no_secret(api: VtexApi, vtex: FakeVtex) -> None:
    with pytest.raises(VtexRefused, match="the account must be a VTEX account name"):
        await api.call(
            "GET", SOURCE, "evil.example/x#", FEED_PATH, what="Feed", max_bytes=10, timeout=TIMEOUT
        )
    async with aiohttp.ClientSession() as session:
        closed = VtexApi(f"http://127.0.0.1:{free_port()}/{{account}}", session)
        with pytest.raises(VtexUnreachable) as info:
            await closed.call(
                "GET", SOURCE, "mystore", FEED_PATH, what="Feed", max_bytes=10, timeout=TIMEOUT
            )
    assert str(info.value) == "VTEX Feed failed: ClientConnectorError"
    assert vtex.requests == []


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("http://user:pw@evil.example:8080/steal?token=s3cret#x", "http://evil.example:8080"),
        ("https://evil.example/a", "https://evil.example:443"),
        ("/mystore/api/oms/pvt/orders/v2", "{vtex}"),  # relative: VTEX's own origin
    ],
)
async def test_redirect_is_named_by_its_origin_only(
    api: VtexApi, vtex: FakeVtex, location: str, shown: str
) -> None:
    vtex.order_failures = [(302, {"Location": location})]
    with pytest.raises(VtexRedirect) as info:
        await api.call(
            "GET",
            SOURCE,
            "mystore",
            (*ORDER_PATH, "v1"),
            what="Get Order",
            max_bytes=1024,
            timeout=TIMEOUT,
        )
    where = shown.format(vtex=vtex.url)
    assert str(info.value) == f"HTTP 302 from VTEX Get Order: a redirect to {where}, not followed"
    assert len(vtex.requests) == 1  # not followed, not even to VTEX itself


@pytest.mark.parametrize(
    ("endpoint", "method", "more", "path"),
    [
        (GET_ORDER, "GET", ("v1-01",), "/mystore/api/oms/pvt/orders/v1-01"),
        (FEED, "GET", (), "/mystore/api/orders/feed"),
        (HOOK_CONFIG, "DELETE", (), "/mystore/api/orders/hook/config"),
    ],
)
async def test_each_endpoint_is_called_with_the_sources_credentials(
    api: VtexApi, vtex: FakeVtex, endpoint: Endpoint, method: str, more: tuple[str, ...], path: str
) -> None:
    await api.request(endpoint, method, SOURCE, "mystore", *more)
    assert [(s.method, s.raw_path, s.credentials) for s in vtex.requests] == [
        (method, path, (APP_KEY, APP_TOKEN))
    ]


async def test_a_source_without_credentials_is_refused_unsent(api: VtexApi, vtex: FakeVtex) -> None:
    bare = Source("mystore", "x-h", Secret("t"))
    with pytest.raises(VtexRefused, match="^refused to call VTEX: the source has no app key"):
        await api.request(FEED, "GET", bare, "mystore")
    assert vtex.requests == []

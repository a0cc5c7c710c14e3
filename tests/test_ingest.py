"""POST /hooks/vtex against a real Redis: auth, validation, limits, dedupe and durability."""

from __future__ import annotations

import asyncio
import random
import socket
from collections import Counter
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.events import MAX_BODY_DEPTH
from app.store.schema import Keys
from tests.conftest import (
    AUTH,
    HEADER,
    TOKEN,
    WILDCARD_HEADER,
    WILDCARD_TOKEN,
    Gateway,
    notification,
    stream_events,
)

pytestmark = pytest.mark.anyio


async def post(
    client: httpx.AsyncClient, body: Any, headers: dict[str, str] = AUTH
) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return await client.post("/hooks/vtex", content=content, headers=headers)


async def test_ping_with_valid_auth_answers_pong_and_stores_nothing(
    client: httpx.AsyncClient, rdb: redis.Redis, keys: Keys
) -> None:
    r = await post(client, {"hookConfig": "ping"})
    assert (r.status_code, r.json()) == (200, {"status": "pong"})
    assert rdb.xlen(keys.ingest_stream) == 0


async def test_ping_without_auth_header_is_refused(client: httpx.AsyncClient) -> None:
    r = await post(client, {"hookConfig": "ping"}, {"Content-Type": "application/json"})
    assert r.status_code == 401
    assert "auth header" in r.json()["error"]


async def test_wrong_token_is_refused_before_the_body_is_parsed(
    client: httpx.AsyncClient, rdb: redis.Redis, keys: Keys
) -> None:
    r = await post(client, b"{not json", {HEADER: TOKEN + "x", "Content-Type": "application/json"})
    assert r.status_code == 401  # not 400: the body was never looked at
    r = await post(client, notification(), {HEADER: "", "Content-Type": "application/json"})
    assert r.status_code == 401
    assert rdb.xlen(keys.ingest_stream) == 0


async def test_account_must_belong_to_the_source_of_the_token(
    client: httpx.AsyncClient, rdb: redis.Redis, keys: Keys
) -> None:
    other = notification(Origin={"Account": "otherstore", "Key": "k"})
    r = await post(client, other)
    assert r.status_code == 401
    assert "otherstore" in r.json()["error"]
    assert rdb.xlen(keys.ingest_stream) == 0
    wildcard = {WILDCARD_HEADER: WILDCARD_TOKEN, "Content-Type": "application/json"}
    r = await post(client, other, wildcard)
    assert (r.status_code, r.json()["status"]) == (200, "accepted")


async def test_accepted_notification_is_stored_normalized_with_raw_and_unknown_fields(
    client: httpx.AsyncClient, rdb: redis.Redis, keys: Keys
) -> None:
    body = notification(Extra={"kept": True})
    r = await post(client, body)
    assert r.status_code == 200
    assert r.json()["status"] == "accepted"
    [fields] = stream_events(rdb, keys)
    event = orjson.loads(fields[b"event"])
    assert event["id"] == r.json()["id"] == fields[b"id"].decode()
    assert {k: event[k] for k in ("account", "domain", "orderId", "state", "lastState")} == {
        "account": "mystore",
        "domain": "Fulfillment",
        "orderId": "v52277740atmc-01",
        "state": "ready-for-handling",
        "lastState": "window-to-cancel",
    }
    assert event["lastChange"] == body["LastChange"]
    assert event["currentChange"] == body["CurrentChange"]
    assert event["receivedAt"].endswith("Z")
    assert event["raw"] == body


async def test_same_notification_again_is_a_duplicate_with_the_first_id(
    client: httpx.AsyncClient, rdb: redis.Redis, keys: Keys
) -> None:
    first = (await post(client, notification())).json()
    again = (await post(client, notification(LastState="other-last-state"))).json()
    assert again == {"status": "duplicate", "id": first["id"]}
    assert rdb.xlen(keys.ingest_stream) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"State": "invoiced"},
        {"CurrentChange": "2019-08-14T17:12:48.0965894Z"},
        {"Domain": "Marketplace"},
        {"OrderId": "v52277740atmc-02"},
        {"Origin": {"Account": "mystore2", "Key": "vtexappkey-appvtex"}},
    ],
)
async def test_a_different_key_field_makes_a_different_event(
    client: httpx.AsyncClient, rdb: redis.Redis, keys: Keys, change: dict[str, Any]
) -> None:
    headers = {WILDCARD_HEADER: WILDCARD_TOKEN, "Content-Type": "application/json"}
    first = (await post(client, notification(), headers)).json()
    second = (await post(client, notification(**change), headers)).json()
    assert second["status"] == "accepted"
    assert second["id"] != first["id"]
    assert rdb.xlen(keys.ingest_stream) == 2


async def test_last_change_is_the_key_where_current_change_is_absent(
    client: httpx.AsyncClient, rdb: redis.Redis, keys: Keys
) -> None:
    base = notification(CurrentChange=None, LastState=None)  # VTEX's guide example shape
    a = (await post(client, base)).json()
    b = (await post(client, {**base, "LastChange": "2019-07-29T23:17:31.0000000Z"})).json()
    c = (await post(client, base)).json()
    assert (a["status"], b["status"], c["status"]) == ("accepted", "accepted", "duplicate")
    assert c["id"] == a["id"] != b["id"]
    # With CurrentChange present, LastChange is not part of the key.
    d = (await post(client, notification(LastChange="2000-01-01T00:00:00Z"))).json()
    e = (await post(client, notification(LastChange="2001-01-01T00:00:00Z"))).json()
    assert (d["status"], e["status"]) == ("accepted", "duplicate")
    assert rdb.xlen(keys.ingest_stream) == 3


async def test_state_may_be_null_and_optional_fields_absent(
    client: httpx.AsyncClient, rdb: redis.Redis, keys: Keys
) -> None:
    minimal = {"OrderId": "o-1", "Origin": {"Account": "mystore"}, "State": None}
    r = await post(client, minimal)
    assert r.json()["status"] == "accepted"
    event = orjson.loads(stream_events(rdb, keys)[0][b"event"])
    assert (event["state"], event["domain"], event["lastChange"]) == (None, None, None)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, got an array"),
        (b'"OrderId"', "must be a JSON object, got a string"),
        (orjson.dumps(notification(OrderId=None)), "`OrderId` is required"),
        (orjson.dumps(notification(OrderId="")), "`OrderId` is required"),
        (orjson.dumps(notification(OrderId=123)), "`OrderId` is required"),
        (orjson.dumps(notification(Origin=None)), "`Origin.Account` is required"),
        (orjson.dumps(notification(Origin={"Key": "k"})), "`Origin.Account` is required"),
        (orjson.dumps(notification(Origin="mystore")), "`Origin.Account` is required"),
        (orjson.dumps(notification(State=7)), "`State` must be a string or null"),
        (orjson.dumps(notification(CurrentChange=[])), "`CurrentChange` must be a string"),
        (orjson.dumps({"hookConfig": "pong"}), "`OrderId` is required"),
        # 12.1: a change time routing could not order is refused, not accepted and lost later
        (orjson.dumps(notification(CurrentChange="2300-01-01T00:00:00Z")), "ahead of the gateway"),
        (orjson.dumps(notification(CurrentChange="9999-12-31T23:59:59.9999999Z")), "ahead of"),
        (orjson.dumps(notification(LastChange="yesterday")), "`LastChange` must be an RFC 3339"),
        (orjson.dumps(notification(CurrentChange="2019-02-30T00:00:00Z")), "must be an RFC 3339"),
        (orjson.dumps(notification(CurrentChange="2019-08-14 17:12:48")), "must be an RFC 3339"),
        # 12.7: the account names a VTEX host; anything else could point the gateway elsewhere
        (orjson.dumps(notification(Origin={"Account": "evil.example/x#"})), "VTEX account name"),
        (orjson.dumps(notification(Origin={"Account": "a b"})), "VTEX account name"),
        (orjson.dumps(notification(Origin={"Account": ""})), "VTEX account name"),
        (orjson.dumps(notification(Origin={"Account": "x" * 64})), "VTEX account name"),
        # 12.8: the order id is one path segment
        (orjson.dumps(notification(OrderId="../../api/dataentities/CL/search")), "character '/'"),
        (orjson.dumps(notification(OrderId="..")), "a relative path"),
        (orjson.dumps(notification(OrderId="v1?x=1")), "character '?'"),
        (orjson.dumps(notification(OrderId="v1%2F..")), "character '%'"),
        (orjson.dumps(notification(OrderId="v1\nforged log line")), "character '\\n'"),
        (orjson.dumps(notification(OrderId="v1\u2028x")), "character '\\u2028'"),
        (orjson.dumps(notification(OrderId="v" * 129)), "longer than 128"),
    ],
)
async def test_bad_bodies_get_400_saying_what_is_wrong(
    client: httpx.AsyncClient, rdb: redis.Redis, keys: Keys, body: bytes, expected: str
) -> None:
    r = await post(client, body)
    assert r.status_code == 400
    assert expected in r.json()["error"]
    assert rdb.xlen(keys.ingest_stream) == 0


async def test_a_deep_body_with_an_unsafe_number_at_the_bottom_is_400_not_500(
    client: httpx.AsyncClient, rdb: redis.Redis, keys: Keys
) -> None:
    """12.17: the path of the bad number was found by recursion: RecursionError, a 500. And a
    body deeper than its event could be written as JSON (orjson writes 254 levels) was a 500
    for it and for every hook committed in its batch: ingest refuses both."""
    for depth in (1000, 253, MAX_BODY_DEPTH):
        deep = b"[" * depth + b"9007199254740993" + b"]" * depth
        r = await post(client, orjson.dumps(notification())[:-1] + b', "Extra": ' + deep + b"}")
        assert r.status_code == 400
        assert f"body nests deeper than {MAX_BODY_DEPTH} levels" == r.json()["error"]
    shallow = b"[" * (MAX_BODY_DEPTH - 2) + b"9007199254740993" + b"]" * (MAX_BODY_DEPTH - 2)
    r = await post(client, orjson.dumps(notification())[:-1] + b', "Extra": ' + shallow + b"}")
    assert r.status_code == 400 and "is out of range" in r.json()["error"]
    assert rdb.xlen(keys.ingest_stream) == 0


async def test_unicode_order_ids_and_hyphenated_accounts_are_accepted(
    client: httpx.AsyncClient,
) -> None:
    for order in ("v52277740atmc-01", "SLR-1234567-01", "pedido-ção-01", "注文-1"):
        r = await post(client, orjson.dumps(notification(OrderId=order)))
        assert (r.status_code, r.json()["status"]) == (200, "accepted"), order


async def test_body_over_the_limit_is_413_declared_or_streamed(
    client: httpx.AsyncClient, rdb: redis.Redis, keys: Keys
) -> None:
    big = orjson.dumps(notification(Padding="x" * 5000))  # the test limit is 4096 bytes
    r = await post(client, big)
    assert r.status_code == 413
    assert "4096" in r.json()["error"]

    async def chunks() -> Any:  # no Content-Length: the limit is enforced while reading
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    r = await client.post("/hooks/vtex", content=chunks(), headers=AUTH)
    assert r.status_code == 413
    assert rdb.xlen(keys.ingest_stream) == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_non_json_content_type_is_415(
    client: httpx.AsyncClient, rdb: redis.Redis, keys: Keys, content_type: str
) -> None:
    r = await post(client, notification(), {HEADER: TOKEN, "Content-Type": content_type})
    assert r.status_code == 415
    assert content_type in r.json()["error"]
    assert rdb.xlen(keys.ingest_stream) == 0


async def test_json_content_type_with_charset_is_accepted(client: httpx.AsyncClient) -> None:
    headers = {HEADER: TOKEN, "Content-Type": "application/json; charset=utf-8"}
    assert (await post(client, notification(), headers)).status_code == 200


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert (r.status_code, r.json()["status"]) == (200, "ready")


async def test_unknown_route_and_method_answer_json_errors(client: httpx.AsyncClient) -> None:
    r = await client.get("/nope")
    assert (r.status_code, r.json()) == (404, {"error": "Not Found"})
    r = await client.get("/hooks/vtex")
    assert (r.status_code, r.json()) == (405, {"error": "Method Not Allowed"})


def test_concurrent_posts_store_each_distinct_notification_exactly_once(
    live: Gateway, rdb: redis.Redis, keys: Keys
) -> None:
    bodies = [orjson.dumps(notification(OrderId=f"v{i:04d}-01")) for i in range(200)] * 5
    random.Random(7).shuffle(bodies)  # the copies of one notification race each other

    async def run() -> list[tuple[int, dict[str, Any]]]:
        # aiohttp, not httpx: httpx's async pool takes ~40 ms a request with 100 in flight.
        connector = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(live.url, connector=connector) as session:

            async def send(body: bytes) -> tuple[int, dict[str, Any]]:
                async with session.post("/hooks/vtex", data=body, headers=AUTH) as r:
                    return r.status, await r.json()

            return await asyncio.gather(*(send(b) for b in bodies))

    responses = asyncio.run(run())
    assert {status for status, _ in responses} == {200}
    answers = [answer for _, answer in responses]
    assert Counter(a["status"] for a in answers) == {"accepted": 200, "duplicate": 800}
    ids_by_body: dict[bytes, set[str]] = {}
    for body, answer in zip(bodies, answers, strict=True):
        ids_by_body.setdefault(body, set()).add(answer["id"])
    assert all(len(ids) == 1 for ids in ids_by_body.values())
    assert len({next(iter(ids)) for ids in ids_by_body.values()}) == 200
    assert rdb.xlen(keys.ingest_stream) == 200


_int64 = st.integers(-(2**63), 2**63 - 1)  # what orjson can write; bigger ones come as text below
_json = st.recursive(
    st.none() | st.booleans() | _int64 | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
_wrong_type = _int64 | st.booleans() | st.lists(_int64, max_size=2) | st.just({})
_broken_notification = st.builds(
    lambda field, value: orjson.dumps(notification(**{field: value})),
    st.sampled_from(["OrderId", "Origin", "State", "Domain", "LastChange", "CurrentChange"]),
    _wrong_type,
)
_bodies = (
    st.binary(max_size=6000)
    | _json.map(orjson.dumps)
    | _broken_notification
    | st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n)
    | st.integers(1, 400).map(lambda n: b'{"OrderId": ' + b"9" * n + b"}")
)
_ascii = st.from_regex(r"\A[!-~]([ -~]{0,28}[!-~])?\Z")  # a legal header value
_content_types = (
    st.sampled_from(
        [None, "application/json", "text/plain", "application/xml", "multipart/form-data"]
    )
    | _ascii
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=_bodies,
    content_type=_content_types,
    token=st.sampled_from([TOKEN]) | _ascii,
    extra=st.dictionaries(st.from_regex(r"\Ax-[a-z]{1,10}\Z"), _ascii, max_size=3),
)
def test_junk_bodies_and_headers_never_5xx_and_never_store(
    live: Gateway,
    rdb: redis.Redis,
    keys: Keys,
    body: bytes,
    content_type: str | None,
    token: str,
    extra: dict[str, str],
) -> None:
    headers = {**extra, HEADER: token}
    if content_type is not None:
        headers["Content-Type"] = content_type
    # TCP_NODELAY: httpx writes headers and body apart, which Nagle would delay by ~40 ms.
    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    with httpx.Client(base_url=live.url, timeout=10, transport=transport) as http:
        r = http.post("/hooks/vtex", content=body, headers=headers)
    assert r.status_code < 500 or r.status_code == 503, r.text
    assert r.status_code == 200 or "error" in r.json()
    if r.status_code == 200:
        assert r.json() == {"status": "pong"}
    assert rdb.xlen(keys.ingest_stream) == 0

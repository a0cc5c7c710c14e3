"""Pure parsing, dedupe key and event id rules."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.errors import BadRequest
from app.events import (
    EVENT_ID_NAMESPACE,
    Notification,
    Ping,
    change_time,
    dedupe_key,
    event_id,
    normalize,
    parse_body,
    utc_now_iso,
)
from tests import strategies
from tests.conftest import notification


def parse(doc: dict[str, Any]) -> Notification:
    result = parse_body(orjson.dumps(doc))
    assert isinstance(result, Notification)
    return result


def test_ping_is_recognised() -> None:
    assert isinstance(parse_body(b'{"hookConfig": "ping"}'), Ping)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "2019-08-14T17:12:48.0965893Z"),
        ({"CurrentChange": None}, "2019-08-14T17:11:39.2550122Z"),
        ({"CurrentChange": None, "LastChange": None}, None),
    ],
)
def test_change_time_prefers_current_change(changes: dict[str, Any], expected: str | None) -> None:
    assert change_time(parse(notification(**changes))) == expected


def test_event_id_is_a_stable_uuid_of_the_dedupe_fields_only() -> None:
    a = parse(notification())
    assert uuid.UUID(event_id(a)).version == 5
    assert event_id(a) == event_id(parse(notification(LastState="x", Extra=1)))
    assert event_id(a) != event_id(parse(notification(State="invoiced")))


def test_separator_characters_cannot_make_two_keys_collide() -> None:
    a = parse(notification(Domain="a|b", OrderId="c"))
    b = parse(notification(Domain="a", OrderId="b|c"))
    assert event_id(a) != event_id(b)


def test_normalized_event_shape() -> None:
    event = normalize(parse(notification()), "2026-01-01T00:00:00.000000Z")
    assert set(event) == {
        "id",
        "account",
        "domain",
        "orderId",
        "state",
        "lastState",
        "lastChange",
        "currentChange",
        "receivedAt",
        "raw",
    }


@pytest.mark.parametrize("body", [b"\xff\xfe", b"[" * 10_000 + b"]" * 10_000, b"1e999999"])
def test_hostile_bodies_are_bad_requests(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_body(body)


@given(
    account=strategies.accounts,
    order=strategies.order_ids,
    state=st.none() | st.text(max_size=20),
    change=st.none() | strategies.change_times,
)
def test_event_id_is_exactly_uuid5_of_the_dedupe_key(
    account: str, order: str, state: str | None, change: str | None
) -> None:
    n = parse(
        notification(OrderId=order, State=state, CurrentChange=change, Origin={"Account": account})
    )
    assert event_id(n) == str(uuid.uuid5(EVENT_ID_NAMESPACE, dedupe_key(n).decode()))


def test_received_time_is_rfc3339_utc_with_microseconds() -> None:
    before = datetime.now(UTC)
    stamp = utc_now_iso()
    after = datetime.now(UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    assert before - timedelta(microseconds=1) <= datetime.fromisoformat(stamp) <= after


@pytest.mark.parametrize(
    ("literal", "path"),
    [(b"9007199254740992", "Extra"), (b'[1, {"n": -1e300}]', "Extra[1].n")],
)
def test_an_unsafe_number_is_refused_naming_where_it_is(literal: bytes, path: str) -> None:
    body = orjson.dumps(notification())[:-1] + b', "Extra": ' + literal + b"}"
    with pytest.raises(BadRequest, match=re.escape(f"number at `{path}` is out of range")):
        parse_body(body)
    assert isinstance(parse_body(body.replace(literal, b"9007199254740991")), Notification)

"""Pure parsing, dedupe key and event id rules."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from app.errors import BadRequest
from app.events import Notification, Ping, change_time, event_id, normalize, parse_body
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

"""Every event ingest accepts goes out as a CloudEvent the `cloudevents` SDK reads, whose
`source` is an RFC 3986 URI and whose String attributes are CloudEvents Strings.

What the gateway sends is structured mode (`application/cloudevents+json`: delivery.build_body
for a push, the feed item's `event` for a pull); a consumer may pass it on in binary mode
(`ce-*` headers), so the SDK's binary encoding of it must read back the same. `source` is
checked with the `rfc3986` parser (the SDK only checks it is a non-empty string: `my store`
passes there), `subject`, `id` and `type` against the spec's String type.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
import uuid
from typing import Any

import orjson
import pytest
import rfc3986
from cloudevents.core.bindings.http import (
    HTTPMessage,
    from_http_event,
    to_binary_event,
)
from cloudevents.v1.conversion import to_binary as v1_to_binary
from cloudevents.v1.http import from_http, from_json
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rfc3986 import validators

from app.delivery import Transforms, build_body
from app.errors import BadRequest
from app.events import (
    CLOUDEVENT_TYPE,
    Notification,
    cloudevent_text,
    event_source,
    normalize,
    parse_body,
    utc_now_iso,
)
from app.pull import feed_item
from app.subscriptions.spec import Subscription
from tests import strategies
from tests.conftest import notification

PUSH = Subscription(id="push", url="https://example.com/hook", secrets=())
PULL = Subscription(id="pull", url="", secrets=(), mode="pull")
# RFC 3339's date-time (section 5.6): ASCII digits only; `t` and `z` may be lower case.
RFC_3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
STRUCTURED = {"content-type": "application/cloudevents+json"}
_URI = (
    validators.Validator()
    .require_presence_of("scheme", "host")
    .check_validity_of("scheme", "userinfo", "host", "port", "path", "query", "fragment")
)


def assert_uri(source: str) -> None:
    """`source` is an absolute RFC 3986 URI (so a URI-reference too) naming a VTEX API host,
    whatever the account held (`a:b@c` must not make `a:b` a user name)."""
    assert source.isascii() and not any(c.isspace() for c in source), source
    uri = rfc3986.uri_reference(source)
    _URI.validate(uri)  # raises naming the component that is wrong
    assert uri.host.endswith(".vtexcommercestable.com.br"), source
    assert (uri.scheme, uri.userinfo, uri.port, uri.path, uri.query, uri.fragment) == (
        "https",
        None,
        None,
        None,
        None,
        None,
    ), source


def is_cloudevents_string(text: str) -> bool:
    """The spec's String: no control characters, surrogates or noncharacters."""
    return not any(
        unicodedata.category(c) == "Cc"
        or 0xD800 <= ord(c) <= 0xDFFF
        or 0xFDD0 <= ord(c) <= 0xFDEF
        or ord(c) & 0xFFFE == 0xFFFE
        for c in text
    )


def accepted(doc: dict[str, Any]) -> dict[str, Any]:
    """The event ingest keeps for `doc`, as the stream gives it back."""
    n = parse_body(orjson.dumps(doc))
    assert isinstance(n, Notification)
    return orjson.loads(orjson.dumps(normalize(n, utc_now_iso())))


def sent_bodies(event: dict[str, Any]) -> list[bytes]:
    """What the gateway sends for `event`: a push's body and a pull's feed item `event`."""
    item = asyncio.run(feed_item(Transforms([PULL]), PULL, orjson.dumps(event), "h"))
    return [build_body(PUSH, event), orjson.dumps(item["event"])]


def assert_valid_cloudevent(event: dict[str, Any]) -> None:
    for body in sent_bodies(event):
        parsed = from_http_event(HTTPMessage(headers=STRUCTURED, body=body))
        attributes = parsed.get_attributes()
        assert_uri(parsed.get_source())
        assert parsed.get_id() == str(uuid.UUID(event["id"]))
        assert parsed.get_type() == CLOUDEVENT_TYPE
        assert parsed.get_subject() == cloudevent_text(event["orderId"])
        for name in ("id", "source", "type", "subject"):
            assert is_cloudevents_string(attributes[name]), (name, attributes[name])
        assert parsed.get_time() is not None and parsed.get_time().tzinfo is not None
        assert RFC_3339.fullmatch(orjson.loads(body)["time"]), orjson.loads(body)["time"]
        # passed on in binary mode: every attribute survives the ce-* headers
        binary = to_binary_event(parsed)
        assert from_http_event(binary).get_attributes() == attributes
        # and the SDK's older API reads the same, structured and binary
        old = from_http(STRUCTURED, body)
        assert old["source"] == from_json(body)["source"] == parsed.get_source()
        headers, data = v1_to_binary(old)
        assert from_http(headers, data)["subject"] == parsed.get_subject()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    account=strategies.accounts,
    order=strategies.order_ids,
    change=st.none() | strategies.change_times,
    state=st.none() | st.text(max_size=20),
    domain=st.none() | st.text(max_size=20),
)
def test_every_accepted_notification_is_a_valid_cloudevent(
    account: str, order: str, change: str | None, state: str | None, domain: str | None
) -> None:
    doc = notification(
        OrderId=order, CurrentChange=change, State=state, Origin={"Account": account}
    )
    doc["Domain"] = domain
    assert_valid_cloudevent(accepted(doc))


def _accepted_or_none(doc: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return accepted(doc)
    except BadRequest:
        return None


# Beyond tests/strategies.py: any text ingest lets through as an order id or account (private
# use, unassigned code points and noncharacters such as U+FFFF included).
_ANY_TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(order=_ANY_TEXT | st.sampled_from(["\uffff-01", "\U0010fffe", "\ufdd0", "\ue000"]))
def test_any_order_id_ingest_accepts_is_a_cloudevents_subject(order: str) -> None:
    event = _accepted_or_none(notification(OrderId=order))
    if event is not None:
        assert_valid_cloudevent(event)


# Any digit Python's `\d` reads (١ is ARABIC-INDIC ONE) was taken in a change time's fraction, and
# went out as the CloudEvent's `time`, which RFC 3339 readers refuse.
@pytest.mark.parametrize("change", ["2019-08-14T17:12:48.\u0661Z", "2019-08-14T17:12:48.1\uff11Z"])
def test_a_change_time_with_other_digits_is_refused(change: str) -> None:
    with pytest.raises(BadRequest):
        accepted(notification(CurrentChange=change))


@settings(max_examples=200, deadline=None)
@given(account=_ANY_TEXT | st.sampled_from(["MyStore", "x" * 63, "0-0"]))
def test_any_account_ingest_accepts_makes_a_uri_source(account: str) -> None:
    event = _accepted_or_none(notification(Origin={"Account": account}))
    if event is not None:
        assert_valid_cloudevent(event)


# Events an older gateway accepted (before accounts had to be host labels) are still in the
# stream and the dead letters: replayed, they go out with a valid source too.
@pytest.mark.parametrize(
    "account", ["my store", "loja/são-paulo", "a:b@c", "x?y#z", "50%", "[::1]", "\x00", "\ufffe"]
)
def test_an_event_kept_by_an_older_gateway_still_has_a_uri_source(account: str) -> None:
    event = {**accepted(notification()), "account": account}
    assert_valid_cloudevent(event)


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        ("v12345678abcd-01", "v12345678abcd-01"),
        ("订单-01", "订单-01"),
        ("\uffff-01", "%EF%BF%BF-01"),
        ("a\U0010fffeb", "a%F4%8F%BF%BEb"),
        ("\ufdd0", "%EF%B7%90"),
        ("50%", "50%25"),  # so that an escape reads back as one
        ("a\nb", "a%0Ab"),
    ],
)
def test_cloudevent_text_escapes_only_what_a_string_must_not_hold(text: str, sent: str) -> None:
    assert cloudevent_text(text) == sent


def test_a_valid_account_is_the_source_host_as_it_is() -> None:
    assert event_source("MyStore-1") == "https://MyStore-1.vtexcommercestable.com.br"

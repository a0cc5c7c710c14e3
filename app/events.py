"""VTEX hook notifications and the normalized events the gateway keeps for them.

Pure functions only: parsing, validation, the dedupe key and the event id. No I/O.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple
from urllib.parse import quote

import orjson

from app.errors import BadRequest

# Every event id is a UUIDv5 of the dedupe key in this namespace: the same notification always
# maps to the same id, in every gateway process.
EVENT_ID_NAMESPACE = uuid.UUID("6f1c3a0e-3d52-5b8e-9a57-0c2f5d7e4b11")
_NAMESPACE_BYTES = EVENT_ID_NAMESPACE.bytes

_OPTIONAL_TEXT = ("Domain", "State", "LastState", "LastChange", "CurrentChange")
_CHANGE_TIMES = ("CurrentChange", "LastChange")

# VTEX account names are host name labels (the account's API host is built from one). The
# patterns here are written for Python's `re` and ECMA-262 alike: the OpenAPI document uses them.
ACCOUNT_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ACCOUNT = re.compile(rf"\A{ACCOUNT_LABEL}\Z")
MAX_ORDER_ID_CHARS = 128
# An order id is one path segment of VTEX's API and a part of log lines and Redis keys: no
# separators, no percent escapes, no whitespace, no control or format characters.
# Whitespace is spelled out (Python's `\s` and ECMA's differ).
ORDER_ID_REFUSED_CHARS = (
    r"/\\?#%\x00-\x20\x7f-\xa0\xad\u1680\u2000-\u200f\u2028-\u202f\u205f\u3000\ufeff"
)
_ORDER_ID_REFUSED = re.compile(f"[{ORDER_ID_REFUSED_CHARS}]")
# A change time may run ahead of the gateway's clock by this much (VTEX's clock, or ours, off):
# a time further ahead would make every later state of its order look stale.
MAX_CLOCK_AHEAD_S = 24 * 3600

# I-JSON (RFC 7493): numbers beyond 2^53 are not exact in every consumer (JavaScript, JSONata),
# so a notification carrying one would reach subscribers changed. It is refused instead.
MAX_SAFE_NUMBER = 2**53 - 1
# A notification is flat; this much nesting leaves room under orjson's 254-level writing limit
# for the event (`raw` is one level down) and its CloudEvent (`data.raw`, two).
MAX_BODY_DEPTH = 64


@dataclass(frozen=True)
class Ping:
    """VTEX's `{"hookConfig": "ping"}`, sent when a hook is saved."""


class Notification(NamedTuple):  # a tuple: cheaper to build than a frozen dataclass
    account: str
    domain: str | None
    order_id: str
    state: str | None
    last_state: str | None
    last_change: str | None
    current_change: str | None
    raw: dict[str, Any]
    change_ticks: int | None  # change_time's, as 100 ns ticks


def parse_body(body: bytes) -> Ping | Notification:
    """Parse a hook body; raise BadRequest saying what is wrong."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise BadRequest(f"body must be a JSON object, got {_json_type(doc)}")
    _check_numbers(doc)
    if doc.get("hookConfig") == "ping":
        return Ping()
    return _notification(doc)


def _check_numbers(doc: dict[str, Any]) -> None:
    """BadRequest naming the first number out of I-JSON's exact range, or when the body nests
    deeper than MAX_BODY_DEPTH (orjson has already refused infinities and nesting deeper than
    1,024). Hot path: type checks only, the offending number's path is worked out once one is
    found."""
    pending: list[tuple[Any, int]] = [(doc, 1)]
    while pending:
        container, depth = pending.pop()
        for item in container.values() if type(container) is dict else container:
            kind = type(item)
            if kind is dict or kind is list:
                if depth >= MAX_BODY_DEPTH:
                    raise BadRequest(f"body nests deeper than {MAX_BODY_DEPTH} levels")
                pending.append((item, depth + 1))
            elif (kind is int or kind is float) and not -MAX_SAFE_NUMBER <= item <= MAX_SAFE_NUMBER:
                raise BadRequest(
                    f"number at `{ascii(_path_to(doc, item)[:200])[1:-1]}` is out of range: "
                    f"numbers must be within ±{MAX_SAFE_NUMBER} (I-JSON)"
                )


def _path_to(doc: Any, target: Any) -> str:
    """The path of `target` (found by identity) in `doc`, depth first without recursion: the
    body may nest as deep as orjson allows, deeper than Python's recursion limit."""
    pending: list[tuple[Any, str]] = [(doc, "")]
    while pending:
        container, path = pending.pop()
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, item in items:
            where = f"{path}.{key}" if isinstance(container, dict) else f"{path}[{key}]"
            if item is target:
                return where.lstrip(".")
            if isinstance(item, dict | list):
                pending.append((item, where))
    return ""


def _notification(doc: dict[str, Any]) -> Notification:
    order_id = doc.get("OrderId")
    if not isinstance(order_id, str) or not order_id:
        raise BadRequest("`OrderId` is required and must be a non-empty string")
    origin = doc.get("Origin")
    if not isinstance(origin, dict) or not isinstance(origin.get("Account"), str):
        raise BadRequest("`Origin.Account` is required and must be a string")
    if not isinstance(origin.get("Key"), str | None):
        raise BadRequest("`Origin.Key` must be a string or null")
    for name in _OPTIONAL_TEXT:
        if not isinstance(doc.get(name), str | None):
            raise BadRequest(f"`{name}` must be a string or null, got {_json_type(doc[name])}")
    check_account(origin["Account"])
    check_order_id(order_id)
    ticks = {name: _time_ticks(doc, name) for name in _CHANGE_TIMES}
    return Notification(
        account=origin["Account"],
        domain=doc.get("Domain"),
        order_id=order_id,
        state=doc.get("State"),
        last_state=doc.get("LastState"),
        last_change=doc.get("LastChange"),
        current_change=doc.get("CurrentChange"),
        raw=doc,
        # change_time's rule, on the times just read (normalize compares it with the clock)
        change_ticks=ticks["CurrentChange"]
        if ticks["CurrentChange"] is not None
        else ticks["LastChange"],
    )


def _time_ticks(doc: dict[str, Any], name: str) -> int | None:
    """The ticks of the time at `name`, None when it is absent or null; BadRequest when it is
    not an RFC 3339 date-time."""
    value = doc.get(name)
    if value is None:
        return None
    ticks = iso_ticks(value)
    if ticks is None:
        raise BadRequest(f"`{name}` must be an RFC 3339 date-time, got {_shown(value)}")
    return ticks


def check_account(account: str, field: str = "`Origin.Account`") -> None:
    """BadRequest unless `account` is a VTEX account name (a host name label); the message
    names the account as `field`."""
    if not _ACCOUNT.match(account):
        raise BadRequest(
            f"{field} must be a VTEX account name (letters, digits and inner hyphens, "
            f"at most 63), got {_shown(account)}"
        )


def check_order_id(order_id: str) -> None:
    """BadRequest unless `order_id` is safe as one path segment, a log field and a key part."""
    if len(order_id) > MAX_ORDER_ID_CHARS:
        raise BadRequest(f"`OrderId` is longer than {MAX_ORDER_ID_CHARS} characters")
    found = _ORDER_ID_REFUSED.search(order_id)
    if found or order_id in (".", ".."):
        what = f"the character {found.group()!a}" if found else "a relative path"
        raise BadRequest(f"`OrderId` must not contain {what}, got {_shown(order_id)}")


def _shown(value: str, limit: int = 60) -> str:
    """A value quoted for an error message: ASCII only (no control character reaches a log)."""
    return ascii(value[:limit]) + ("..." if len(value) > limit else "")


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def change_time(n: Notification) -> str | None:
    """The time of the change: CurrentChange, or LastChange where CurrentChange is absent. The
    one rule for the dedupe key, the CloudEvent's `time` and an event's place in its order."""
    return n.current_change if n.current_change is not None else n.last_change


def event_change_time(event: dict[str, Any]) -> str | None:
    """change_time of a normalized event."""
    current = event.get("currentChange")
    return current if current is not None else event.get("lastChange")


def dedupe_key(n: Notification) -> bytes:
    """Same account, Domain, OrderId, State and change time = the same notification."""
    return orjson.dumps([n.account, n.domain, n.order_id, n.state, change_time(n)])


def event_id(n: Notification) -> str:
    """uuid.uuid5(EVENT_ID_NAMESPACE, dedupe key), without the UUID object (a third of the
    hook's own CPU time went there)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + dedupe_key(n)).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def utc_now_iso() -> str:
    """Now, as RFC 3339 UTC with microseconds: 2026-11-27T07:00:00.123456Z."""
    now = time.time_ns() // 1000
    seconds, micros = divmod(now, 1_000_000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{micros:06d}Z"


def normalize(n: Notification, received_at: str) -> dict[str, Any]:
    """The event kept for an accepted notification, with the raw notification beside it.
    BadRequest when its change time is further ahead of `received_at` than the clocks' margin."""
    received = iso_ticks(received_at) if n.change_ticks is not None else None
    if n.change_ticks is not None and received is not None:
        if n.change_ticks > received + MAX_CLOCK_AHEAD_S * TICKS_PER_S:
            raise BadRequest(
                f"the change time {change_time(n)!a} is more than {MAX_CLOCK_AHEAD_S // 3600} h "
                "ahead of the gateway's clock"
            )
    return {
        "id": event_id(n),
        "account": n.account,
        "domain": n.domain,
        "orderId": n.order_id,
        "state": n.state,
        "lastState": n.last_state,
        "lastChange": n.last_change,
        "currentChange": n.current_change,
        "receivedAt": received_at,
        "raw": n.raw,
    }


CLOUDEVENT_TYPE = "vtex.order.status-changed"


def event_source(account: str) -> str:
    """A URI naming the VTEX account: its API host. Ingest takes only host labels as accounts,
    but an event kept by an older gateway may hold any text (`my store`): whatever is not a
    label's is percent-encoded, so `source` is always an RFC 3986 URI."""
    label = account if _ACCOUNT.match(account) else quote(account, safe="")
    return f"https://{label}.vtexcommercestable.com.br"


# What a CloudEvents String must not hold (spec, "Type System"): controls, surrogates and
# noncharacters. `%` is one too here: ingest refuses it in order ids, so an escape is unambiguous.
_NOT_CLOUDEVENT_TEXT = re.compile(
    "[%\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(chr(plane << 16 | 0xFFFE) + chr(plane << 16 | 0xFFFF) for plane in range(17))
    + "]"
)


def cloudevent_text(value: str) -> str:
    """`value` as a CloudEvents String: each character a String must not hold percent-encoded
    as UTF-8 (`%EF%BF%BF` for U+FFFF); any other text unchanged."""
    if _NOT_CLOUDEVENT_TEXT.search(value) is None:
        return value
    return _NOT_CLOUDEVENT_TEXT.sub(_escaped, value)


def _escaped(match: re.Match[str]) -> str:
    return quote(match.group().encode("utf-8", "surrogatepass"), safe="")


def default_data(event: dict[str, Any]) -> dict[str, Any]:
    """The event's data when a subscription has no transform: the normalized event."""
    return {key: value for key, value in event.items() if key != "id"}


# RFC 3339 date-times; the offset's hours and minutes in range (datetime.fromisoformat would
# take "+05:60" as +06:00, which RFC 3339 readers of the CloudEvent's `time` refuse).
_ISO = re.compile(
    r"\A(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)\Z",
    re.I | re.ASCII,
)
TICKS_PER_S = 10_000_000  # VTEX times carry 7 decimals: 100 ns ticks


def iso_ticks(value: object) -> int | None:
    """An RFC 3339 time as 100 ns ticks since the epoch (VTEX's precision), None if not one."""
    match = _ISO.match(value) if isinstance(value, str) else None
    if match is None:
        return None
    whole, fraction, zone = match.groups()
    try:
        moment = datetime.fromisoformat(whole + ("+00:00" if zone.upper() == "Z" else zone))
    except ValueError:
        return None
    fraction_ticks = int((fraction or "0")[:7].ljust(7, "0"))
    return max(0, int(moment.timestamp()) * TICKS_PER_S + fraction_ticks)


def order_key(event: dict[str, Any]) -> str:
    """The order an event belongs to, for per-order delivery: account and order id."""
    return f"{event['account']}:{event['orderId']}"


def received_ms(event: dict[str, Any]) -> int:
    """When the gateway received the event (its `receivedAt`), in Unix ms."""
    received = datetime.fromisoformat(str(event["receivedAt"]).replace("Z", "+00:00"))
    return int(received.timestamp() * 1000)


def occurrence_time(event: dict[str, Any]) -> str:
    """When the change happened (change_time's rule), or when it was received."""
    changed = event_change_time(event)
    if iso_ticks(changed) is not None:
        return str(changed)
    return str(event["receivedAt"])


def cloudevent(event: dict[str, Any], data: Any, traceparent: str = "") -> dict[str, Any]:
    """A CloudEvents 1.0 event for structured mode; with a `traceparent`, the Distributed
    Tracing extension's attribute of that name."""
    envelope = {
        "specversion": "1.0",
        "id": event["id"],
        "source": event_source(event["account"]),
        "type": CLOUDEVENT_TYPE,
        "subject": cloudevent_text(event["orderId"]),
        "time": occurrence_time(event),
        "datacontenttype": "application/json",
        "data": data,
    }
    if traceparent:
        envelope["traceparent"] = traceparent
    return envelope

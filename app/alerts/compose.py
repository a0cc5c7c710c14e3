"""What an alert says: a notification (as alerts.lua queues it) made into a target's body.

Pure functions. "slack" is `{"text": ...}` — what Slack's incoming webhooks, Mattermost, Teams
workflows and Google Chat take — in Slack's mrkdwn, every text from the data escaped (`&`, `<`,
`>`: no `<!channel>`, no forged link) and control characters dropped, so an id or an error
text cannot break or forge the message. "cloudevents" is a CloudEvent of type
`orderhook.alert.<event>`, signed like a delivery.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import msgspec
import orjson

from app.alerts.config import (
    BACKLOG,
    BREAKER_OPEN,
    DEAD_LETTER,
    DISABLED,
    SILENT,
    UNAVAILABLE,
    AlertTarget,
)
from app.events import cloudevent_text

FIRING, RESOLVED, REMINDER = "firing", "resolved", "reminder"
SHOWN_CHARS = 300  # of any one text from the data
CLOUDEVENT_SOURCE = "urn:orderhook"  # without [ops] public_url
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069]+")


class Notification(msgspec.Struct, frozen=True):
    """One notification of a condition: queued by alerts.lua, or made in memory
    (store.unavailable). `since` and `at` are Unix ms."""

    event: str
    status: str
    subject: str
    since: int
    at: int
    kind: str = "subscription"  # or "account", "store"
    details: dict[str, Any] = msgspec.field(default_factory=dict)


def decode(raw: bytes) -> Notification:
    """A queued notification; msgspec.ValidationError / DecodeError if it is not one."""
    return msgspec.json.decode(raw, type=Notification)


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """A text from the data, safe inside mrkdwn: controls out, `&<>` escaped, backticks
    made quotes (the texts go in code spans, where `*` and `_` mean nothing)."""
    flat = _CONTROLS.sub(" ", str(value))[:limit].replace("`", "'")
    return flat.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def when(ms: object) -> str:
    if not isinstance(ms, int | float) or ms <= 0:
        return "unknown"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def link(note: Notification, public_url: str | None) -> str:
    """The dashboard page of the condition: the subscription's, else the dashboard."""
    path = "/ops"
    if note.kind == "subscription":
        path = f"/ops/subscriptions/{quote(note.subject, safe='')}"
    return (public_url or "") + path


def _error(details: Mapping[str, Any]) -> str:
    error = details.get("lastError")
    return f"; last error: `{shown(error)}`" if error else ""


def _disabled(note: Notification) -> tuple[str, str, str]:
    d = note.details
    reason = f" (`{shown(d['reason'])}`)" if d.get("reason") else ""
    return (
        f"subscription `{shown(note.subject)}` is disabled",
        f"It was disabled{reason}{_error(d)}. Its events are kept queued, none is sent.",
        "fix the endpoint, then resume the subscription (or replay its dead letters) "
        "from its page.",
    )


def _breaker(note: Notification) -> tuple[str, str, str]:
    d = note.details
    failing = f", failing since {when(d['failingSinceMs'])}" if d.get("failingSinceMs") else ""
    return (
        f"circuit breaker open for subscription `{shown(note.subject)}`",
        f"{shown(d.get('failures', '?'))} consecutive failures{failing}{_error(d)}. "
        "Deliveries wait; one probe at a time tests the endpoint.",
        "check the endpoint; when it answers, the breaker closes by itself. Or pause the "
        "subscription, or see its dead-letter queue.",
    )


def _backlog(note: Notification) -> tuple[str, str, str]:
    d = note.details
    return (
        f"backlog on subscription `{shown(note.subject)}`",
        f"Its oldest undelivered event is {duration(_number(d.get('oldestAgeS')))} old "
        f"(threshold {duration(_number(d.get('thresholdS')))}); "
        f"{shown(d.get('queued', '?'))} waiting.",
        "check the endpoint and the breaker; an endpoint too slow for the traffic needs a "
        "higher max_in_flight.",
    )


def _dead_letter(note: Notification) -> tuple[str, str, str]:
    d = note.details
    ids = d.get("eventIds") if isinstance(d.get("eventIds"), list) else []
    named = f" (e.g. {', '.join(f'`{shown(i, 80)}`' for i in ids)})" if ids else ""
    return (
        f"dead letters on subscription `{shown(note.subject)}`",
        f"{shown(d.get('newDeadLetters', '?'))} new since the last alert{named}; "
        f"{shown(d.get('deadLetters', '?'))} in its dead-letter queue{_error(d)}.",
        "fix the cause, then replay them from the dead-letter queue (or delete them).",
    )


def _silent(note: Notification) -> tuple[str, str, str]:
    d = note.details
    return (
        f"no notification from VTEX account `{shown(note.subject)}`",
        f"None accepted for {duration(_number(d.get('silentS')))} "
        f"(last: {when(d.get('lastAcceptedMs'))}).",
        "check the account's hook configuration at VTEX and whether the "
        "gateway answers its hooks with 401 or 503 (logs, /metrics).",
    )


def _unavailable(note: Notification) -> tuple[str, str, str]:
    d = note.details
    return (
        f"Redis unreachable from {shown(note.subject)}",
        f"No answer for {duration(_number(d.get('downS')))}: {shown(d.get('reason', '?'))}. "
        "Hooks are answered 503 (VTEX retries them), deliveries wait.",
        "check Redis (is it running, reachable, out of memory?).",
    )


_WORDS: dict[str, Callable[[Notification], tuple[str, str, str]]] = {
    DISABLED: _disabled,
    BREAKER_OPEN: _breaker,
    BACKLOG: _backlog,
    DEAD_LETTER: _dead_letter,
    SILENT: _silent,
    UNAVAILABLE: _unavailable,
}


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def words(note: Notification) -> tuple[str, str, str]:
    """What (a title), the details, and what to do."""
    maker = _WORDS.get(note.event)
    if maker is None:
        return f"{shown(note.event)} on `{shown(note.subject)}`", "", ""
    return maker(note)


def slack_text(note: Notification, public_url: str | None) -> str:
    what, details, todo = words(note)
    url = shown(link(note, public_url), 2000)
    if note.status == RESOLVED:
        lasted = duration((note.at - note.since) / 1000)
        return f":white_check_mark: *Resolved:* {what} (since {when(note.since)}, {lasted}).\n{url}"
    head = ":warning: *Still:*" if note.status == REMINDER else ":rotating_light: *orderhook:*"
    return (
        f"{head} {what}, since {when(note.since)}.\n{details}\n*What to do:* {todo}\n"
        f"Dashboard: {url}"
    )


def cloudevent(note: Notification, msg_id: str, public_url: str | None) -> dict[str, Any]:
    what, details, todo = words(note)
    return {
        "specversion": "1.0",
        "id": msg_id,
        "source": public_url or CLOUDEVENT_SOURCE,
        "type": f"orderhook.alert.{note.event}",
        "subject": cloudevent_text(note.subject),
        "time": datetime.fromtimestamp(note.at / 1000, UTC).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": {
            "event": note.event,
            "status": note.status,
            "subject": note.subject,
            "since": when(note.since),
            "details": note.details,
            "link": link(note, public_url),
            "summary": _CONTROLS.sub(" ", f"{what}. {details} What to do: {todo}"),
        },
    }


def body(target: AlertTarget, note: Notification, msg_id: str, public_url: str | None) -> bytes:
    """The request body for `target`."""
    if target.format == "cloudevents":
        return orjson.dumps(cloudevent(note, msg_id, public_url))
    return orjson.dumps({"text": slack_text(note, public_url)})

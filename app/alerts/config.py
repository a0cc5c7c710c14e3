"""Alert targets: the `[[alerts]]` tables of the config file, checked and resolved.

A target is where notifications of the gateway's own trouble go (a Slack-format incoming
webhook, or a signed CloudEvent endpoint), which of the EVENTS it wants, and its thresholds.
Its URL and secret may carry credentials: neither is ever shown (the repr hides them; logs
show the URL's origin only).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import msgspec
from starlette.datastructures import Secret

from app.signing import secret_key
from app.store.schema import RESERVED_STAT_OWNERS
from app.subscriptions.spec import url_problem

DISABLED = "subscription.disabled"
BREAKER_OPEN = "subscription.breaker_open"
BACKLOG = "subscription.backlog"
DEAD_LETTER = "subscription.dead_letter"
SILENT = "ingest.silent"
UNAVAILABLE = "store.unavailable"
EVENTS = (DISABLED, BREAKER_OPEN, BACKLOG, DEAD_LETTER, SILENT, UNAVAILABLE)

DEFAULT_BACKLOG_AGE_S = 300.0
DEFAULT_SILENT_S = 1800.0
DEFAULT_REPEAT_S = 3600.0
MAX_THRESHOLD_S = 30 * 24 * 3600.0  # a month: longer is no alert at all
MIN_REPEAT_S = 1.0
_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}\Z")

Format = Literal["slack", "cloudevents"]


class AlertSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    url: str | None = None
    url_env: str | None = None
    format: Format = "slack"
    secret: str | None = None
    secret_env: str | None = None
    events: list[str] = msgspec.field(default_factory=lambda: list(EVENTS))
    backlog_age_s: float = DEFAULT_BACKLOG_AGE_S
    silent_s: float = DEFAULT_SILENT_S
    repeat_s: float = DEFAULT_REPEAT_S


@dataclass(frozen=True)
class AlertTarget:
    id: str
    url: str = field(repr=False)
    format: Format
    events: frozenset[str]
    backlog_age_s: float = DEFAULT_BACKLOG_AGE_S
    silent_s: float = DEFAULT_SILENT_S
    repeat_s: float = DEFAULT_REPEAT_S
    secret: Secret | None = None

    def wants(self, event: str) -> bool:
        return event in self.events

    def signing_keys(self) -> list[bytes]:
        return [secret_key(str(self.secret))] if self.secret is not None else []


class AlertSpecError(ValueError):
    """What is wrong with one `[[alerts]]` table: `key` (within it) and what was expected."""

    def __init__(self, key: str, expected: str) -> None:
        super().__init__(f"`{key}` {expected}")
        self.key = key
        self.expected = expected


def resolve_target(spec: AlertSpec, env: Mapping[str, str]) -> AlertTarget:
    """The target of a spec, its `*_env` names looked up in `env`; AlertSpecError if wrong
    (never quoting the URL or the secret)."""
    if not _ID.match(spec.id):
        raise AlertSpecError("id", "must be 1 to 63 of a-z, 0-9, - and _, starting alphanumeric")
    if spec.id in RESERVED_STAT_OWNERS:
        raise AlertSpecError("id", f"must not be {spec.id!r}: the stats' own counters use it")
    url = _one_of(spec.url, spec.url_env, "url", env)
    if url is None:
        raise AlertSpecError("url", "or `url_env` is needed")
    if (problem := url_problem(url)) is not None:
        raise AlertSpecError("url_env" if spec.url_env else "url", problem)
    secret = _one_of(spec.secret, spec.secret_env, "secret", env)
    _check_secret(spec, secret)
    unknown = sorted(set(spec.events) - set(EVENTS))
    if unknown or not spec.events:
        raise AlertSpecError("events", f"must be a non-empty list of {', '.join(EVENTS)}")
    for key in ("backlog_age_s", "silent_s", "repeat_s"):
        if not MIN_REPEAT_S <= getattr(spec, key) <= MAX_THRESHOLD_S:
            raise AlertSpecError(key, f"must be a number of seconds from 1 to {MAX_THRESHOLD_S:g}")
    return AlertTarget(
        spec.id,
        url,
        spec.format,
        frozenset(spec.events),
        spec.backlog_age_s,
        spec.silent_s,
        spec.repeat_s,
        Secret(secret) if secret else None,
    )


def _one_of(value: str | None, name: str | None, key: str, env: Mapping[str, str]) -> str | None:
    if value is not None and name is not None:
        raise AlertSpecError(key, f"and `{key}_env` exclude each other: give one")
    if name is None:
        return value
    if not env.get(name):
        raise AlertSpecError(f"{key}_env", f"names {name}, which is not set or empty")
    return env[name]


def _check_secret(spec: AlertSpec, secret: str | None) -> None:
    key = "secret_env" if spec.secret_env else "secret"
    if spec.format == "cloudevents" and secret is None:
        raise AlertSpecError("secret", 'or `secret_env` is needed with format = "cloudevents"')
    if spec.format == "slack" and secret is not None:
        raise AlertSpecError(key, 'is for format = "cloudevents" (a Slack URL is its secret)')
    if secret is not None:
        try:
            secret_key(secret)
        except ValueError as exc:
            raise AlertSpecError(key, f"is not a valid Standard Webhooks secret: {exc}") from None

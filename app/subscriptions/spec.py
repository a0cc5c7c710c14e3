"""A subscription's spec: the `[[subscriptions]]` table of the config file and the admin API's
JSON body (same field names, same validation, same messages), and `Subscription`, what the
router and the deliverer use once it is resolved.

`resolve` checks a spec and compiles its filter and transform; its secret values come apart,
as a `Keyring` (app/subscriptions/secrets.py finds them: the file, the environment, or sealed
in Redis). Every problem is a SpecError naming the field; the config loader and the admin API
each word it for their reader.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
from starlette.datastructures import Secret

from app.filters import (
    SINGLE_FIRE_RETENTION_S,
    EveryEvent,
    Expression,
    ExpressionError,
    Filter,
    FromOrders,
    FromWorkflow,
    Limits,
    compile_expression,
)
from app.outbound import OutboundAuth
from app.redaction import shown_url
from app.retry import DEFAULT_RETRY_SCHEDULE_S
from app.signing import secret_key
from app.subscriptions.auth import AuthSpec, HeaderSpec, OAuth2Spec, outbound, without_secret

DEFAULT_DELIVERY_TIMEOUT_S = 10.0
DEFAULT_MAX_IN_FLIGHT = 8
DEFAULT_VISIBILITY_TIMEOUT_S = 240.0  # VTEX Feed v3's default
DEFAULT_PULL_RETENTION_S = 4 * 24 * 3600.0  # VTEX Feed v3: 4 to 14 days
MAX_PULL_RETENTION_S = 14 * 24 * 3600.0
MAX_REORDER_WINDOW_S = 3600.0
SUBSCRIPTION_ID = re.compile(r"\A[a-z0-9-]{1,64}\Z")
# Upper bounds: a value past them is a mistake, and some would overflow a time in ms.
MAX_TIMEOUT_S = 3600.0
MAX_DELAY_S = 30 * 24 * 3600.0  # a retry's delay, a breaker's cooldown
MAX_DISABLE_AFTER_S = 365 * 24 * 3600.0
MAX_IN_FLIGHT = 10_000
MAX_PER_SECOND = 1_000_000.0
MAX_BREAKER_THRESHOLD = 1_000_000
# The fields that hold secret values (or name the environment variable that does).
SECRET_FIELDS = ("secret", "secret_env", "token", "token_env")


class SpecError(Exception):
    """A spec's field is wrong: `field` (dotted, e.g. "filter.expression") `expected`."""

    def __init__(self, field: str, expected: str) -> None:
        super().__init__(f"`{field}` {expected}")
        self.field = field
        self.expected = expected


class FromWorkflowSpec(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type", tag="FromWorkflow"
):
    status: list[str | None]
    disableSingleFire: bool | None = None  # noqa: N815  (refused with VTEX's reason, not unknown)


class FromOrdersSpec(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type", tag="FromOrders"
):
    expression: str
    disableSingleFire: bool = False  # noqa: N815  (VTEX's name and meaning: app/filters.py)
    single_fire_retention_s: int = SINGLE_FIRE_RETENTION_S


class SubscriptionSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    id: str
    url: str | None = None
    mode: Literal["push", "pull"] = "push"
    token: str | None = None
    token_env: str | None = None
    visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT_S
    retention: float = DEFAULT_PULL_RETENTION_S
    max_per_second: float = 0  # deliveries a second, across every process; 0: no limit
    breaker_threshold: int = 10  # consecutive failures that open the circuit breaker
    breaker_cooldown: float = 30.0  # seconds, doubling on each failed probe ...
    breaker_cooldown_max: float = 3600.0  # ... up to this
    disable_after: float = 5 * 24 * 3600.0  # failing this long without a success disables
    secret: str | list[str] | None = None
    secret_env: str | None = None
    filter: FromWorkflowSpec | FromOrdersSpec | None = None
    transform: str | None = None
    retry_schedule: list[float] | None = None
    timeout: float = DEFAULT_DELIVERY_TIMEOUT_S
    accounts: list[str] | None = None
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    ordering: Literal["none", "per-order"] = "none"
    reorder_window: float = 0.0  # per-order: hold each event this long, to sort late arrivals
    drop_stale: bool = False  # per-order: skip an event older than the last one delivered
    headers: HeaderSpec | None = (
        None  # static headers of every delivery (app/subscriptions/auth.py)
    )
    auth: AuthSpec | None = None  # Basic, Bearer or OAuth2 client credentials

    def public(self) -> SubscriptionSpec:
        """This spec without its secret values: what is stored in clear and shown. Header
        values are all taken for secrets (an API key), their names kept in StoredSecrets; of
        the URL only its origin (its userinfo, path or query may hold a credential:
        app/redaction.py), the whole kept as a secret."""
        auth = without_secret(self.auth) if self.auth is not None else None
        url = shown_url(self.url, "ops") if self.url else self.url
        return msgspec.structs.replace(
            self, **dict.fromkeys(SECRET_FIELDS), headers=None, auth=auth, url=url
        )


@dataclass(frozen=True)
class Keyring:
    """A subscription's secret values: its signing secrets (the first is the newest), those
    rotated out that still sign until their end (ms), and a pull subscription's token."""

    secrets: tuple[Secret, ...] = ()
    retiring: tuple[tuple[Secret, int], ...] = ()
    token: Secret | None = None
    headers: tuple[tuple[str, Secret], ...] = ()  # static headers, by name
    auth: Secret | None = None  # the auth's secret (password, token or client secret)
    url: Secret | None = None  # a push subscription's URL (its path or query may hold a token)


@dataclass(frozen=True)
class Subscription:
    """A downstream system: where its events go, which ones, and how they are retried."""

    id: str
    url: str
    secrets: tuple[Secret, ...]
    filter: Filter = EveryEvent()
    transform: Expression | None = None
    retry_schedule_s: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE_S
    timeout_s: float = DEFAULT_DELIVERY_TIMEOUT_S
    accounts: frozenset[str] | None = None
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    mode: Literal["push", "pull"] = "push"
    token: Secret | None = None  # a pull subscription's own bearer token
    visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S
    retention_s: float = DEFAULT_PULL_RETENTION_S
    max_per_second: float = 0
    breaker_threshold: int = 10
    breaker_cooldown_s: float = 30.0
    breaker_cooldown_max_s: float = 3600.0
    disable_after_s: float = 5 * 24 * 3600.0
    ordering: Literal["none", "per-order"] = "none"
    reorder_window_s: float = 0.0
    drop_stale: bool = False
    retiring: tuple[tuple[Secret, int], ...] = ()  # rotated-out secrets, signing until (ms)
    version: int = 0  # the catalog's version of it (0: not from the catalog)
    # why this process cannot find its secret values (it routes, but does not deliver, them)
    secrets_problem: str | None = None
    outbound: OutboundAuth | None = None  # headers and auth its deliveries carry

    @property
    def ordered(self) -> bool:
        return self.ordering == "per-order"

    def breaker(self) -> list[int]:
        """For the settle script: threshold, cooldown ms, max cooldown ms, disable after ms."""
        return [
            self.breaker_threshold,
            int(self.breaker_cooldown_s * 1000),
            int(self.breaker_cooldown_max_s * 1000),
            int(self.disable_after_s * 1000),
        ]

    def wants_account(self, account: str) -> bool:
        return self.accounts is None or account in self.accounts

    def signing_keys(self, now_s: float | None = None) -> list[bytes]:
        """The keys that sign a delivery now: every current secret, and each rotated-out one
        until its grace ends."""
        now_ms = int((time.time() if now_s is None else now_s) * 1000)
        retiring = [secret for secret, until_ms in self.retiring if now_ms < until_ms]
        return [secret_key(str(secret)) for secret in (*self.secrets, *retiring)]


def resolve(
    spec: SubscriptionSpec, keyring: Callable[[], Keyring], limits: Limits, version: int = 0
) -> Subscription:
    """The subscription of a spec, its expressions compiled; SpecError naming the first field
    that is wrong (never quoting a URL or a secret: they may carry credentials). `keyring`
    finds its secret values (checked after the fields before them)."""
    if not SUBSCRIPTION_ID.match(spec.id):
        raise SpecError("id", "must match [a-z0-9-]+ (at most 64 characters)")
    if spec.mode == "pull":
        return _resolve_pull(spec, keyring, limits, version)
    url = spec.url or ""
    if (wrong := url_problem(url)) is not None:
        raise SpecError("url", wrong)
    if spec.timeout <= 0 or spec.max_in_flight < 1:
        raise SpecError("timeout" if spec.timeout <= 0 else "max_in_flight", "must be positive")
    if spec.timeout > MAX_TIMEOUT_S or spec.max_in_flight > MAX_IN_FLIGHT:
        name, most = (
            ("timeout", f"{MAX_TIMEOUT_S:g} seconds")
            if spec.timeout > MAX_TIMEOUT_S
            else ("max_in_flight", str(MAX_IN_FLIGHT))
        )
        raise SpecError(name, f"must be at most {most}")
    schedule = DEFAULT_RETRY_SCHEDULE_S if spec.retry_schedule is None else spec.retry_schedule
    if any(not 0 <= delay <= MAX_DELAY_S for delay in schedule):
        raise SpecError("retry_schedule", f"must hold seconds from 0 to {MAX_DELAY_S:g}")
    keys = keyring()
    return Subscription(
        id=spec.id,
        url=str(keys.url) if keys.url is not None else url,
        secrets=keys.secrets,
        retiring=keys.retiring,
        outbound=_outbound(spec, keys),
        version=version,
        filter=_compile_filter(spec.filter, limits),
        transform=_compile(spec.transform, "transform", limits) if spec.transform else None,
        retry_schedule_s=tuple(float(d) for d in schedule),
        timeout_s=spec.timeout,
        accounts=frozenset(spec.accounts) if spec.accounts is not None else None,
        max_in_flight=spec.max_in_flight,
        **_breaker(spec),
        **_ordering(spec),
    )


def _outbound(spec: SubscriptionSpec, keys: Keyring) -> OutboundAuth | None:
    if isinstance(spec.auth, OAuth2Spec) and (wrong := url_problem(spec.auth.token_url)):
        raise SpecError("auth.token_url", wrong)
    try:
        return outbound(dict(keys.headers), spec.auth, keys.auth)
    except ValueError as exc:  # its words name the header or the auth's field, never a value
        raise SpecError("headers" if str(exc).startswith("header") else "auth", str(exc)) from None


def url_problem(url: str) -> str | None:
    """What is wrong with a subscriber URL, in words that quote no part of it; None if fine."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is not a number from 0 to 65535, a broken IPv6 literal
        return "must have a port from 1 to 65535 (and brackets around an IPv6 address)"
    if parts.scheme not in ("http", "https"):
        return "must be an http or https URL"
    if not parts.hostname:
        return "must name a host"
    if port == 0:
        return "must have a port from 1 to 65535"
    if any(char.isspace() or not char.isprintable() for char in url):
        return "must not contain spaces or control characters (percent-encode them)"
    return None


def check_signing_secrets(values: list[str]) -> None:
    """SpecError unless every value is a Standard Webhooks secret (and there is one)."""
    for value in values or [""]:
        try:
            secret_key(value)
        except ValueError as exc:
            raise SpecError("secret", f"is not a valid Standard Webhooks secret: {exc}") from None


def _ordering(spec: SubscriptionSpec) -> dict[str, Any]:
    if spec.ordering != "per-order" and (spec.reorder_window or spec.drop_stale):
        name = "reorder_window" if spec.reorder_window else "drop_stale"
        raise SpecError(name, 'needs ordering = "per-order"')
    if not 0 <= spec.reorder_window <= MAX_REORDER_WINDOW_S:
        raise SpecError("reorder_window", f"must be from 0 to {MAX_REORDER_WINDOW_S:g} seconds")
    return {
        "ordering": spec.ordering,
        "reorder_window_s": spec.reorder_window,
        "drop_stale": spec.drop_stale,
    }


def _breaker(spec: SubscriptionSpec) -> dict[str, Any]:
    if not 1 <= spec.breaker_threshold <= MAX_BREAKER_THRESHOLD:
        raise SpecError("breaker_threshold", f"must be from 1 to {MAX_BREAKER_THRESHOLD}")
    if not 0 < spec.breaker_cooldown <= spec.breaker_cooldown_max:
        raise SpecError("breaker_cooldown", "must be positive and at most breaker_cooldown_max")
    if spec.breaker_cooldown_max > MAX_DELAY_S:
        raise SpecError("breaker_cooldown_max", f"must be at most {MAX_DELAY_S:g} seconds")
    if not 0 < spec.disable_after <= MAX_DISABLE_AFTER_S:
        raise SpecError("disable_after", f"must be positive and at most {MAX_DISABLE_AFTER_S:g}")
    if not 0 <= spec.max_per_second <= MAX_PER_SECOND:
        raise SpecError("max_per_second", f"must be 0 (no limit) or up to {MAX_PER_SECOND:g}")
    return {
        "breaker_threshold": spec.breaker_threshold,
        "breaker_cooldown_s": spec.breaker_cooldown,
        "breaker_cooldown_max_s": spec.breaker_cooldown_max,
        "disable_after_s": spec.disable_after,
        "max_per_second": spec.max_per_second,
    }


def _resolve_pull(
    spec: SubscriptionSpec, keyring: Callable[[], Keyring], limits: Limits, version: int
) -> Subscription:
    """A Feed v3-style subscription: consumers take its events with GET /feed/{id}."""
    if spec.url is not None:
        raise SpecError("url", 'is not used by a pull subscription (mode = "pull")')
    if spec.ordering != "none" or spec.reorder_window or spec.drop_stale:
        raise SpecError(
            "ordering", "is for push subscriptions; a feed consumer orders what it takes"
        )
    token = keyring().token
    if not 0 < spec.visibility_timeout <= MAX_DELAY_S:
        raise SpecError("visibility_timeout", f"must be positive and at most {MAX_DELAY_S:g}")
    if not 0 < spec.retention <= MAX_PULL_RETENTION_S:
        raise SpecError("retention", "must be positive and at most 1209600 seconds (14 days)")
    return Subscription(
        id=spec.id,
        url="",
        secrets=(),
        filter=_compile_filter(spec.filter, limits),
        transform=_compile(spec.transform, "transform", limits) if spec.transform else None,
        accounts=frozenset(spec.accounts) if spec.accounts is not None else None,
        mode="pull",
        token=token,
        version=version,
        visibility_timeout_s=spec.visibility_timeout,
        retention_s=spec.retention,
    )


def _compile_filter(spec: FromWorkflowSpec | FromOrdersSpec | None, limits: Limits) -> Filter:
    if spec is None:
        return EveryEvent()
    if isinstance(spec, FromWorkflowSpec):
        if spec.disableSingleFire is not None:
            raise SpecError(
                "filter.disableSingleFire", "is for FromOrders filters only (as in VTEX)"
            )
        return FromWorkflow(frozenset(spec.status))
    if spec.single_fire_retention_s < 1:
        raise SpecError("filter.single_fire_retention_s", "must be a positive number of seconds")
    expression = _compile(spec.expression, "filter.expression", limits)
    return FromOrders(expression, 0 if spec.disableSingleFire else spec.single_fire_retention_s)


def _compile(source: str, field: str, limits: Limits) -> Expression:
    try:
        return compile_expression(source, limits)
    except ExpressionError as exc:
        raise SpecError(field, f"is not valid JSONata: {exc}") from None

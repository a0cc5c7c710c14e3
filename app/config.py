"""Settings: one immutable object built at start-up from the TOML file and the environment.

The file holds what the gateway does (sources, limits); the environment holds infrastructure
and secrets (`REDIS_URL`, `ORDERHOOK_DATA_DIR`, `ORDERHOOK_ADMIN_TOKEN`, and any variable a
source names with `auth_token_env`). Every error names the file, the key and what was expected.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
from starlette.datastructures import Secret

from app.alerts.config import AlertSpec, AlertSpecError, AlertTarget, resolve_target
from app.errors import BadRequest, ConfigError
from app.events import check_account
from app.filters import (
    EVALUATION_TIMEOUT_MS,
    MAX_JSONATA_TIMEOUT_MS,
    Limits,
)
from app.sealing import ENV_KEY, Sealer
from app.subscriptions.secrets import from_file
from app.subscriptions.spec import SpecError, Subscription, SubscriptionSpec, resolve
from app.vtex.urls import base_url_problem

DEFAULT_MAX_BODY_BYTES = 256 * 1024
DEFAULT_DEDUPE_WINDOW_S = 7 * 24 * 3600
DEFAULT_BODY_TIMEOUT_S = 10.0  # a hook body is a few hundred bytes; a trickle is an attack
DEFAULT_KEY_PREFIX = "orderhook"
DEFAULT_DATA_DIR = "./data"
DEFAULT_REDIS_TIMEOUT_S = 2.0
DEFAULT_UNREACHABLE_WARNING_S = 30.0  # `serve` warns this often while Redis does not answer
DEFAULT_HEADER_TIMEOUT_S = 10.0  # from connecting (or the last answer) to a request's headers
DEFAULT_KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this (uvicorn's)
DEFAULT_MAX_CONNECTIONS_PER_CLIENT = 256  # per peer address and process; 0: no cap
ANY_ACCOUNT = "*"
DEFAULT_VTEX_BASE_URL = "https://{account}.vtexcommercestable.com.br"
DEFAULT_ROUTER_CLAIM_IDLE_S = 30.0
DEFAULT_LOG_RETENTION_S = 7 * 24 * 3600
DEFAULT_SESSION_MAX_AGE_S = 12 * 3600
DEFAULT_SIGN_IN_FAILURES_PER_CLIENT = 10
DEFAULT_SIGN_IN_FAILURES_TOTAL = 300
DEFAULT_DASHBOARD_REFRESH_S = 5.0
DEFAULT_ALERT_CHECK_S = 5.0  # each process evaluates the alert conditions this often
DEFAULT_ALERT_UNAVAILABLE_S = 30.0  # Redis silent this long: store.unavailable, from memory

AppendFsync = Literal["always", "everysec", "no"]


class _SourceFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    account: str
    auth_header: str
    auth_token: str | None = None
    auth_token_env: str | None = None
    app_key_env: str | None = None  # VTEX API credentials: hook registration, enrichment
    app_token_env: str | None = None
    enrich: bool = False  # fetch the full order (Get Order) for every event of this source
    feed_backup: bool = False  # also poll this account's Feed v3 for what the hook missed


class _VtexFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    base_url: str = DEFAULT_VTEX_BASE_URL
    public_url: str | None = None  # where VTEX reaches this gateway, for hook registration
    max_requests_per_minute: int = 6000  # VTEX's limit per account, for all processes
    enrich_give_up_s: float = 3600.0  # then an event is routed without its order, marked
    feed_poll_s: float = 5.0  # between Feed v3 polls when the feed was empty


class _StoreFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    key_prefix: str = DEFAULT_KEY_PREFIX
    timeout_s: float = DEFAULT_REDIS_TIMEOUT_S
    embedded_appendfsync: AppendFsync = "always"
    # Start although Redis hides its maxmemory-policy: the operator has checked it is noeviction.
    assume_noeviction: bool = False
    unreachable_warning_s: float = DEFAULT_UNREACHABLE_WARNING_S


class _ServerFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    keep_alive_s: int = DEFAULT_KEEP_ALIVE_S
    max_connections_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT


class _IngestFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    dedupe_window_s: int = DEFAULT_DEDUPE_WINDOW_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S


class _DeliveryFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    router_claim_idle_s: float = DEFAULT_ROUTER_CLAIM_IDLE_S
    # One evaluation of a filter or transform; also the longest it may hold the event loop.
    jsonata_timeout_ms: int = EVALUATION_TIMEOUT_MS


class _OpsFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    log_retention_s: int = DEFAULT_LOG_RETENTION_S
    session_max_age_s: int = DEFAULT_SESSION_MAX_AGE_S  # a dashboard sign-in lasts this long
    sign_in_failures_per_client: int = DEFAULT_SIGN_IN_FAILURES_PER_CLIENT  # per window ...
    sign_in_failures_total: int = DEFAULT_SIGN_IN_FAILURES_TOTAL  # ... then 429 till it ends
    dashboard_refresh_s: float = DEFAULT_DASHBOARD_REFRESH_S  # while no one types in it
    public_url: str | None = None  # the dashboard's base URL, for the links in alerts
    alert_check_s: float = DEFAULT_ALERT_CHECK_S
    alert_unavailable_s: float = DEFAULT_ALERT_UNAVAILABLE_S


class _ConfigFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    allow_networks: list[str] = msgspec.field(default_factory=list)
    sources: list[_SourceFile] = msgspec.field(default_factory=list)
    subscriptions: list[SubscriptionSpec] = msgspec.field(default_factory=list)
    alerts: list[AlertSpec] = msgspec.field(default_factory=list)
    store: _StoreFile = msgspec.field(default_factory=_StoreFile)
    server: _ServerFile = msgspec.field(default_factory=_ServerFile)
    ingest: _IngestFile = msgspec.field(default_factory=_IngestFile)
    delivery: _DeliveryFile = msgspec.field(default_factory=_DeliveryFile)
    ops: _OpsFile = msgspec.field(default_factory=_OpsFile)
    vtex: _VtexFile = msgspec.field(default_factory=_VtexFile)


@dataclass(frozen=True)
class Source:
    """A VTEX account allowed to post, and the static header VTEX sends for it."""

    account: str
    auth_header: str
    auth_token: Secret
    app_key: Secret | None = None
    app_token: Secret | None = None
    enrich: bool = False
    feed_backup: bool = False

    def allows(self, account: str) -> bool:
        return self.account in (ANY_ACCOUNT, account)


def source_for(sources: Sequence[Source], account: str) -> Source | None:
    """The source of an account: its own entry first, else a "*" one."""
    exact = [s for s in sources if s.account == account]
    candidates = exact or [s for s in sources if s.allows(account)]
    return candidates[0] if candidates else None


@dataclass(frozen=True)
class Settings:
    sources: tuple[Source, ...] = ()
    subscriptions: tuple[Subscription, ...] = ()
    # As written (app/subscriptions/apply.py); their secrets in clear: never in the repr.
    subscription_specs: tuple[SubscriptionSpec, ...] = field(default=(), repr=False)
    allow_networks: tuple[IPv4Network | IPv6Network, ...] = ()
    router_claim_idle_s: float = DEFAULT_ROUTER_CLAIM_IDLE_S
    redis_url: str | None = None
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    admin_token: Secret | None = None
    ops_token: Secret | None = None
    log_retention_s: int = DEFAULT_LOG_RETENTION_S
    session_max_age_s: int = DEFAULT_SESSION_MAX_AGE_S
    sign_in_failures_per_client: int = DEFAULT_SIGN_IN_FAILURES_PER_CLIENT
    sign_in_failures_total: int = DEFAULT_SIGN_IN_FAILURES_TOTAL
    dashboard_refresh_s: float = DEFAULT_DASHBOARD_REFRESH_S
    alerts: tuple[AlertTarget, ...] = ()
    ops_public_url: str | None = None  # [ops] public_url: base of the dashboard links
    alert_check_s: float = DEFAULT_ALERT_CHECK_S
    alert_unavailable_s: float = DEFAULT_ALERT_UNAVAILABLE_S
    vtex_base_url: str = DEFAULT_VTEX_BASE_URL
    public_url: str | None = None
    vtex_max_requests_per_minute: int = 6000
    enrich_give_up_s: float = 3600.0
    feed_poll_s: float = 5.0
    key_prefix: str = DEFAULT_KEY_PREFIX
    redis_timeout_s: float = DEFAULT_REDIS_TIMEOUT_S
    embedded_appendfsync: AppendFsync = "always"
    assume_noeviction: bool = False
    unreachable_warning_s: float = DEFAULT_UNREACHABLE_WARNING_S
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    keep_alive_s: int = DEFAULT_KEEP_ALIVE_S
    max_connections_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    dedupe_window_s: int = DEFAULT_DEDUPE_WINDOW_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    jsonata_limits: Limits = Limits()
    secret_key: Secret | None = None  # ORDERHOOK_SECRET_KEY: seals secrets kept in Redis
    # The environment the settings were read from: a subscription's `*_env` names are looked
    # up in it when the catalog is read (app/subscriptions/live.py).
    env: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    config_path: Path | None = field(default=None, compare=False)

    @property
    def watched_accounts(self) -> frozenset[str]:
        """The accounts `[[sources]]` name (not `*`): those ingest.silent watches."""
        return frozenset(s.account for s in self.sources if s.account != ANY_ACCOUNT)


def load_settings(path: str | Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from the file at `path` (or `ORDERHOOK_CONFIG`) and the environment."""
    env = os.environ if env is None else env
    path = path or env.get("ORDERHOOK_CONFIG") or None
    parsed = _read_file(Path(path)) if path else _ConfigFile()
    where = str(path) if path else "the built-in defaults"
    _check_limits(parsed, where)
    return Settings(
        sources=tuple(_resolve_source(s, i, where, env) for i, s in enumerate(parsed.sources)),
        subscriptions=_resolve_subscriptions(
            parsed.subscriptions, where, env, Limits(parsed.delivery.jsonata_timeout_ms)
        ),
        subscription_specs=tuple(parsed.subscriptions),
        jsonata_limits=Limits(parsed.delivery.jsonata_timeout_ms),
        allow_networks=_networks(parsed.allow_networks, where),
        router_claim_idle_s=parsed.delivery.router_claim_idle_s,
        redis_url=_redis_url(env.get("REDIS_URL") or None),
        data_dir=Path(env.get("ORDERHOOK_DATA_DIR") or DEFAULT_DATA_DIR),
        admin_token=_secret(env.get("ORDERHOOK_ADMIN_TOKEN")),
        ops_token=_secret(env.get("ORDERHOOK_OPS_TOKEN")),
        secret_key=_secret_key(env),
        env=env,
        log_retention_s=parsed.ops.log_retention_s,
        session_max_age_s=parsed.ops.session_max_age_s,
        sign_in_failures_per_client=parsed.ops.sign_in_failures_per_client,
        sign_in_failures_total=parsed.ops.sign_in_failures_total,
        dashboard_refresh_s=parsed.ops.dashboard_refresh_s,
        alerts=_resolve_alerts(parsed.alerts, where, env),
        ops_public_url=_public_url(parsed.ops.public_url, where),
        alert_check_s=parsed.ops.alert_check_s,
        alert_unavailable_s=parsed.ops.alert_unavailable_s,
        vtex_base_url=parsed.vtex.base_url,
        public_url=parsed.vtex.public_url,
        vtex_max_requests_per_minute=parsed.vtex.max_requests_per_minute,
        enrich_give_up_s=parsed.vtex.enrich_give_up_s,
        feed_poll_s=parsed.vtex.feed_poll_s,
        key_prefix=parsed.store.key_prefix,
        redis_timeout_s=parsed.store.timeout_s,
        embedded_appendfsync=parsed.store.embedded_appendfsync,
        assume_noeviction=parsed.store.assume_noeviction,
        unreachable_warning_s=parsed.store.unreachable_warning_s,
        header_timeout_s=parsed.server.header_timeout_s,
        keep_alive_s=parsed.server.keep_alive_s,
        max_connections_per_client=parsed.server.max_connections_per_client,
        max_body_bytes=parsed.ingest.max_body_bytes,
        dedupe_window_s=parsed.ingest.dedupe_window_s,
        body_timeout_s=parsed.ingest.body_timeout_s,
        config_path=Path(path) if path else None,
    )


def _networks(cidrs: list[str], where: str) -> tuple[IPv4Network | IPv6Network, ...]:
    try:
        return tuple(ip_network(cidr, strict=False) for cidr in cidrs)
    except ValueError as exc:
        raise ConfigError(f"config {where}: `allow_networks` holds a bad CIDR: {exc}") from None


def _redis_url(url: str | None) -> str | None:
    """REDIS_URL, if the Redis client can read it; the error quotes no part of it (it may hold
    a password)."""
    if url is None:
        return None
    try:
        scheme, _ = urlsplit(url).scheme, urlsplit(url).port
    except ValueError:
        raise ConfigError("REDIS_URL's port must be a number from 0 to 65535") from None
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError("REDIS_URL must start with redis://, rediss:// or unix://")
    return url


def _secret_key(env: Mapping[str, str]) -> Secret | None:
    """ORDERHOOK_SECRET_KEY, checked now (ConfigError, one line, if it is not a key)."""
    Sealer.from_env(env)
    return _secret(env.get(ENV_KEY))


def _secret(value: str | None) -> Secret | None:
    return Secret(value) if value else None


def _read_file(path: Path) -> _ConfigFile:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot read the file: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path}: not valid TOML: {exc}") from exc
    if (where := _non_finite_number(raw)) is not None:
        raise ConfigError(f"config {path}: `{where}` must be a finite number, not inf or nan")
    try:
        return msgspec.convert(raw, type=_ConfigFile)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config {path}: {exc}{_top_level_hint(str(exc))}") from exc


_UNKNOWN_FIELD = re.compile(
    r"unknown field `(?P<key>.*)` - at `\$\.(?P<table>\w+)(?P<item>\[\d+\])?`$"
)


def _top_level_hint(error: str) -> str:
    """For an unknown key in a table that is a top-level key: TOML put it in that table because
    it was written after the table's header."""
    found = _UNKNOWN_FIELD.search(error)
    if found is None or found["key"] not in _ConfigFile.__struct_fields__:
        return ""
    header = f"[[{found['table']}]]" if found["item"] else f"[{found['table']}]"
    return (
        f"; `{found['key']}` is a top-level key: write it above the first table, since TOML "
        f"puts every key after a {header} header into that table"
    )


def _non_finite_number(doc: dict[str, Any]) -> str | None:
    """The key of the first inf or nan in a parsed file: TOML has them, no setting takes them
    (an infinite cooldown or a nan delay would pass every `> 0` check and fail in use)."""
    pending: list[tuple[str, Any]] = [("", doc)]
    while pending:
        where, value = pending.pop(0)  # breadth first, each table in the file's order
        if isinstance(value, float) and not math.isfinite(value):
            return where
        if isinstance(value, dict):
            pending += [(f"{where}.{key}".lstrip("."), item) for key, item in value.items()]
        elif isinstance(value, list):
            pending += [(f"{where}[{i}]", item) for i, item in enumerate(value)]
    return None


def _check_limits(parsed: _ConfigFile, where: str) -> None:
    checks = [
        (parsed.ingest.max_body_bytes >= 1024, "ingest.max_body_bytes", "an integer >= 1024"),
        (parsed.ingest.dedupe_window_s >= 1, "ingest.dedupe_window_s", "an integer >= 1"),
        (parsed.ingest.body_timeout_s > 0, "ingest.body_timeout_s", "a number > 0"),
        (parsed.store.timeout_s > 0, "store.timeout_s", "a number > 0"),
        (parsed.store.unreachable_warning_s > 0, "store.unreachable_warning_s", "a number > 0"),
        (parsed.server.header_timeout_s > 0, "server.header_timeout_s", "a number > 0"),
        (parsed.server.keep_alive_s >= 1, "server.keep_alive_s", "an integer >= 1"),
        (
            parsed.server.max_connections_per_client >= 0,
            "server.max_connections_per_client",
            "an integer >= 0 (0: no cap)",
        ),
        (parsed.ops.log_retention_s >= 60, "ops.log_retention_s", "an integer >= 60"),
        (parsed.ops.session_max_age_s >= 1, "ops.session_max_age_s", "an integer >= 1"),
        (
            parsed.ops.sign_in_failures_per_client >= 1,
            "ops.sign_in_failures_per_client",
            "an integer >= 1",
        ),
        (parsed.ops.sign_in_failures_total >= 1, "ops.sign_in_failures_total", "an integer >= 1"),
        (
            1 <= parsed.ops.dashboard_refresh_s <= 3600,
            "ops.dashboard_refresh_s",
            "a number of seconds from 1 to 3600",
        ),
        (
            0.1 <= parsed.ops.alert_check_s <= 3600,
            "ops.alert_check_s",
            "a number of seconds from 0.1 to 3600",
        ),
        (
            1 <= parsed.ops.alert_unavailable_s <= 86400,
            "ops.alert_unavailable_s",
            "a number of seconds from 1 to 86400",
        ),
        (parsed.delivery.router_claim_idle_s > 0, "delivery.router_claim_idle_s", "a number > 0"),
        (
            1 <= parsed.delivery.jsonata_timeout_ms <= MAX_JSONATA_TIMEOUT_MS,
            "delivery.jsonata_timeout_ms",
            f"an integer from 1 to {MAX_JSONATA_TIMEOUT_MS}",
        ),
        (_valid_prefix(parsed.store.key_prefix), "store.key_prefix", "[A-Za-z0-9:_-]{1,64}"),
    ]
    for ok, key, expected in checks:
        if not ok:
            raise ConfigError(f"config {where}: `{key}` must be {expected}")
    if (problem := base_url_problem(parsed.vtex.base_url)) is not None:
        raise ConfigError(f"config {where}: `vtex.base_url` {problem}")


def _valid_prefix(prefix: str) -> bool:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_-")
    return 0 < len(prefix) <= 64 and set(prefix) <= allowed


def _resolve_source(src: _SourceFile, index: int, where: str, env: Mapping[str, str]) -> Source:
    key = f"sources[{index}]"
    if (src.auth_token is None) == (src.auth_token_env is None):
        raise ConfigError(
            f"config {where}: `{key}` needs exactly one of `auth_token` or `auth_token_env`"
        )
    token = src.auth_token
    if src.auth_token_env is not None:
        token = env.get(src.auth_token_env)
        if not token:
            raise ConfigError(
                f"config {where}: `{key}.auth_token_env` names the environment variable "
                f"{src.auth_token_env}, which is not set or empty"
            )
    if not token or not src.auth_header.strip() or not src.account:
        raise ConfigError(
            f"config {where}: `{key}` needs a non-empty `account`, `auth_header` and token"
        )
    if src.account != ANY_ACCOUNT and not _is_account_name(src.account):
        raise ConfigError(
            f'config {where}: `{key}.account` must be "*" or a VTEX account name (letters, '
            f"digits and inner hyphens, at most 63), got {src.account!a}"
        )
    return Source(
        account=src.account,
        auth_header=src.auth_header.strip().lower(),
        auth_token=Secret(token),
        app_key=_from_env(src.app_key_env, f"{key}.app_key_env", where, env),
        app_token=_from_env(src.app_token_env, f"{key}.app_token_env", where, env),
        enrich=_needs_credentials(src, "enrich", src.enrich, key, where),
        feed_backup=_needs_credentials(src, "feed_backup", src.feed_backup, key, where),
    )


def _is_account_name(account: str) -> bool:
    try:
        check_account(account)
    except BadRequest:
        return False
    return True


def _needs_credentials(src: _SourceFile, name: str, on: bool, key: str, where: str) -> bool:
    """A setting that calls VTEX's API with the source's app key and token (`enrich`,
    `feed_backup`): it needs them, and a named account, so that the hook sender never chooses
    which account's host they go to."""
    if on and (src.app_key_env is None or src.app_token_env is None):
        raise ConfigError(f"config {where}: `{key}.{name}` needs app_key_env and app_token_env")
    if on and src.account == ANY_ACCOUNT:
        raise ConfigError(f"config {where}: `{key}.{name}` needs a named account, not *")
    return on


def _from_env(name: str | None, key: str, where: str, env: Mapping[str, str]) -> Secret | None:
    if name is None:
        return None
    if not env.get(name):
        raise ConfigError(f"config {where}: `{key}` names {name}, which is not set or empty")
    return Secret(env[name])


def _resolve_subscriptions(
    subs: list[SubscriptionSpec], where: str, env: Mapping[str, str], limits: Limits
) -> tuple[Subscription, ...]:
    resolved = tuple(
        _resolve_subscription(s, f"subscriptions[{i}]", where, env, limits)
        for i, s in enumerate(subs)
    )
    ids = [s.id for s in resolved]
    for sub_id in ids:
        if ids.count(sub_id) > 1:
            raise ConfigError(f"config {where}: subscription id {sub_id!r} is used twice")
    return resolved


def _resolve_subscription(
    spec: SubscriptionSpec, key: str, where: str, env: Mapping[str, str], limits: Limits
) -> Subscription:
    try:
        return resolve(spec, lambda: from_file(spec, env), limits)
    except SpecError as exc:
        raise ConfigError(f"config {where}: `{key}.{exc.field}` {exc.expected}") from None


def _resolve_alerts(
    specs: list[AlertSpec], where: str, env: Mapping[str, str]
) -> tuple[AlertTarget, ...]:
    targets = []
    for i, spec in enumerate(specs):
        try:
            targets.append(resolve_target(spec, env))
        except AlertSpecError as exc:
            raise ConfigError(f"config {where}: `alerts[{i}].{exc.key}` {exc.expected}") from None
    ids = [t.id for t in targets]
    for target_id in ids:
        if ids.count(target_id) > 1:
            raise ConfigError(f"config {where}: `alerts` use the id {target_id!r} twice")
    return tuple(targets)


def _public_url(url: str | None, where: str) -> str | None:
    """[ops] public_url: an http(s) URL, kept without a trailing slash."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (a port that is not a number raises here)
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ConfigError(f"config {where}: `ops.public_url` must be an http or https URL")
    if any(char.isspace() or not char.isprintable() for char in url):
        raise ConfigError(f"config {where}: `ops.public_url` must not hold spaces or controls")
    return url.rstrip("/")

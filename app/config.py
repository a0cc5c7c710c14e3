"""Settings: one immutable object built at start-up from the TOML file and the environment.

The file holds what the gateway does (sources, limits); the environment holds infrastructure
and secrets (`REDIS_URL`, `ORDERHOOK_DATA_DIR`, `ORDERHOOK_ADMIN_TOKEN`, and any variable a
source names with `auth_token_env`). Every error names the file, the key and what was expected.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import msgspec
from starlette.datastructures import Secret

from app.errors import ConfigError

DEFAULT_MAX_BODY_BYTES = 256 * 1024
DEFAULT_DEDUPE_WINDOW_S = 7 * 24 * 3600
DEFAULT_KEY_PREFIX = "orderhook"
DEFAULT_DATA_DIR = "./data"
DEFAULT_REDIS_TIMEOUT_S = 2.0
ANY_ACCOUNT = "*"

AppendFsync = Literal["always", "everysec", "no"]


class _SourceFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    account: str
    auth_header: str
    auth_token: str | None = None
    auth_token_env: str | None = None


class _StoreFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    key_prefix: str = DEFAULT_KEY_PREFIX
    timeout_s: float = DEFAULT_REDIS_TIMEOUT_S
    embedded_appendfsync: AppendFsync = "always"


class _IngestFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    dedupe_window_s: int = DEFAULT_DEDUPE_WINDOW_S


class _ConfigFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sources: list[_SourceFile] = msgspec.field(default_factory=list)
    store: _StoreFile = msgspec.field(default_factory=_StoreFile)
    ingest: _IngestFile = msgspec.field(default_factory=_IngestFile)


@dataclass(frozen=True)
class Source:
    """A VTEX account allowed to post, and the static header VTEX sends for it."""

    account: str
    auth_header: str
    auth_token: Secret

    def allows(self, account: str) -> bool:
        return self.account in (ANY_ACCOUNT, account)


@dataclass(frozen=True)
class Settings:
    sources: tuple[Source, ...] = ()
    redis_url: str | None = None
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    admin_token: Secret | None = None
    key_prefix: str = DEFAULT_KEY_PREFIX
    redis_timeout_s: float = DEFAULT_REDIS_TIMEOUT_S
    embedded_appendfsync: AppendFsync = "always"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    dedupe_window_s: int = DEFAULT_DEDUPE_WINDOW_S
    config_path: Path | None = field(default=None, compare=False)


def load_settings(path: str | Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from the file at `path` (or `ORDERHOOK_CONFIG`) and the environment."""
    env = os.environ if env is None else env
    path = path or env.get("ORDERHOOK_CONFIG") or None
    parsed = _read_file(Path(path)) if path else _ConfigFile()
    where = str(path) if path else "the built-in defaults"
    _check_limits(parsed, where)
    return Settings(
        sources=tuple(_resolve_source(s, i, where, env) for i, s in enumerate(parsed.sources)),
        redis_url=env.get("REDIS_URL") or None,
        data_dir=Path(env.get("ORDERHOOK_DATA_DIR") or DEFAULT_DATA_DIR),
        admin_token=_secret(env.get("ORDERHOOK_ADMIN_TOKEN")),
        key_prefix=parsed.store.key_prefix,
        redis_timeout_s=parsed.store.timeout_s,
        embedded_appendfsync=parsed.store.embedded_appendfsync,
        max_body_bytes=parsed.ingest.max_body_bytes,
        dedupe_window_s=parsed.ingest.dedupe_window_s,
        config_path=Path(path) if path else None,
    )


def _secret(value: str | None) -> Secret | None:
    return Secret(value) if value else None


def _read_file(path: Path) -> _ConfigFile:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot read the file: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path}: not valid TOML: {exc}") from exc
    try:
        return msgspec.convert(raw, type=_ConfigFile)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config {path}: {exc}") from exc


def _check_limits(parsed: _ConfigFile, where: str) -> None:
    checks = [
        (parsed.ingest.max_body_bytes >= 1024, "ingest.max_body_bytes", "an integer >= 1024"),
        (parsed.ingest.dedupe_window_s >= 1, "ingest.dedupe_window_s", "an integer >= 1"),
        (parsed.store.timeout_s > 0, "store.timeout_s", "a number > 0"),
        (_valid_prefix(parsed.store.key_prefix), "store.key_prefix", "[A-Za-z0-9:_-]{1,64}"),
    ]
    for ok, key, expected in checks:
        if not ok:
            raise ConfigError(f"config {where}: `{key}` must be {expected}")


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
    return Source(
        account=src.account, auth_header=src.auth_header.strip().lower(), auth_token=Secret(token)
    )

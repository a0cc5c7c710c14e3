"""Where a subscription's secret values are, and how they are kept in Redis.

A spec (app/subscriptions/spec.py) gives a secret either as its value (`secret`, `token`) or,
in the config file only, as the environment variable that holds it (`secret_env`,
`token_env`). The catalog never holds a value in clear: each is stored as a `SecretRef`:

- `env`: the variable's name; each process reads its own environment (the config file's way);
- `sealed`: the value encrypted with ORDERHOOK_SECRET_KEY (app/sealing.py), with `fp`, its
  keyed fingerprint, to compare two values without opening them;
- `file`: a value written in the config file when no ORDERHOOK_SECRET_KEY is set: each
  process takes it from its own config file (the subscription of the same id).

Through the admin API, values are given, never variable names (an API caller must not make
the gateway send its own environment somewhere), and are sealed: without a key they are
refused (SecretsUnavailable). A push subscription created without `secret` gets a new one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import msgspec
from starlette.datastructures import Secret

from app.signing import new_secret
from app.subscriptions.auth import EnvValue, secret_of
from app.subscriptions.spec import (
    Keyring,
    SpecError,
    SubscriptionSpec,
    check_signing_secrets,
)

TOKEN_REQUIRED = "is required for a pull subscription: give `token` or `token_env`"


class Sealer(Protocol):
    """app/sealing.py's Sealer, as this module uses it."""

    @property
    def available(self) -> bool: ...

    def seal(self, value: str) -> str: ...

    def open(self, sealed: str) -> str: ...

    def fingerprint(self, value: str) -> str: ...


class SecretRef(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """One secret value as the catalog keeps it (see the module's docstring)."""

    env: str | None = None
    sealed: str | None = None
    fp: str | None = None
    file: bool = False
    until_ms: int | None = None  # a rotated-out signing secret: it signs until then

    def same(self) -> SecretRef:
        """What tells two refs apart without opening them (a sealed value's ciphertext
        differs each time it is sealed; its fingerprint does not)."""
        return msgspec.structs.replace(self, sealed=None)


class StoredSecrets(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """A subscription's secrets in the catalog: its signing secrets (newest first), a pull
    subscription's token, its static headers' values (by name) and its auth's secret."""

    secret: list[SecretRef] = msgspec.field(default_factory=list)
    token: SecretRef | None = None
    headers: dict[str, SecretRef] = msgspec.field(default_factory=dict)
    auth: SecretRef | None = None
    url: SecretRef | None = None  # the whole URL (the spec holds it redacted)

    def same(self) -> StoredSecrets:
        return StoredSecrets(
            [ref.same() for ref in self.secret],
            self.token.same() if self.token is not None else None,
            {name: ref.same() for name, ref in self.headers.items()},
            self.auth.same() if self.auth is not None else None,
            self.url.same() if self.url is not None else None,
        )


def from_file(spec: SubscriptionSpec, env: Mapping[str, str]) -> Keyring:
    """The values a config file's spec gives (in it, or in the environment it names)."""
    if spec.mode == "pull":
        if (token := _file_token(spec, env)) is None:
            raise SpecError("token", TOKEN_REQUIRED)
        return Keyring(token=token)
    if (spec.secret is None) == (spec.secret_env is None):
        raise SpecError("secret", "is required: give exactly one of `secret` or `secret_env`")
    if spec.secret_env is not None:
        values = env.get(spec.secret_env, "").split()
        if not values:
            raise SpecError("secret_env", f"names {spec.secret_env}, which is not set or empty")
    else:
        values = _listed(spec.secret)
    check_signing_secrets(values)
    headers = tuple(
        (name, _file_value(f"headers.{name}", value, env))
        for name, value in (spec.headers or {}).items()
    )
    return Keyring(
        tuple(Secret(v) for v in values),
        headers=headers,
        auth=_file_auth(spec, env),
        url=Secret(spec.url) if spec.url else None,
    )


def _file_value(field: str, value: str | EnvValue, env: Mapping[str, str]) -> Secret:
    if isinstance(value, str):
        return Secret(value)
    if not env.get(value.env):
        raise SpecError(field, f"names {value.env}, which is not set or empty")
    return Secret(env[value.env])


def _file_auth(spec: SubscriptionSpec, env: Mapping[str, str]) -> Secret | None:
    if spec.auth is None:
        return None
    value, name = secret_of(spec.auth)
    field = f"auth.{spec.auth.SECRET}"
    if (value is None) == (name is None):
        raise SpecError(field, f"is required: give `{spec.auth.SECRET}` or `{field[5:]}_env`")
    return _file_value(field, value if value is not None else EnvValue(name or ""), env)


def _file_token(spec: SubscriptionSpec, env: Mapping[str, str]) -> Secret | None:
    if spec.token is not None and spec.token_env is not None:
        raise SpecError("token", TOKEN_REQUIRED)
    if spec.token_env is not None and not env.get(spec.token_env):
        raise SpecError("token_env", f"names {spec.token_env}, which is not set or empty")
    value = spec.token if spec.token is not None else env.get(spec.token_env or "")
    return Secret(value) if value else None


def _listed(secret: str | list[str] | None) -> list[str]:
    return [secret] if isinstance(secret, str) else list(secret or [])


def stored_from_file(spec: SubscriptionSpec, sealer: Sealer) -> StoredSecrets:
    """How a config file's secrets are kept: variable names as they are; values sealed, or
    (without a key) left in the file."""

    def ref(value: str | EnvValue | None, env: str | None = None) -> SecretRef:
        if isinstance(value, EnvValue) or env is not None:
            return SecretRef(env=env if env is not None else getattr(value, "env", ""))
        if sealer.available:
            return seal(sealer, value or "")
        return SecretRef(file=True)

    if spec.secret_env is not None:
        secret = [SecretRef(env=spec.secret_env)]
    else:
        secret = [ref(value) for value in _listed(spec.secret)]
    token = None
    if spec.token is not None or spec.token_env is not None:
        token = ref(spec.token, spec.token_env)
    headers = {name: ref(value) for name, value in (spec.headers or {}).items()}
    auth = ref(*secret_of(spec.auth)) if spec.auth is not None else None
    url = ref(spec.url) if spec.url else None
    return StoredSecrets(secret, token, headers, auth, url)


def stored_from_api(spec: SubscriptionSpec, sealer: Sealer) -> tuple[StoredSecrets, str | None]:
    """How an admin API spec's secrets are kept (sealed: SecretsUnavailable without a key), and
    the signing secret made for a push subscription that gave none (None if it gave one)."""
    _no_environment(spec)
    if spec.mode == "pull" and spec.token is None:
        raise SpecError("token", "is required for a pull subscription")
    made = new_secret() if spec.mode == "push" and spec.secret is None else None
    values = _listed(spec.secret) if made is None else [made]
    if spec.mode == "push":
        check_signing_secrets(values)
    secret = [seal(sealer, value) for value in values] if spec.mode == "push" else []
    token = seal(sealer, spec.token) if spec.token is not None else None
    headers = {name: seal(sealer, str(value)) for name, value in (spec.headers or {}).items()}
    auth = None
    if spec.auth is not None and (value := secret_of(spec.auth)[0]) is not None:
        auth = seal(sealer, value)
    url = seal(sealer, spec.url) if spec.url else None
    return StoredSecrets(secret, token, headers, auth, url), made


def _no_environment(spec: SubscriptionSpec) -> None:
    """Through the API, values are given, never the gateway's environment variables (a caller
    must not make the gateway send its own environment somewhere)."""
    named = [name for name in ("secret_env", "token_env") if getattr(spec, name) is not None]
    named += [f"headers.{k}" for k, v in (spec.headers or {}).items() if isinstance(v, EnvValue)]
    if spec.auth is not None and secret_of(spec.auth)[1] is not None:
        named.append(f"auth.{spec.auth.SECRET}_env")
    if named:
        raise SpecError(named[0], "is for the config file: give the value itself through the API")


def stand_ins(headers: Iterable[str], auth: bool) -> Keyring:
    """Values standing for secrets not at hand: the headers' (by name) and the auth's. A spec
    is checked with them before its values are sealed; a process that cannot open a
    subscription's values routes it with them (and delivers nothing: `secrets_problem`)."""
    value = Secret("unavailable")
    return Keyring(headers=tuple((name, value) for name in headers), auth=value if auth else None)


def seal(sealer: Sealer, value: str, until_ms: int | None = None) -> SecretRef:
    return SecretRef(sealed=sealer.seal(value), fp=sealer.fingerprint(value), until_ms=until_ms)


def keyring(
    stored: StoredSecrets, sealer: Sealer, env: Mapping[str, str], local: Keyring | None
) -> Keyring:
    """The values of stored secrets; `local` is this process's config file's values of the
    same subscription (for `file` refs). SpecError naming the field a value cannot be found
    for; SecretUnreadable for a sealed one this key cannot open."""
    local = local or Keyring()
    current = [ref for ref in stored.secret if ref.until_ms is None]
    retiring = [ref for ref in stored.secret if ref.until_ms is not None]
    secrets = _values("secret", current, sealer, env, local.secrets)
    ending = [  # each value a retiring ref gives (a variable may hold several) with its end
        (value, ref.until_ms or 0)
        for ref in retiring
        for value in _values("secret", [ref], sealer, env, local.secrets)
    ]
    local_headers = dict(local.headers)
    headers = tuple(
        (name, _one(f"headers.{name}", ref, sealer, env, local_headers.get(name)))
        for name, ref in stored.headers.items()
    )
    return Keyring(
        tuple(secrets),
        tuple(ending),
        _maybe("token", stored.token, sealer, env, local.token),
        headers,
        _maybe("auth", stored.auth, sealer, env, local.auth),
        _maybe("url", stored.url, sealer, env, local.url),
    )


def _maybe(
    field: str, ref: SecretRef | None, sealer: Sealer, env: Mapping[str, str], local: Secret | None
) -> Secret | None:
    return _one(field, ref, sealer, env, local) if ref is not None else None


def _one(
    field: str, ref: SecretRef, sealer: Sealer, env: Mapping[str, str], local: Secret | None
) -> Secret:
    [value] = _values(field, [ref], sealer, env, (local,) if local is not None else (), one=True)
    return value


def _values(
    field: str,
    refs: Sequence[SecretRef],
    sealer: Sealer,
    env: Mapping[str, str],
    local: Sequence[Secret],
    one: bool = False,
) -> list[Secret]:
    values: list[Secret] = []
    file_taken = False  # the file's values are taken all at once (one file ref per value)
    for ref in refs:
        if ref.env is not None:
            found = [env.get(ref.env, "")] if one else env.get(ref.env, "").split()
            if not any(found):
                raise SpecError(field, f"names {ref.env}, which is not set or empty here")
            values += [Secret(v) for v in found if v]
        elif ref.sealed is not None:
            values.append(Secret(sealer.open(ref.sealed)))
        elif ref.file and not file_taken:
            if not local:
                raise SpecError(field, "is in the config file of another process, not this one's")
            values += list(local)
            file_taken = True
    return values

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

from collections.abc import Mapping, Sequence
from typing import Protocol

import msgspec
from starlette.datastructures import Secret

from app.signing import new_secret
from app.subscriptions.spec import (
    Keyring,
    SpecError,
    Subscription,
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
    """A subscription's secrets in the catalog: its signing secrets (newest first) and a pull
    subscription's token."""

    secret: list[SecretRef] = msgspec.field(default_factory=list)
    token: SecretRef | None = None

    def same(self) -> StoredSecrets:
        token = self.token.same() if self.token is not None else None
        return StoredSecrets([ref.same() for ref in self.secret], token)


def from_file(spec: SubscriptionSpec, env: Mapping[str, str]) -> Keyring:
    """The values a config file's spec gives (in it, or in the environment it names)."""
    if spec.mode == "pull":
        if (token := _file_token(spec, env)) is None:
            raise SpecError(
                "token", "is required for a pull subscription: give `token` or `token_env`"
            )
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
    return Keyring(tuple(Secret(v) for v in values))


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

    def ref(value: str) -> SecretRef:
        if sealer.available:
            return SecretRef(sealed=sealer.seal(value), fp=sealer.fingerprint(value))
        return SecretRef(file=True)

    if spec.secret_env is not None:
        secret = [SecretRef(env=spec.secret_env)]
    else:
        secret = [ref(value) for value in _listed(spec.secret)]
    token = None
    if spec.token_env is not None:
        token = SecretRef(env=spec.token_env)
    elif spec.token is not None:
        token = ref(spec.token)
    return StoredSecrets(secret, token)


def stored_from_api(spec: SubscriptionSpec, sealer: Sealer) -> tuple[StoredSecrets, str | None]:
    """How an admin API spec's secrets are kept (sealed: SecretsUnavailable without a key), and
    the signing secret made for a push subscription that gave none (None if it gave one)."""
    for name in ("secret_env", "token_env"):
        if getattr(spec, name) is not None:
            raise SpecError(name, "is for the config file: give the value itself through the API")
    if spec.mode == "pull" and spec.token is None:
        raise SpecError("token", "is required for a pull subscription")
    made = new_secret() if spec.mode == "push" and spec.secret is None else None
    values = _listed(spec.secret) if made is None else [made]
    if spec.mode == "push":
        check_signing_secrets(values)
    secret = [seal(sealer, value) for value in values] if spec.mode == "push" else []
    token = seal(sealer, spec.token) if spec.token is not None else None
    return StoredSecrets(secret, token), made


def seal(sealer: Sealer, value: str, until_ms: int | None = None) -> SecretRef:
    return SecretRef(sealed=sealer.seal(value), fp=sealer.fingerprint(value), until_ms=until_ms)


def keyring(
    stored: StoredSecrets,
    sealer: Sealer,
    env: Mapping[str, str],
    local: Subscription | None,
) -> Keyring:
    """The values of stored secrets; `local` is this process's config file's subscription of
    the same id (for `file` refs). SpecError naming the field a value cannot be found for."""
    current = [ref for ref in stored.secret if ref.until_ms is None]
    retiring = [ref for ref in stored.secret if ref.until_ms is not None]
    local_secrets = local.secrets if local is not None else ()
    secrets = _values("secret", current, sealer, env, local_secrets)
    old = _values("secret", retiring, sealer, env, ())
    token = None
    if stored.token is not None:
        local_token = (local.token,) if local is not None and local.token else ()
        token = _values("token", [stored.token], sealer, env, local_token)[0]
    until = [ref.until_ms or 0 for ref in retiring]
    return Keyring(tuple(secrets), tuple(zip(old, until, strict=True)), token)


def _values(
    field: str,
    refs: Sequence[SecretRef],
    sealer: Sealer,
    env: Mapping[str, str],
    local: Sequence[Secret],
) -> list[Secret]:
    values: list[Secret] = []
    file_taken = False  # the file's values are taken all at once (one file ref per value)
    for ref in refs:
        if ref.env is not None:
            found = env.get(ref.env, "").split() if field == "secret" else [env.get(ref.env, "")]
            if not any(found):
                raise SpecError(f"{field}_env", f"names {ref.env}, which is not set or empty here")
            values += [Secret(v) for v in found if v]
        elif ref.sealed is not None:
            values.append(Secret(sealer.open(ref.sealed)))
        elif ref.file and not file_taken:
            if not local:
                raise SpecError(field, "is in the config file of another process, not this one's")
            values += list(local)
            file_taken = True
    return values

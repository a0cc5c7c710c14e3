"""A push subscription's outbound auth as the spec gives it (what ERPs behind API gateways
need): static `headers` and one `auth`, each secret value given as itself or, in the config
file only, by the environment variable that holds it:

    headers = {"X-Api-Key" = {env = "ERP_KEY"}}
    auth = {type = "basic", username = "orderhook", password_env = "ERP_PASSWORD"}
    auth = {type = "bearer", token_env = "ERP_TOKEN"}
    auth = {type = "oauth2", token_url = "https://...", client_id = "...",
            client_secret_env = "ERP_CLIENT_SECRET", scope = "orders"}

`outbound` makes app/outbound.py's OutboundAuth of the spec and its resolved values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import msgspec
from starlette.datastructures import Secret

from app.outbound import Auth, BasicAuth, BearerAuth, OAuth2ClientCredentials, OutboundAuth


class EnvValue(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A value the config file leaves in the environment: `{env = "NAME"}`."""

    env: str


class BasicSpec(
    msgspec.Struct,
    frozen=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    tag_field="type",
    tag="basic",
):
    SECRET: ClassVar[str] = "password"
    username: str
    password: str | None = None
    password_env: str | None = None


class BearerSpec(
    msgspec.Struct,
    frozen=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    tag_field="type",
    tag="bearer",
):
    SECRET: ClassVar[str] = "token"
    token: str | None = None
    token_env: str | None = None


class OAuth2Spec(
    msgspec.Struct,
    frozen=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    tag_field="type",
    tag="oauth2",
):
    SECRET: ClassVar[str] = "client_secret"
    token_url: str
    client_id: str
    client_secret: str | None = None
    client_secret_env: str | None = None
    scope: str | None = None


AuthSpec = BasicSpec | BearerSpec | OAuth2Spec
HeaderSpec = dict[str, str | EnvValue]


def secret_of(auth: AuthSpec) -> tuple[str | None, str | None]:
    """The auth's secret as given: (its value, the variable holding it)."""
    return getattr(auth, auth.SECRET), getattr(auth, auth.SECRET + "_env")


def without_secret(auth: AuthSpec) -> AuthSpec:
    """The auth with its secret left out (what is stored in clear and shown)."""
    return msgspec.structs.replace(auth, **{auth.SECRET: None, auth.SECRET + "_env": None})


def outbound(
    headers: Mapping[str, Secret], auth: AuthSpec | None, secret: Secret | None
) -> OutboundAuth | None:
    """The OutboundAuth of static headers and an auth with its secret (None for neither);
    ValueError naming what is wrong (never a value)."""
    if not headers and auth is None:
        return None
    return OutboundAuth(headers, _auth(auth, secret))


def _auth(auth: AuthSpec | None, secret: Secret | None) -> Auth | None:
    if auth is None:
        return None
    if secret is None:
        raise ValueError(f"needs `{auth.SECRET}`")
    if isinstance(auth, BasicSpec):
        return BasicAuth(auth.username, secret)
    if isinstance(auth, BearerSpec):
        return BearerAuth(secret)
    return OAuth2ClientCredentials(auth.token_url, auth.client_id, secret, auth.scope)

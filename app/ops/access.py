"""Who may see what: the admin token for everything; the read-only ops token for /ops,
/ops/stats and /metrics. Both as `Authorization: Bearer`, or, for browsers, as the session
cookie the dashboard's login form sets."""

from __future__ import annotations

import hmac
from typing import Literal

from starlette.datastructures import Secret
from starlette.requests import Request

from app.config import Settings
from app.errors import Forbidden, Unauthorized

COOKIE = "orderhook_token"
Role = Literal["admin", "ops"]


def bearer_token(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def presented_token(request: Request) -> str | None:
    return bearer_token(request) or request.cookies.get(COOKIE)


def matches(given: str, token: Secret | None) -> bool:
    """Constant-time comparison with a configured token (False when none is)."""
    return token is not None and hmac.compare_digest(given.encode(), str(token).encode())


def role_of(token: str | None, settings: Settings) -> Role | None:
    if token is None:
        return None
    admin = matches(token, settings.admin_token)
    ops = matches(token, settings.ops_token)  # both compared: no early exit to time
    return "admin" if admin else "ops" if ops else None


def require(request: Request, settings: Settings, need: Role) -> Role:
    """The caller's role, if it is enough for `need`; otherwise 401 or 403."""
    if settings.admin_token is None and (need == "admin" or settings.ops_token is None):
        raise Forbidden(
            "the admin API is disabled: set ORDERHOOK_ADMIN_TOKEN to enable it"
            if need == "admin"
            else "ops endpoints are disabled: set ORDERHOOK_ADMIN_TOKEN or ORDERHOOK_OPS_TOKEN"
        )
    role = role_of(presented_token(request), settings)
    if role is None:
        raise Unauthorized("missing or invalid bearer token")
    if need == "admin" and role != "admin":
        raise Forbidden("this needs the admin token; the ops token is read-only")
    return role

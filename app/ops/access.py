"""Who may see what: the admin token for everything; the read-only ops token for /ops,
/ops/stats, /metrics and the JSONata endpoint. Both as `Authorization: Bearer`; in a browser,
the dashboard's sign-in form opens a session instead (`app.ops.sessions`), whose cookie opens
the dashboard's own pages and forms (under /ops) and nothing else."""

from __future__ import annotations

import hmac
from typing import Literal

from starlette.datastructures import Secret
from starlette.requests import Request

from app.config import Settings
from app.errors import Forbidden, Unauthorized

COOKIE = "orderhook_session"
LEGACY_COOKIE = "orderhook_token"  # held the token itself, before sessions: cleared when seen
COOKIE_PATH = "/ops"
Role = Literal["admin", "ops"]


def bearer_token(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


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
    """The bearer token's role, if it is enough for `need`; otherwise 401 or 403."""
    return allowed(role_of(bearer_token(request), settings), settings, need)


def allowed(role: Role | None, settings: Settings, need: Role) -> Role:
    """`role`, if it is enough for `need`; otherwise 401 (none) or 403 (disabled, or ops)."""
    if settings.admin_token is None and (need == "admin" or settings.ops_token is None):
        raise Forbidden(
            "the admin API is disabled: set ORDERHOOK_ADMIN_TOKEN to enable it"
            if need == "admin"
            else "ops endpoints are disabled: set ORDERHOOK_ADMIN_TOKEN or ORDERHOOK_OPS_TOKEN"
        )
    if role is None:
        raise Unauthorized("missing or invalid bearer token")
    if need == "admin" and role != "admin":
        raise Forbidden("this needs the admin token; the ops token is read-only")
    return role

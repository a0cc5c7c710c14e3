"""Dashboard sessions, kept in Redis.

Signing in with the admin or ops token opens a session: the browser's cookie holds a random
256-bit id and nothing else; Redis holds, under the id's SHA-256, the role and a proof (an
HMAC of the token keyed by the id), expiring after `[ops] session_max_age_s`. So:

- the cookie is not a token: stolen, it dies at sign-out or expiry, and it opens the
  dashboard only;
- Redis never holds the id, nor anything a token could be guessed from without it;
- a session dies with the token it was opened with: once the configured token changes, the
  proof no longer matches;
- signing out deletes it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Any

import orjson

from app.config import Settings
from app.ops.access import Role
from app.store.client import Store

ID_BYTES = 32  # 256 bits
_WELL_FORMED = re.compile(r"\A[A-Za-z0-9_-]{43}\Z")  # token_urlsafe(32)


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _proof(session_id: str, token: str) -> str:
    return hmac.new(session_id.encode(), token.encode(), hashlib.sha256).hexdigest()


class Sessions:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def _token(self, role: Any) -> str | None:
        token = {"admin": self.settings.admin_token, "ops": self.settings.ops_token}.get(role)
        return None if token is None else str(token)

    async def open(self, role: Role) -> str:
        """A new session for `role` (whose token was just checked); its id, for the cookie."""
        session_id = secrets.token_urlsafe(ID_BYTES)
        proof = _proof(session_id, self._token(role) or "")
        value = orjson.dumps({"role": role, "proof": proof})
        key = self.store.keys.session(_digest(session_id))
        ttl = self.settings.session_max_age_s
        await self.store.guard(lambda: self.store.client.set(key, value, ex=ttl))
        return session_id

    async def role(self, session_id: str) -> Role | None:
        """The role of a live session; None for an unknown, expired or revoked one."""
        if not _WELL_FORMED.match(session_id):
            return None
        key = self.store.keys.session(_digest(session_id))
        raw = await self.store.guard(lambda: self.store.client.get(key))
        if raw is None:
            return None
        stored = orjson.loads(raw)
        token = self._token(stored.get("role"))
        if token is None or not hmac.compare_digest(stored["proof"], _proof(session_id, token)):
            return None
        return "admin" if stored["role"] == "admin" else "ops"

    async def close(self, session_id: str) -> None:
        if _WELL_FORMED.match(session_id):
            key = self.store.keys.session(_digest(session_id))
            await self.store.guard(lambda: self.store.client.delete(key))

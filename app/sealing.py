"""Secrets at rest: sealed (encrypted and authenticated) under a key from ORDERHOOK_SECRET_KEY.

Secrets given through the admin API (subscription secrets, outbound credentials) are kept in
Redis as Fernet tokens (AES-128-CBC with HMAC-SHA256): whoever reads Redis without the key learns
nothing of them, and a value altered there does not open.

ORDERHOOK_SECRET_KEY holds one key, or several separated by commas, newest first: the newest
seals, every one opens. To change the key, put a new one first (`orderhook secret key` makes
one), re-seal what is stored (`Sealer.reseal`), then drop the old one.

`fingerprint` tells whether two secrets are the same without keeping either: a short HMAC under
a key derived from the newest key (so fingerprints change with it).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from app.errors import ConfigError, SecretsUnavailable, SecretUnreadable

ENV_KEY = "ORDERHOOK_SECRET_KEY"
FINGERPRINT_CHARS = 16  # hex: 64 bits, to tell secrets apart, not to stand for them
FINGERPRINT_CONTEXT = b"orderhook fingerprint v1"  # derives the fingerprint key from a key


def new_key() -> str:
    """A fresh key for ORDERHOOK_SECRET_KEY: 32 random bytes, URL-safe base64."""
    return Fernet.generate_key().decode()


class Sealer:
    """Seals and opens secrets with the keys given, newest first; with none it is not
    `available`: it opens nothing and refuses to seal."""

    def __init__(self, keys: Sequence[str] = ()) -> None:
        """ValueError (naming the key's position among several, never its value) for a
        malformed key."""
        fernets = [_fernet(key, position, len(keys)) for position, key in enumerate(keys, 1)]
        self._fernet = MultiFernet(fernets) if fernets else None
        newest = keys[0].encode() if keys else b""
        self._fingerprint_key = hmac.digest(newest, FINGERPRINT_CONTEXT, hashlib.sha256)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Sealer:
        """From ORDERHOOK_SECRET_KEY (unset or empty: not available); ConfigError if malformed."""
        value = env.get(ENV_KEY, "")
        if not value.strip():
            return cls()
        try:
            return cls([key.strip() for key in value.split(",")])
        except ValueError as exc:
            raise ConfigError(f"{ENV_KEY}{exc}; make one with `orderhook secret key`") from None

    @property
    def available(self) -> bool:
        return self._fernet is not None

    def seal(self, value: str) -> str:
        """`value` encrypted under the newest key; SecretsUnavailable without a key."""
        return self._usable().encrypt(value.encode()).decode()

    def open(self, sealed: str) -> str:
        """The secret `sealed` holds; SecretUnreadable if no key opens it."""
        if self._fernet is None:
            raise SecretUnreadable(
                f"a sealed secret is stored, and {ENV_KEY} is not set: set it to the key "
                "that sealed it"
            )
        try:
            return self._fernet.decrypt(sealed).decode()
        except (InvalidToken, TypeError, ValueError):
            raise SecretUnreadable(
                f"a sealed secret does not open: {ENV_KEY} holds no key it was sealed with, "
                "or the stored value was altered"
            ) from None

    def reseal(self, sealed: str) -> str:
        """`sealed` sealed again under the newest key (after a new key was put first)."""
        return self.seal(self.open(sealed))

    def fingerprint(self, value: str) -> str:
        """A short hex HMAC of `value`: equal for equal secrets under the same newest key."""
        self._usable()
        digest = hmac.new(self._fingerprint_key, value.encode(), hashlib.sha256).hexdigest()
        return digest[:FINGERPRINT_CHARS]

    def _usable(self) -> MultiFernet:
        if self._fernet is None:
            raise SecretsUnavailable()
        return self._fernet


def _fernet(key: str, position: int, count: int) -> Fernet:
    try:
        return Fernet(key)
    except (ValueError, TypeError):  # not URL-safe base64 of 32 bytes
        which = "" if count == 1 else f"'s key {position} of {count}"
        raise ValueError(f"{which} is not a valid key (URL-safe base64 of 32 bytes)") from None

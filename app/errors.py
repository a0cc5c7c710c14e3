"""The gateway's exceptions: one base, each mapped to one HTTP status in one place.

OrderhookError
├── ConfigError            the configuration is invalid (start-up refuses to go on)
├── StoreUnavailable       Redis cannot be reached, is not ready or is out of memory (HTTP 503)
│   ├── StoreMayEvict      Redis's maxmemory-policy is not noeviction: it may drop queued events
│   │                      (HTTP 503; `orderhook serve` and `orderhook check` refuse it)
│   └── DataDirInUse       the embedded store's data directory is another process's (exit 2)
├── SchemaMismatch         Redis holds data of a newer or unknown layout under the key prefix
│                          (`orderhook serve`, `worker` and `check` refuse it: exit 2)
├── SecretUnreadable       a sealed secret from Redis cannot be opened: ORDERHOOK_SECRET_KEY is
│                          unset or another key, or the stored value was altered
├── OutboundAuthError      a delivery's outbound credentials cannot be had (the OAuth2 token
│                          endpoint failed): the attempt fails and is retried
└── RequestError           the request is refused; carries its HTTP status
    ├── Unauthorized       401: no source's auth header matches, or the account is not allowed
    ├── BadRequest         400: invalid JSON, not an object, a missing or mistyped field
    ├── TooManyJobs        429: this process runs as many background jobs as it may
    ├── Conflict           409: the request does not fit what is stored (a subscription id taken)
    │   └── SecretsUnavailable 409: a secret given through the API while ORDERHOOK_SECRET_KEY
    │                      is unset
    ├── RequestTimeout     408: the body did not arrive within the body timeout
    ├── PayloadTooLarge    413: the body is over the limit
    └── UnsupportedMedia   415: the content type is not JSON
"""

from __future__ import annotations

import re

# What would break a message's one line on a terminal or in a log: C0 and C1 controls, DEL,
# the Unicode line and paragraph separators, and the bidirectional overrides.
_LINE_BREAKERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def one_line(text: str) -> str:
    """`text` with each character that could break its line written as its escape (`\\n`)."""
    return _LINE_BREAKERS.sub(lambda found: ascii(found.group())[1:-1], text)


class OrderhookError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(OrderhookError):
    """The configuration file or environment is invalid. The message is one line, whatever
    the file holds: a key or value it quotes cannot start another."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class StoreUnavailable(OrderhookError):
    """Redis is unreachable, timed out, is still loading its data or is out of memory.

    Its text may name Redis's address (`host:port/db`, never a password), for the operator's
    log and the CLI; `public` is the same without the address, for answers anybody may read
    (/readyz)."""

    def __init__(self, message: str, public: str | None = None) -> None:
        super().__init__(message)
        self.public = message if public is None else public


class StoreMayEvict(StoreUnavailable):
    """Redis may evict keys (an accepted event, a dedupe mark): it cannot hold the queue."""


class DataDirInUse(StoreUnavailable):
    """Another process (a gateway, or the redis-server it left) holds the embedded store's data
    directory: a second server on the same files would corrupt them."""


class SchemaMismatch(OrderhookError):
    """The data under the key prefix is of a schema version this orderhook does not read (a
    newer one, or not a version number). The message is one line: what was found, and what to
    do."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class SecretUnreadable(OrderhookError):
    """A sealed secret cannot be opened. The message never holds the secret nor the sealed
    value."""


class OutboundAuthError(OrderhookError):
    """The credentials a delivery needs cannot be had. The message is one line naming the token
    endpoint's origin and what went wrong, never a secret nor a token. `refused`: the SSRF
    guard refused the token endpoint's address (retrying cannot help)."""

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(one_line(message))
        self.refused = refused


class RequestError(OrderhookError):
    """A request the gateway refuses; `status` is the HTTP status to answer."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(RequestError):
    status = 401


class Forbidden(RequestError):
    status = 403


class NotFound(RequestError):
    status = 404


class BadRequest(RequestError):
    status = 400


class Conflict(RequestError):
    """The request does not fit what is stored (an id already taken)."""

    status = 409


class SecretsUnavailable(Conflict):
    """A secret to store through the API, and no ORDERHOOK_SECRET_KEY to seal it with: the
    gateway's set-up, not the request, is what must change."""

    def __init__(
        self,
        message: str = "set ORDERHOOK_SECRET_KEY to store secrets through the API; "
        "make one with `orderhook secret key`",
    ) -> None:
        super().__init__(message)


class TooManyJobs(RequestError):
    status = 429


class RequestTimeout(RequestError):
    status = 408


class PayloadTooLarge(RequestError):
    status = 413


class UnsupportedMedia(RequestError):
    status = 415

"""The gateway's exceptions: one base, each mapped to one HTTP status in one place.

OrderhookError
├── ConfigError            the configuration is invalid (start-up refuses to go on)
├── StoreUnavailable       Redis cannot be reached, is not ready or is out of memory (HTTP 503)
│   └── StoreMayEvict      Redis's maxmemory-policy is not noeviction: it may drop queued events
│                          (HTTP 503; `orderhook serve` and `orderhook check` refuse it)
└── RequestError           the request is refused; carries its HTTP status
    ├── Unauthorized       401: no source's auth header matches, or the account is not allowed
    ├── BadRequest         400: invalid JSON, not an object, a missing or mistyped field
    ├── RequestTimeout     408: the body did not arrive within the body timeout
    ├── PayloadTooLarge    413: the body is over the limit
    └── UnsupportedMedia   415: the content type is not JSON
"""

from __future__ import annotations


class OrderhookError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(OrderhookError):
    """The configuration file or environment is invalid."""


class StoreUnavailable(OrderhookError):
    """Redis is unreachable, timed out, is still loading its data or is out of memory."""


class StoreMayEvict(StoreUnavailable):
    """Redis may evict keys (an accepted event, a dedupe mark): it cannot hold the queue."""


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


class RequestTimeout(RequestError):
    status = 408


class PayloadTooLarge(RequestError):
    status = 413


class UnsupportedMedia(RequestError):
    status = 415

"""Standard Webhooks signatures, checked against the standardwebhooks package."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.signing import secret_key, signature_headers

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def test_signature_verifies_with_the_reference_library() -> None:
    body = b'{"specversion":"1.0"}'
    headers = signature_headers([secret_key(SECRET)], "evt-1", int(time.time()), body)
    Webhook(SECRET).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body + b" ", headers)


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("k" * 40, "must start with 'whsec_'"),
        ("whsec_not*base64", "base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "24 to 64 bytes, not 5"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "not 65"),
    ],
)
def test_invalid_secrets_are_refused(secret: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        secret_key(secret)

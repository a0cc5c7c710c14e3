"""What of a subscriber URL each role sees, and error texts scrubbed of its secret parts."""

from __future__ import annotations

import aiohttp
import pytest
import yarl

from app.redaction import MAX_ERROR_CHARS, describe, origin, redirect_origin, scrub, shown_url

URL = "https://erp-user:pw-s3cret@hooks.example.com/hooks/T0/PATH-s3cret?token=q-s3cret&v=2#f"
SECRETS = ("erp-user", "pw-s3cret", "PATH-s3cret", "q-s3cret")


@pytest.mark.parametrize(
    ("url", "ops", "admin"),
    [
        (
            URL,
            "https://hooks.example.com:443",
            "https://***@hooks.example.com/hooks/T0/PATH-s3cret?token=***&v=***#***",
        ),
        ("http://127.0.0.1:8080/up", "http://127.0.0.1:8080", "http://127.0.0.1:8080/up"),
        ("http://[::1]:9000/x?a", "http://[::1]:9000", "http://[::1]:9000/x?a"),
        ("HTTP://Hooks.Example.COM/x", "http://hooks.example.com:80", "http://Hooks.Example.COM/x"),
        (
            "http://h.example:70000/p?t=1",
            "http://h.example:70000",
            "http://h.example:70000/p?t=***",
        ),
        ("", "", ""),  # a pull subscription
    ],
)
def test_subscriber_url_secrets_each_role_sees_its_view(url: str, ops: str, admin: str) -> None:
    assert (shown_url(url, "ops"), shown_url(url, "admin")) == (ops, admin)


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.InvalidUrlClientError(URL),  # what a port out of range raised, the URL whole
        aiohttp.InvalidURL(yarl.URL(URL)),  # as yarl spells it
        ValueError(f"port out of range in {URL}"),
        ValueError(f"bad path {yarl.URL(URL).raw_path} and query {yarl.URL(URL).raw_query_string}"),
        ValueError("token PATH-s3cret alone, then q-s3cret, then pw-s3cret and erp-user"),
        ValueError("path%20encoded: /hooks/T0/PATH-s3cret, " + "x" * 600 + " q-s3cret"),
    ],
)
def test_subscriber_url_secrets_never_in_an_error_text(exc: Exception) -> None:
    text = describe(exc, URL)
    assert text.startswith(type(exc).__name__ + ": ")
    assert not [secret for secret in SECRETS if secret in text], text
    assert len(text) <= MAX_ERROR_CHARS


def test_the_url_in_an_error_becomes_its_origin() -> None:
    text = describe(aiohttp.InvalidUrlClientError(URL), URL)
    assert text == "InvalidUrlClientError: https://hooks.example.com:443"


def test_scrubbing_keeps_the_host_and_short_words() -> None:
    url = "https://hooks.example.com/hooks/abcdef-token?id=42"
    text = scrub("Cannot connect to host hooks.example.com:443 ssl:default [refused]", url)
    assert text == "Cannot connect to host hooks.example.com:443 ssl:default [refused]"
    assert scrub("got abcdef-token back", url) == "got *** back"


@pytest.mark.parametrize(
    ("location", "shown"),
    [("https://other.example/x?t=1", "https://other.example:443"), ("/rel?t=1", "***")],
)
def test_origin_of_any_url(location: str, shown: str) -> None:
    assert origin(location) == shown


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("https://other.example/x?t=q-s3cret", "https://other.example:443"),
        ("/elsewhere?t=q-s3cret", "https://hooks.example.com:443"),  # relative: same origin
        ("http://[broken/x", "***"),
    ],
)
def test_a_redirect_is_named_by_its_target_origin(location: str, shown: str) -> None:
    assert redirect_origin(URL, location) == shown

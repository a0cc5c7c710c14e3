"""`/openapi.json` describes every endpoint, and the live gateway answers as it says.

schemathesis generates requests (valid and invalid) for every operation from the description and
sends them to a real gateway process on a real Redis, with subscriptions and a dead letter in
place; no answer may be a 500, and every answer must match its documented status, content type,
headers and schema.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from app.config import load_settings
from app.openapi import document, paths
from app.server import create_app
from tests.conftest import AUTH, HEADER, TOKEN, Gateway, gateway_config, notification
from tests.relaying import SECRET
from tests.subscribers import Reply, Sink

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
FEED_TOKEN = "feed-token"
ADMIN_TOKEN = "admin-token"

SUBSCRIPTIONS = f"""
[[subscriptions]]
id = "push"
url = "{{sink}}"
secret = "{SECRET}"
retry_schedule = []

[[subscriptions]]
id = "pull"
mode = "pull"
token = "{FEED_TOKEN}"

[ops]  # schemathesis's sign-in attempts fail by the hundred: not throttled, so it sees the rest
sign_in_failures_per_client = 1000000
sign_in_failures_total = 1000000
"""


@pytest.fixture(scope="module")
def api(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway with a push and a pull subscription, one dead letter and one pending item."""
    tmp = tmp_path_factory.mktemp("openapi")
    prefix = f"test-openapi-{os.getpid()}"
    config = gateway_config(tmp, prefix)
    with Sink() as sink:
        sink.script("/push", Reply(status=500))
        config.write_text(config.read_text() + SUBSCRIPTIONS.replace("{sink}", sink.url("/push")))
        env = {**os.environ, "REDIS_URL": redis_url, "ORDERHOOK_ADMIN_TOKEN": ADMIN_TOKEN}
        process = Gateway(config, env, tmp / "gateway.log").start()
        try:
            r = httpx.post(process.url + "/hooks/vtex", json=notification(), headers=AUTH)
            assert r.status_code == 200, r.text
            yield process
        finally:
            process.stop()
            import redis

            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(match=f"{{{prefix}}}*", count=1000):
                client.delete(key)
            client.close()


@pytest.fixture(scope="module")
def api_schema(api: Gateway) -> Any:
    return schemathesis.openapi.from_url(api.url + "/openapi.json")


# Negative cases (invalid on purpose) only where there is input to make invalid; a urlencoded
# form is strings whatever is sent, so schemathesis cannot make one invalid.
OPERATIONS = [
    (path, method.upper(), mode)
    for path, item in paths().items()
    for method, op in item.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE
    or "parameters" in op
    or "application/json" in op.get("requestBody", {}).get("content", {})
]


def credentials(path: str) -> dict[str, str]:
    if path.startswith("/feed/"):
        return {"Authorization": f"Bearer {FEED_TOKEN}"}
    if path == "/hooks/vtex":
        return {HEADER: TOKEN}
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.mark.parametrize(("path", "method", "mode"), OPERATIONS)
def test_no_server_error_and_every_answer_as_documented(
    api_schema: Any, path: str, method: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=40, deadline=None, database=None)
    def check(case: Any) -> None:
        case.call_and_validate(headers=credentials(path), checks=CHECKS, timeout=10)

    check()


def test_every_route_is_described_and_nothing_else(tmp_path: Path) -> None:
    app = create_app(load_settings(gateway_config(tmp_path, "unused"), {}))
    served = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    described = {
        (path, method)
        for path, item in document(app.state.settings)["paths"].items()
        for method in item
    }
    assert served == described


def test_the_hook_header_is_the_configured_one(api: Gateway) -> None:
    doc = httpx.get(api.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["hookAuth"]["name"].lower() == HEADER.lower()

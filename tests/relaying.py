"""Fixtures and helpers for tests that relay events to real subscribers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from app.config import load_settings
from app.server import create_app
from app.store.schema import Keys
from tests.conftest import AUTH, CONFIG_TOML, notification
from tests.subscribers import Sink

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD_SECRET = "whsec_dGhpcy1pcy1hbi1vbGQtc2VjcmV0LW9mLTMyLWJ5dA=="
ADMIN = {"Authorization": "Bearer admin-token"}

Gateway = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as server:
        yield server


@pytest.fixture
def gateway(redis_url: str, keys: Keys, tmp_path: Path) -> Gateway:
    """An in-process gateway whose config is the test sources plus the given subscriptions."""

    @asynccontextmanager
    async def start(subscriptions_toml: str, **extra_env: str) -> AsyncIterator[httpx.AsyncClient]:
        path = tmp_path / "orderhook.toml"
        path.write_text(CONFIG_TOML.replace("{prefix}", keys.prefix) + subscriptions_toml)
        env = {
            "REDIS_URL": redis_url,
            "ORDERHOOK_ADMIN_TOKEN": "admin-token",
            "ORDERHOOK_OPS_TOKEN": "ops-token",
            **extra_env,
        }
        app = create_app(load_settings(path, env))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                yield client

    return start


def subscription(sink: Sink, sub_id: str, **options: Any) -> str:
    lines = [
        "[[subscriptions]]",
        f'id = "{sub_id}"',
        f'url = "{sink.url("/" + sub_id)}"',
        f"secret = {orjson.dumps(options.pop('secret', SECRET)).decode()}",
        f"retry_schedule = {options.pop('retry_schedule', '[0.05, 0.05]')}",
        f"timeout = {options.pop('timeout', 2)}",
    ]
    lines += [f"{key} = {value}" for key, value in options.items()]
    return "\n" + "\n".join(lines) + "\n"


async def hook(client: httpx.AsyncClient, **changes: Any) -> str:
    r = await client.post("/hooks/vtex", json=notification(**changes), headers=AUTH)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def body(received: Any) -> dict[str, Any]:
    return dict(orjson.loads(received.body))


async def until(
    fetch: Callable[[], Any], done: Callable[[httpx.Response], bool], timeout: float = 5
) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response: httpx.Response = await fetch()
        if done(response):
            return response
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met: {response.text}")
        await asyncio.sleep(0.05)

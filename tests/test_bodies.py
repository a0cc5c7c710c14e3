"""Issue 12, item 15: every route has a body limit, checked while the body is read.

Each route of the app is enumerated, so a route added later without a limit fails here: an
over-limit body gets 413 with a JSON error naming the limit, whether its Content-Length says so
up front or it arrives chunked. A live gateway sent 50 MB bodies keeps its memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from starlette.datastructures import Secret
from starlette.routing import Route

from app.bodies import DEFAULT_MAX_BODY_BYTES
from app.config import Settings, Source
from app.server import BODY_LIMITS, create_app
from app.store.schema import Keys
from tests.conftest import AUTH, HEADER, TOKEN, Gateway, gateway_config

SETTINGS = Settings(
    sources=(Source("mystore", HEADER.lower(), Secret(TOKEN)),), max_body_bytes=4096
)
ROUTES = [
    (route.path, method)
    for route in create_app(SETTINGS).routes
    if isinstance(route, Route)
    for method in sorted(route.methods or ())
    if method != "HEAD"
]
FEED_TOKEN = "feed-token"
BIG_BYTES = 50 * 1024 * 1024
RSS_GROWTH_MAX_BYTES = 25 * 1024 * 1024


def limit_of(path: str) -> int:
    if path == "/hooks/vtex":
        return SETTINGS.max_body_bytes
    return BODY_LIMITS.get(path, DEFAULT_MAX_BODY_BYTES)


def concrete(path: str) -> str:
    return path.replace("{subscription}", "pull").replace("{id}", "1-0")


def credentials(path: str) -> dict[str, str]:
    """What each route wants, so that the body (not the token) is what it refuses."""
    token = FEED_TOKEN if path.startswith("/feed/") else "admin-token"
    return {**AUTH, "Authorization": f"Bearer {token}"}


def test_the_routes_are_all_enumerated() -> None:
    assert ("/api/orders/expressions/jsonata", "POST") in ROUTES
    assert ("/feed/{subscription}/commit", "POST") in ROUTES
    assert len(ROUTES) >= 19


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process with its lifespan (the sign-in throttle wants the store); a route
    that gets past its body limit may still fail for want of a relay: it is not the point."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
            yield c


@pytest.mark.anyio
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(("path", "method"), ROUTES)
async def test_every_route_refuses_a_body_over_its_limit(
    client: httpx.AsyncClient, path: str, method: str, chunked: bool
) -> None:
    limit = limit_of(path)
    body = b"{" + b" " * limit + b"}"  # one byte over, and valid JSON

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1024):
            yield body[start : start + 1024]

    r = await client.request(
        method, concrete(path), content=chunks() if chunked else body, headers=credentials(path)
    )
    assert r.status_code == 413, r.text
    assert r.json() == {"error": f"body is over the limit of {limit} bytes"}


@pytest.mark.anyio
@pytest.mark.parametrize(("path", "method"), ROUTES)
async def test_every_route_takes_a_body_at_its_limit(
    client: httpx.AsyncClient, path: str, method: str
) -> None:
    """The limit refuses only what is over it (the route answers as it would anyway)."""
    body = b"{" + b" " * (limit_of(path) - 2) + b"}"
    r = await client.request(method, concrete(path), content=body, headers=credentials(path))
    assert r.status_code != 413


class RssWatch:
    """The gateway's resident memory, sampled every 10 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def send_big_body(
    port: int, method: str, path: str, headers: dict[str, str], chunked: bool
) -> tuple[int, bytes]:
    """Stream BIG_BYTES to the gateway, stopping once it answers: (status, answer body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {BIG_BYTES}"
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}{framing}\r\n\r\n".encode())

    async def send() -> None:
        chunk = b" " * 65536
        framed = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
        for _ in range(BIG_BYTES // len(chunk)):
            writer.write(framed)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        status = int((await asyncio.wait_for(reader.readline(), 30)).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        answer = await reader.readexactly(length)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return status, answer


@pytest.fixture
def live_with_tokens(redis_url: str, keys: Keys, tmp_path: Path) -> Iterator[Gateway]:
    """The gateway with the admin and ops tokens and a pull subscription, so that every route
    gets as far as reading its body."""
    config = gateway_config(tmp_path, keys.prefix)
    config.write_text(
        config.read_text()
        + f'[[subscriptions]]\nid = "pull"\nmode = "pull"\ntoken = "{FEED_TOKEN}"\n'
    )
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "ORDERHOOK_ADMIN_TOKEN": "admin-token",
        "ORDERHOOK_OPS_TOKEN": "ops-token",
    }
    process = Gateway(config, env, tmp_path / "gateway.log").start()
    yield process
    process.stop()


@pytest.mark.timeout(120)
def test_50_mb_bodies_are_refused_while_read_and_memory_stays_bounded(
    live_with_tokens: Gateway,
) -> None:
    assert live_with_tokens.proc is not None
    posts = [(path, method) for path, method in ROUTES if method != "GET"]
    answers = {}
    with RssWatch(live_with_tokens.proc.pid) as rss:
        for path, method in posts:
            for chunked in (False, True):
                headers = {HEADER: TOKEN, **credentials(path)}
                started = time.monotonic()
                answers[(path, chunked)] = asyncio.run(
                    send_big_body(live_with_tokens.port, method, concrete(path), headers, chunked)
                ) + (time.monotonic() - started,)
    for (path, chunked), (status, answer, took_s) in answers.items():
        assert status == 413, (path, chunked, answer)
        assert b"over the limit of" in answer
        assert took_s < 5
    assert rss.peak - rss.baseline < RSS_GROWTH_MAX_BYTES, (rss.baseline, rss.peak)
    assert httpx.get(live_with_tokens.url + "/healthz").status_code == 200

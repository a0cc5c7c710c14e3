"""Subscribers for tests: a real HTTP server on 127.0.0.1 that records what it receives and
answers as each test tells it, per path."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from tests.conftest import free_port


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # accept the request and never answer


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()


class Sink:
    """Each path answers from its own list of replies in turn, then 200 for ever after."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[Received] = []
        self._replies: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self._replies[path] = list(replies)

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    async def wait_for(self, path: str, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait (without blocking the test's event loop) until `path` got `count` requests."""
        deadline = time.monotonic() + timeout
        while len(self.at(path)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{path}: {len(self.at(path))} of {count} requests arrived")
            await asyncio.sleep(0.01)
        return self.at(path)

    def wait_for_sync(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        with self._lock:
            self.received.append(
                Received(request.path, dict(request.headers), body, time.monotonic())
            )
            queue = self._replies.get(request.path, [])
            reply = queue.pop(0) if queue else Reply()
        if reply.hang:
            assert self._stop is not None
            await self._stop.wait()
        return web.Response(status=reply.status, headers=reply.headers, text="ok")

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> Sink:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("sink did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

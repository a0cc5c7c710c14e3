"""Subscribers for tests: a real HTTP server on 127.0.0.1 that records what it receives and
answers as each test tells it, per path."""

from __future__ import annotations

import asyncio
import random
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
    body_bytes: int = 0  # answer with a body this long, in 64 KiB chunks ...
    chunk_delay_s: float = 0.0  # ... this far apart
    cut: bool = False  # send the status line, headers and part of the body, then close


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()
    status: int = 200  # what the sink answered


class Sink:
    """Each path answers from its own list of replies in turn, then 200 for ever after."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[Received] = []
        self._replies: dict[str, list[Reply]] = {}
        self._flaky: dict[str, tuple[float, random.Random]] = {}
        self._rules: dict[str, tuple[Callable[[bytes], bool], float]] = {}
        self.body_bytes_sent: list[int] = []  # per slow-body reply: bytes written before the end
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

    def flaky(self, path: str, ratio: float, seed: int = 0) -> None:
        """Beyond any scripted replies, answer 500 to this share of requests, at random."""
        with self._lock:
            self._flaky[path] = (ratio, random.Random(seed))

    def rule(
        self, path: str, fail: Callable[[bytes], bool] = lambda body: False, delay_s: float = 0
    ) -> None:
        """Beyond any scripted replies: answer 500 to the bodies `fail` picks; answer each
        request only after `delay_s`."""
        with self._lock:
            self._rules[path] = (fail, delay_s)

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
            queue = self._replies.get(request.path, [])
            scripted = bool(queue)
            reply = queue.pop(0) if queue else Reply()
            if not scripted and request.path in self._flaky:
                ratio, rng = self._flaky[request.path]
                reply = Reply(status=500) if rng.random() < ratio else reply
            fail, delay_s = self._rules.get(request.path, (None, 0.0))
            if not scripted and fail is not None and fail(body):
                reply = Reply(status=500)
            self.received.append(
                Received(request.path, dict(request.headers), body, time.monotonic(), reply.status)
            )
        if delay_s:
            await asyncio.sleep(delay_s)
        if reply.hang:
            assert self._stop is not None
            await self._stop.wait()
        if reply.cut or reply.body_bytes:
            return await self._stream(request, reply)
        return web.Response(status=reply.status, headers=reply.headers, text="ok")

    async def _stream(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        response.content_length = max(reply.body_bytes, 1000)
        await response.prepare(request)
        if reply.cut:
            await response.write(b"x" * 100)
            assert request.transport is not None
            request.transport.close()
            return response
        sent = 0
        try:
            while sent < reply.body_bytes:
                chunk = b"x" * min(65536, reply.body_bytes - sent)
                await response.write(chunk)
                sent += len(chunk)
                await asyncio.sleep(reply.chunk_delay_s)
        except (ConnectionError, RuntimeError):  # the client went away
            pass
        finally:
            with self._lock:
                self.body_bytes_sent.append(sent)
        return response

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

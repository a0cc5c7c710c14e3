"""The gateway's Redis client: made once at start-up, every error wrapped in StoreUnavailable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import Any, TypeVar, cast

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from app.errors import StoreUnavailable
from app.events import order_key
from app.store.keys import Keys

DEFAULT_MAX_CONNECTIONS = 64
_NOT_READY = ("LOADING", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN")

T = TypeVar("T")


def load_script(name: str) -> str:
    return resources.files("app.store").joinpath(name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Appended:
    """The outcome of appending one event: `created` is False for a duplicate."""

    created: bool
    entry_id: str


class Store:
    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        dedupe_window_s: int,
        deadline_s: float,
    ) -> None:
        self.client = client
        self.keys = keys
        self.dedupe_window_s = dedupe_window_s
        self.deadline_s = deadline_s
        self._ingest = client.register_script(load_script("ingest.lua"))

    async def append(self, events: Sequence[dict[str, Any]]) -> list[Appended]:
        """Dedupe and append events atomically; one round trip for the whole batch. Every
        appended event gets its order's next sequence number, whoever appends it (the hook,
        feed backup), so routers in any process hand an order's events on in append order."""
        minute = int(time.time() // 60)
        keys = [self.keys.ingest_stream, self.keys.stats, self.keys.ingest_minute(minute)]
        keys += [self.keys.seen(e["id"]) for e in events]
        args: list[Any] = [self.dedupe_window_s, self.keys.tag]
        for event in events:
            args += [event["id"], orjson.dumps(event), order_key(event)]
        rows = await self.script(self._ingest, keys, args)
        return [Appended(created=bool(flag), entry_id=_text(entry)) for flag, entry in rows]

    async def script(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a registered Lua script under the guard."""
        return await self.guard(partial(script, keys=list(keys), args=cast(list[Any], args)))

    async def ping(self) -> bool:
        return bool(await self.guard(self.client.ping))

    async def close(self) -> None:
        await self.client.aclose()

    async def guard(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run a Redis call within the deadline (retries included); a connection, timeout or
        loading error becomes StoreUnavailable, so the hook answers 503 well within VTEX's 5 s.
        """
        try:
            async with asyncio.timeout(self.deadline_s):
                return await call()
        except ResponseError as exc:
            if str(exc).startswith(_NOT_READY):
                raise StoreUnavailable(f"redis is not ready: {exc}") from exc
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"redis is unreachable: {type(exc).__name__}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def make_client(url: str, timeout_s: float) -> aioredis.Redis:
    """A client with a bounded pool and timeouts on connect, read and pool wait."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=DEFAULT_MAX_CONNECTIONS,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it


@asynccontextmanager
async def open_store(url: str, keys: Keys, timeout_s: float, window_s: int) -> AsyncIterator[Store]:
    store = Store(make_client(url, timeout_s), keys, window_s, timeout_s)
    try:
        yield store
    finally:
        await store.close()

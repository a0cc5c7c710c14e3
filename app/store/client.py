"""The gateway's Redis client: made once at start-up, every error wrapped in StoreUnavailable.

It also knows whether Redis can hold the queue at all: an accepted event lives only in Redis,
so a Redis that may evict keys (any maxmemory-policy but noeviction) could drop it unseen.
With noeviction, a full Redis refuses writes instead ("OOM"): that is StoreUnavailable too,
a 503 + Retry-After, and VTEX retries once memory is freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AuthenticationError,
    ClusterDownError,
    MasterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeout

from app.errors import StoreMayEvict, StoreUnavailable
from app.events import order_key
from app.store.schema import Keys
from app.store.scripts import register

DEFAULT_MAX_CONNECTIONS = 64
# Redis cannot take writes now (a replica after a failover, a failing save, a cluster in
# change): redis-py raises these classes with the code cut off the message; an error it does
# not map (MISCONF) keeps the code as the message's first word, and Redis 6 wraps a script's
# in its own ("Error running script ...: -READONLY You can't write ...").
_NOT_READY = ("LOADING", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN", "MISCONF")
_NOT_READY_CLASSES = (ReadOnlyError, MasterDownError, TryAgainError, ClusterDownError)
# Redis 7 answers a refused write with "OOM command not allowed ..." (OutOfMemoryError), also
# from within a script; Redis 6 wraps it in the script's error ("ERR Error running script ...").
_OUT_OF_MEMORY = "OOM command not allowed"
NO_EVICTION = "noeviction"
READY_PROBE_TTL_MS = 60_000

T = TypeVar("T")
# The accounts whose last accepted time ingest keeps (ingest.silent watches them; not every
# account a `*` source lets in, which anyone can make up); None: every account.
Watched = frozenset[str] | None


def _appended(event: dict[str, Any], trace: str, watched: Watched) -> dict[str, str]:
    """An event as ingest.lua's plan names it: its id, order key, account if watched (its last
    accepted time is kept) and trace context, if any."""
    planned = {"id": event["id"], "order": order_key(event)}
    if watched is None or event["account"] in watched:
        planned["account"] = event["account"]
    return {**planned, "trace": trace} if trace else planned


def now_ms() -> int:
    return int(time.time() * 1000)


def text(value: bytes | str) -> str:
    """A Redis reply's bytes as text."""
    return value.decode() if isinstance(value, bytes) else value


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
        assume_noeviction: bool = False,
        watched_accounts: Watched = None,
    ) -> None:
        self.client = client
        self.watched_accounts = watched_accounts
        self.address = redis_address(client)  # for the operator: host:port/db, no password
        self.keys = keys
        self.dedupe_window_s = dedupe_window_s
        self.deadline_s = deadline_s
        # Where Redis hides its maxmemory-policy, the operator's word that it is noeviction.
        self.assume_noeviction = assume_noeviction
        # What the last policy check found wrong (events are refused meanwhile), or None.
        self.eviction_problem: str | None = None
        self._ingest = register(client, keys, "ingest.lua", rules=False)

    async def append(
        self, events: Sequence[dict[str, Any]], traces: Sequence[str] = ()
    ) -> list[Appended]:
        """Dedupe and append events atomically; one round trip for the whole batch. `traces`:
        each event's trace context (a W3C traceparent, "" for none; app/tracing.py). Every
        appended event gets its order's next sequence number, whoever appends it (the hook,
        feed backup), so routers in any process hand an order's events on in append order.
        Refused (StoreMayEvict) while the last check found that Redis may evict them."""
        if self.eviction_problem is not None:
            raise StoreMayEvict(self.eviction_problem)
        traces = traces or [""] * len(events)
        plan = {
            "windowS": self.dedupe_window_s,
            "minute": int(time.time() // 60),
            "nowMs": now_ms(),
            "events": [
                _appended(e, t, self.watched_accounts) for e, t in zip(events, traces, strict=True)
            ],
        }
        args = [orjson.dumps(plan), *(orjson.dumps(e) for e in events)]
        rows = await self.script(self._ingest, [], args)
        return [Appended(created=bool(flag), entry_id=text(entry)) for flag, entry in rows]

    async def script(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a registered Lua script under the guard. Every script declares at least one key
        of the prefix's hash slot (the stats hash if the script names none): its other keys are
        in that slot too, and a cluster or proxy routes it there."""
        declared = list(keys) or [self.keys.stats]
        return await self.guard(partial(script, keys=declared, args=cast(list[Any], args)))

    async def ensure_group(self, stream: str, group: str) -> None:
        """Create `group` on `stream` (and the stream), reading from its start, unless it
        exists (BUSYGROUP)."""
        try:
            await self.guard(
                lambda: self.client.xgroup_create(stream, group, id="0", mkstream=True)
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def ping(self) -> bool:
        return bool(await self.guard(self.client.ping))

    async def maxmemory_policy(self) -> str | None:
        """Redis's maxmemory-policy: CONFIG GET, or INFO memory where a managed Redis refuses
        CONFIG; None when neither tells."""
        with contextlib.suppress(ResponseError):  # CONFIG refused or renamed
            reply = await self.guard(partial(self.client.config_get, "maxmemory-policy"))
            value = next(iter(reply.values()), None) if reply else None
            if value:
                return text(value)
        with contextlib.suppress(ResponseError):
            info = await self.guard(partial(self.client.info, "memory"))
            if info.get("maxmemory_policy"):
                return str(info["maxmemory_policy"])
        return None

    async def check_eviction(self) -> None:
        """Raise StoreMayEvict unless Redis runs noeviction; the finding is kept for append."""
        self.eviction_problem = eviction_problem(
            await self.maxmemory_policy(), self.assume_noeviction
        )
        if self.eviction_problem is not None:
            raise StoreMayEvict(self.eviction_problem)

    async def check_ready(self) -> None:
        """Raise StoreUnavailable unless Redis answers, runs noeviction and takes a write now
        (it refuses every write once out of memory)."""
        await self.check_eviction()
        await self.guard(
            partial(self.client.set, self.keys.ready_probe, b"1", px=READY_PROBE_TTL_MS)
        )

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
            if isinstance(exc, OutOfMemoryError) or _OUT_OF_MEMORY in str(exc):
                raise self._unavailable(
                    "is out of memory (maxmemory reached): it refuses writes"
                ) from exc
            if _not_ready(exc):
                raise self._unavailable(f"is not ready: {exc}") from exc
            if isinstance(exc, NoPermissionError):  # its ACL: the operator's to mend
                raise self._unavailable(f"refuses a command: {exc}") from exc
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            reason = why_unreachable(exc, self.deadline_s)
            raise self._unavailable(f"is unreachable: {reason}") from exc

    def _unavailable(self, what: str) -> StoreUnavailable:
        """`redis at ADDRESS {what}` for the log (scrubbed of the password, whatever Redis or
        the client library wrote in `what`); without the address for /readyz."""
        password = self.client.connection_pool.connection_kwargs.get("password")
        if password:
            what = what.replace(str(password), "***")
        return StoreUnavailable(f"redis at {self.address} {what}", public=f"redis {what}")


def _not_ready(exc: ResponseError) -> bool:
    """Whether Redis refused because it cannot take writes now (_NOT_READY)."""
    text = str(exc)
    return (
        isinstance(exc, _NOT_READY_CLASSES)
        or text.startswith(_NOT_READY)
        or any(f"-{code} " in text for code in _NOT_READY)
    )


def redis_address(client: aioredis.Redis) -> str:
    """Where `client` connects, as the operator can check it against REDIS_URL: `host:port/db`
    or `unix:PATH db N`; never the user or password."""
    kwargs = client.connection_pool.connection_kwargs
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        return f"unix:{kwargs['path']} db {db}"
    host = str(kwargs.get("host", "localhost"))
    return f"{f'[{host}]' if ':' in host else host}:{kwargs.get('port', 6379)}/{db}"


def why_unreachable(exc: BaseException, deadline_s: float) -> str:
    """Why a connection to Redis failed, in the operator's words: connection refused, DNS
    failure, authentication failure, timeout; else the error's type and message."""
    if (auth := _in_chain(exc, AuthenticationError)) is not None:
        return f"authentication failed: {auth}"  # Redis's words: they never quote the password
    cause = _in_chain(exc, OSError)  # redis-py wraps it in its ConnectionError
    if isinstance(exc, RedisTimeout) or isinstance(cause, TimeoutError):
        return f"no answer within {deadline_s:g} s (timeout)"
    if isinstance(cause, socket.gaierror):
        return f"DNS lookup failed: {cause.strerror}"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if cause is not None and cause.strerror:
        return cause.strerror
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


E = TypeVar("E", bound=BaseException)


def _in_chain(exc: BaseException | None, kind: type[E]) -> E | None:
    """`exc`, or the first error it was raised from or during, that is a `kind`."""
    for _ in range(8):  # a bound: a chain is a handful long
        if exc is None or isinstance(exc, kind):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def eviction_problem(policy: str | None, assume_noeviction: bool = False) -> str | None:
    """What is wrong with Redis's maxmemory-policy for a queue of events, in one line; None if
    nothing. A policy Redis does not tell counts as wrong unless the operator vouches for it."""
    if policy == NO_EVICTION or (policy is None and assume_noeviction):
        return None
    if policy is None:
        return (
            "redis does not tell its maxmemory-policy (CONFIG GET and INFO refused): make sure "
            "it is noeviction, then set [store] assume_noeviction = true"
        )
    return (
        f"redis has maxmemory-policy {policy}: it may evict accepted events; "
        f"set maxmemory-policy to {NO_EVICTION}"
    )


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
async def open_store(
    url: str,
    keys: Keys,
    timeout_s: float,
    window_s: int,
    assume_noeviction: bool = False,
    watched_accounts: Watched = None,
) -> AsyncIterator[Store]:
    client = make_client(url, timeout_s)
    store = Store(client, keys, window_s, timeout_s, assume_noeviction, watched_accounts)
    try:
        yield store
    finally:
        await store.close()

"""Redis round trips and commands of one dashboard load (and /ops/stats, /metrics,
/admin/subscriptions), for S subscriptions, and the dashboard's load time.

Run from the repository root (or with PYTHONPATH at another checkout, to measure its code):

    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python -m bench.roundtrips [--subs 1,5,20]

It drives the app in-process (its lifespan running) under a private key prefix, with a few dead
letters and an order of two events seeded per run. Round trips are counted by a wrapper on
redis-py's connection: one `send_packed_command` is one round trip (a pipeline sends all its
commands at once), one `read_response` one command's reply. Only calls made from the request's
own task (a context variable) count, not the gateway's workers. The load time is the median of
`--loads` dashboard loads, on Redis directly and through a proxy that holds each request to
Redis 1 ms (as a Redis across a network would).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import redis
from redis.asyncio.connection import AbstractConnection

from app.config import load_settings
from app.server import create_app
from app.store.schema import Keys

ADMIN = {"Authorization": "Bearer admin-token"}
PAGES = {
    "dashboard": "/ops",
    "dashboard+order": "/ops?orderId=v1-01",
    "stats": "/ops/stats",
    "metrics": "/metrics",
    "admin subscriptions": "/admin/subscriptions",
}


@dataclass
class Tally:
    round_trips: int = 0
    commands: int = 0
    sent: list[int] = field(default_factory=list)


_TALLY: ContextVar[Tally | None] = ContextVar("roundtrip_tally", default=None)


@contextlib.contextmanager
def counting_redis() -> Iterator[None]:
    """Count, into the current context's Tally, redis-py's sends and replies."""
    send, read = AbstractConnection.send_packed_command, AbstractConnection.read_response

    async def counted_send(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        if (tally := _TALLY.get()) is not None:
            tally.round_trips += 1
        return await send(self, command, *args, **kwargs)

    async def counted_read(self: Any, *args: Any, **kwargs: Any) -> Any:
        if (tally := _TALLY.get()) is not None:
            tally.commands += 1
        return await read(self, *args, **kwargs)

    AbstractConnection.send_packed_command = counted_send  # type: ignore[method-assign]
    AbstractConnection.read_response = counted_read  # type: ignore[method-assign]
    try:
        yield
    finally:
        AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
        AbstractConnection.read_response = read  # type: ignore[method-assign]


async def tallied(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> Tally:
    """GET `path`, counting the Redis calls the request makes (counting_redis active)."""
    tally = Tally()
    token = _TALLY.set(tally)
    try:
        r = await client.get(path, headers=headers)
        r.raise_for_status()
    finally:
        _TALLY.reset(token)
    return tally


def config(prefix: str, subs: int) -> str:
    lines = [
        'allow_networks = ["127.0.0.0/8"]',
        "[[sources]]",
        'account = "mystore"',
        'auth_header = "x-vtex-api-apptoken"',
        'auth_token = "bench-token"',
        "[store]",
        f'key_prefix = "{prefix}"',
    ]
    for n in range(subs):
        lines += ["[[subscriptions]]", f'id = "s{n}"', f'url = "http://127.0.0.1:9/s{n}"']
        lines += ['secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"']
    return "\n".join(lines) + "\n"


def seed(rdb: redis.Redis, keys: Keys, subs: int) -> None:
    """Three dead letters per subscription and an order (v1-01) of two logged events."""
    now = int(time.time() * 1000)
    for n in range(subs):
        for d in range(3):
            delivery = f"e{n}-{d}.s{n}"
            fields = {"id": delivery, "eventId": f"e{n}-{d}", "sub": f"s{n}", "attempts": 3}
            rdb.hset(keys.delivery(delivery), mapping={**fields, "deadMs": now - d})
            rdb.zadd(keys.dlq(f"s{n}"), {delivery: now - d})
    for e in ("ev-a", "ev-b"):
        rdb.sadd(keys.order("v1-01"), e)
        at = f"2026-12-03T10:00:0{e[-1] == 'b':d}Z"
        event = {"id": e, "orderId": "v1-01", "state": "invoiced", "receivedAt": at}
        attempt = {"at": at, "subscription": "s0", "orderId": "v1-01", "outcome": "delivered"}
        attempt |= {"status": 200, "durationMs": 3, "error": None}
        rdb.set(keys.event(e), orjson.dumps(event))
        rdb.lpush(keys.event_log(e), orjson.dumps(attempt))


@contextlib.asynccontextmanager
async def delay_proxy(host: str, port: int, delay_s: float) -> AsyncIterator[int]:
    """A TCP proxy to host:port that holds each request chunk `delay_s`; yields its port."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: float) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if hold:
                    await asyncio.sleep(hold)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, port)
        with contextlib.suppress(asyncio.CancelledError):  # the proxy closing at the end
            await asyncio.gather(pipe(reader, up_writer, delay_s), pipe(up_reader, writer, 0))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def measure(redis_url: str, subs: int, loads: int) -> dict[str, Any]:
    keys = Keys(f"bench-rt-{uuid.uuid4().hex[:8]}")
    rdb = redis.Redis.from_url(redis_url)
    seed(rdb, keys, subs)
    result: dict[str, Any] = {"subs": subs}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "orderhook.toml"
            path.write_text(config(keys.prefix, subs))
            result["counts"] = await _counts(path, redis_url)
            result["load_ms"] = await _load_ms(path, redis_url, loads)
            split = urlsplit(redis_url)
            async with delay_proxy(split.hostname or "127.0.0.1", split.port or 6379, 0.001) as p:
                slow = redis_url.replace(f":{split.port}", f":{p}", 1)
                result["load_ms_1ms"] = await _load_ms(path, slow, loads)
    finally:
        for key in rdb.scan_iter(match=keys.pattern, count=1000):
            rdb.delete(key)
        rdb.close()
    return result


@contextlib.asynccontextmanager
async def _app(path: Path, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    env = {"REDIS_URL": redis_url, "ORDERHOOK_ADMIN_TOKEN": "admin-token"}
    app = create_app(load_settings(path, env))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client


async def _counts(path: Path, redis_url: str) -> dict[str, tuple[int, int]]:
    async with _app(path, redis_url) as client:
        await client.get("/ops", headers=ADMIN)  # warm: connections made, scripts loaded
        with counting_redis():
            tallies = {name: await tallied(client, url, ADMIN) for name, url in PAGES.items()}
    return {name: (t.round_trips, t.commands) for name, t in tallies.items()}


async def _load_ms(path: Path, redis_url: str, loads: int) -> float:
    async with _app(path, redis_url) as client:
        await client.get("/ops", headers=ADMIN)
        times = []
        for _ in range(loads):
            start = time.perf_counter()
            (await client.get("/ops", headers=ADMIN)).raise_for_status()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subs", default="1,5,20")
    parser.add_argument("--loads", type=int, default=30)
    args = parser.parse_args()
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    import app  # which checkout's code is measured

    print(f"code: {Path(app.__file__).parent.parent}")
    print(f"{'S':>3} {'page':<20} {'round trips':>11} {'commands':>8}")
    for subs in (int(s) for s in args.subs.split(",")):
        r = asyncio.run(measure(redis_url, subs, args.loads))
        for name, (trips, commands) in r["counts"].items():
            print(f"{subs:>3} {name:<20} {trips:>11} {commands:>8}")
        print(
            f"{subs:>3} dashboard load, median ms: {r['load_ms']:.2f} direct, "
            f"{r['load_ms_1ms']:.2f} behind a 1 ms proxy"
        )


if __name__ == "__main__":
    main()

"""The gateway process: embedded store persistence, shutdown, and Redis outages."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psutil
import pytest
import redis
from starlette.datastructures import Secret

from app.config import Settings, Source
from app.server import create_app
from app.store.embedded import redis_executable
from app.store.schema import Keys
from tests.conftest import AUTH, HEADER, TOKEN, Gateway, free_port, gateway_config, notification

PREFIX = "embedded"


def embedded_gateway(tmp_path: Path) -> Gateway:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["ORDERHOOK_DATA_DIR"] = str(tmp_path / "data")
    return Gateway(gateway_config(tmp_path, PREFIX), env, tmp_path / "gateway.log")


def redis_children(gateway: Gateway) -> list[psutil.Process]:
    assert gateway.proc is not None
    return [p for p in psutil.Process(gateway.proc.pid).children() if "redis" in p.name()]


def post(gateway: Gateway, **changes: object) -> dict[str, str]:
    r = httpx.post(gateway.url + "/hooks/vtex", json=notification(**changes), headers=AUTH)
    assert r.status_code == 200, r.text
    return dict(r.json())


class OwnRedis:
    """A redis-server the test starts and stops, with appendonly in its own directory."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [
                redis_executable(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        with redis.Redis(port=self.port) as client:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:  # BusyLoadingError too, while it reads its file
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def stored_ids(data_dir: Path) -> list[str]:
    """Read the embedded store's append-only file back through a redis-server of our own."""
    server = OwnRedis(data_dir)
    server.start()
    try:
        with redis.Redis(port=server.port) as client:
            entries = client.xrange(Keys(PREFIX).ingest_stream)
        return [fields[b"id"].decode() for _, fields in entries]
    finally:
        server.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_embedded_store_survives_restart_and_leaves_no_redis_behind(
    tmp_path: Path, sig: signal.Signals
) -> None:
    gateway = embedded_gateway(tmp_path).start()
    try:
        first = post(gateway)
        assert first["status"] == "accepted"
        [child] = redis_children(gateway)
        assert gateway.stop(sig) == 0
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        gateway.start()
        assert post(gateway) == {"status": "duplicate", "id": first["id"]}
        second = post(gateway, State="invoiced")
    finally:
        gateway.stop()
    assert stored_ids(tmp_path / "data") == [first["id"], second["id"]]


def test_sigkilled_gateway_takes_its_redis_along_and_loses_nothing(tmp_path: Path) -> None:
    gateway = embedded_gateway(tmp_path).start()
    try:
        ids = [post(gateway, OrderId=f"o-{i}")["id"] for i in range(20)]
        [child] = redis_children(gateway)
        gateway.stop(signal.SIGKILL)
        child.wait(15)  # the parent-death signal stops the embedded redis-server too
        gateway.start()  # takes the data directory's lock again
        assert [post(gateway, OrderId=f"o-{i}")["status"] for i in range(20)] == ["duplicate"] * 20
    finally:
        gateway.stop()
    assert stored_ids(tmp_path / "data") == ids


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@pytest.mark.anyio
async def test_redis_down_answers_503_then_recovers(own_redis: OwnRedis, tmp_path: Path) -> None:
    settings = Settings(
        sources=(Source("mystore", HEADER.lower(), Secret(TOKEN)),),
        redis_url=own_redis.url,
        key_prefix="outage",
        redis_timeout_s=1.0,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:

            async def send(order: str) -> httpx.Response:
                body = notification(OrderId=order)
                return await client.post("/hooks/vtex", json=body, headers=AUTH)

            before = await send("before")
            assert before.status_code == 200
            own_redis.kill()
            down = await send("during")
            assert down.status_code == 503
            assert "unavailable" in down.json()["error"]
            assert down.headers["retry-after"]
            assert (await client.get("/readyz")).status_code == 503
            assert (await client.get("/healthz")).status_code == 200
            own_redis.start()
            assert (await client.get("/readyz")).status_code == 200
            again = await send("during")
            assert again.json()["status"] == "accepted"
            assert (await send("before")).json() == {
                "status": "duplicate",
                "id": before.json()["id"],
            }


@pytest.mark.anyio
async def test_a_redis_that_never_answers_gets_503_within_vtex_timeout() -> None:
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, never answer

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = Settings(
        sources=(Source("mystore", HEADER.lower(), Secret(TOKEN)),),
        redis_url=f"redis://127.0.0.1:{port}/0",
        redis_timeout_s=0.5,
    )
    app = create_app(settings)
    async with server:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                started = time.monotonic()
                r = await client.post("/hooks/vtex", json=notification(), headers=AUTH)
                elapsed = time.monotonic() - started
        # only now has every task that might still connect stopped: close what was accepted
        for writer in held:
            writer.close()
            await writer.wait_closed()
    assert r.status_code == 503
    assert elapsed < 5.0  # VTEX counts anything slower as a failure


def test_sigterm_finishes_a_request_in_flight(live: Gateway, rdb: redis.Redis, keys: Keys) -> None:
    body = orjson.dumps(notification(OrderId="in-flight"))
    head = (
        f"POST /hooks/vtex HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{HEADER}: {TOKEN}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(head + body[:10])
        time.sleep(0.2)
        assert live.proc is not None
        live.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the gateway is shutting down, the request still in flight
        sock.sendall(body[10:])
        answer = sock.makefile("rb").read().decode()
    assert answer.startswith("HTTP/1.1 200"), answer
    assert '"status":"accepted"' in answer
    assert live.stop() == 0
    assert rdb.xlen(keys.ingest_stream) == 1

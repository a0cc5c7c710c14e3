"""Shared fixtures: a real Redis (REDIS_URL, or an embedded one), the app in-process and live."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from starlette.datastructures import Secret

from app.config import Settings, Source
from app.server import create_app
from app.store.embedded import EmbeddedRedis
from app.store.schema import Keys, known_key

TOKEN = "s3cret-token"
HEADER = "X-Orderhook-Token"
WILDCARD_HEADER = "X-Any-Account"
WILDCARD_TOKEN = "wildcard-token"
AUTH = {HEADER: TOKEN, "Content-Type": "application/json"}

SPEC_EXAMPLE: dict[str, Any] = {
    "Domain": "Fulfillment",
    "OrderId": "v52277740atmc-01",
    "State": "ready-for-handling",
    "LastState": "window-to-cancel",
    "LastChange": "2019-08-14T17:11:39.2550122Z",
    "CurrentChange": "2019-08-14T17:12:48.0965893Z",
    "Origin": {"Account": "mystore", "Key": "vtexappkey-appvtex"},
}


def notification(**changes: Any) -> dict[str, Any]:
    """VTEX's spec example for the account `mystore`, with fields changed or removed (None)."""
    doc = {**SPEC_EXAMPLE, "Origin": dict(SPEC_EXAMPLE["Origin"])}
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


# Ports for the test's servers, below Linux's ephemeral range (32768-60999: outgoing connections
# take theirs there) and apart per xdist worker, handed out in turn: two workers, or a client's
# own port, never get the same one (bind(0) could give a port another worker just took).
PORTS_PER_WORKER = 1500
_next_port = itertools.count()


def free_port() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    base = 20000 + (int(worker) % 8 if worker.isdigit() else 0) * PORTS_PER_WORKER
    for _ in range(PORTS_PER_WORKER):
        port = base + next(_next_port) % PORTS_PER_WORKER
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # in use, or lingering from an earlier test
                continue
            return port
    raise RuntimeError(f"no free port from {base} to {base + PORTS_PER_WORKER - 1}")


@pytest.fixture(autouse=True)
def collect_garbage_here() -> Iterator[None]:
    """Collect each test's garbage on the main thread. A compiled JSONata expression (jsonatapy,
    PyO3 "unsendable") must be freed on the thread that made it; a test's dropped apps sit in
    reference cycles, which the cyclic collector would otherwise free on whichever thread
    allocates next — a test subscriber's — and PyO3 reports that as an unraisable error."""
    yield
    gc.collect()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Redis at REDIS_URL, or an embedded one for the whole session."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    embedded = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendfsync="everysec")
    asyncio.run(embedded.start())
    yield embedded.url
    asyncio.run(embedded.stop())


@pytest.fixture(scope="session")
def rdb(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def keys(rdb: redis.Redis) -> Iterator[Keys]:
    """A key prefix of this test's own, deleted afterwards."""
    keys = Keys(f"test-{uuid.uuid4().hex[:12]}")
    yield keys
    unknown = set()
    for key in rdb.scan_iter(match=keys.pattern, count=1000):
        if not known_key(key.decode()):
            unknown.add(key.decode().removeprefix(keys.tag))
        rdb.delete(key)
    # every key a test leaves is of a family app/store/schema.py defines (tests/test_schema.py)
    assert not unknown, f"keys of no schema family: {sorted(unknown)[:10]}"


@pytest.fixture
def settings(redis_url: str, keys: Keys, tmp_path: Path) -> Settings:
    return Settings(
        sources=(
            Source("mystore", HEADER.lower(), Secret(TOKEN)),
            Source("*", WILDCARD_HEADER.lower(), Secret(WILDCARD_TOKEN)),
        ),
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        key_prefix=keys.prefix,
        max_body_bytes=4096,
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process, its lifespan running."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
            yield c


CONFIG_TOML = f"""
allow_networks = ["127.0.0.0/8"]  # the test subscribers and the fake VTEX are on loopback

[[sources]]
account = "mystore"
auth_header = "{HEADER}"
auth_token = "{TOKEN}"

[[sources]]
account = "*"
auth_header = "{WILDCARD_HEADER}"
auth_token = "{WILDCARD_TOKEN}"

[store]
key_prefix = "{{prefix}}"

[ingest]
max_body_bytes = 4096
"""


class Gateway:
    """`orderhook serve` in a real subprocess on a free loopback port."""

    def __init__(self, config: Path, env: dict[str, str], log: Path, *args: str) -> None:
        self.config, self.env, self.log, self.args = config, env, log, list(args)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Gateway:
        command = [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--config",
            str(self.config),
            "--port",
            str(self.port),
            *self.args,
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(command, env=self.env, stdout=out, stderr=out)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"gateway did not start: {self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(sig)
        return proc.wait(timeout)


def gateway_config(tmp_path: Path, prefix: str) -> Path:
    path = tmp_path / "orderhook.toml"
    path.write_text(CONFIG_TOML.replace("{prefix}", prefix))
    return path


@pytest.fixture
def live(redis_url: str, keys: Keys, tmp_path: Path) -> Iterator[Gateway]:
    """The gateway in a subprocess, on the test Redis, with this test's key prefix."""
    env = {**os.environ, "REDIS_URL": redis_url}
    process = Gateway(gateway_config(tmp_path, keys.prefix), env, tmp_path / "gateway.log")
    process.start()
    yield process
    process.stop()


def stream_events(rdb: redis.Redis, keys: Keys) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in rdb.xrange(keys.ingest_stream)]


from tests.relaying import gateway, sink  # noqa: E402, F401  (fixtures for every module)

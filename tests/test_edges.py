"""The gateway at its edges: a Redis that evicts, runs out of memory or hangs, and clients that
hold connections open without ever finishing a request.

Every test runs `orderhook serve` as a real subprocess against a redis-server the test starts
itself (on a free port, with the configuration under test), and prints its figures.
"""

from __future__ import annotations

import asyncio
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
import redis

from app.store.embedded import redis_executable
from app.store.schema import Keys
from tests.conftest import AUTH, CONFIG_TOML, Gateway, free_port, notification
from tests.relaying import SECRET

pytestmark = pytest.mark.timeout(300)


class TestRedis:
    """A redis-server of the test's own, in memory only, with extra command-line options."""

    __test__ = False  # not a test class

    def __init__(self, *options: str) -> None:
        self.port = free_port()
        self.options = options
        self.proc = subprocess.Popen(
            [redis_executable(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no", *options],
            stdout=subprocess.DEVNULL,
        )
        self.client = redis.Redis(port=self.port, socket_timeout=5)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.proc.kill()
        self.proc.wait(10)
        self.client.close()


def report(capsys: pytest.CaptureFixture[str], title: str, figures: dict[str, Any]) -> None:
    with capsys.disabled():
        print(f"\n  ── {title}")
        for name, value in figures.items():
            print(f"     {name:<44} {value}")


def gateway_on(
    server: TestRedis, tmp_path: Path, prefix: str, extra_toml: str = "", ingest: str = ""
) -> Gateway:
    """`orderhook serve` (not started yet) on the test config plus `extra_toml` (and `ingest`
    added to its [ingest] table), against `server`."""
    config = tmp_path / "orderhook.toml"
    text = CONFIG_TOML.replace("{prefix}", prefix)
    text = text.replace("max_body_bytes = 4096", f"max_body_bytes = 4096\n{ingest}")
    config.write_text(text + extra_toml)
    env = {**os.environ, "REDIS_URL": server.url, "PYTHONUNBUFFERED": "1"}
    return Gateway(config, env, tmp_path / "gateway.log")


@pytest.fixture
def keys() -> Keys:
    """Each test has a Redis of its own: one prefix will do."""
    return Keys("edges")


def stream_ids(server: TestRedis, keys: Keys) -> set[str]:
    return {fields[b"id"].decode() for _, fields in server.client.xrange(keys.ingest_stream)}


async def post_all(url: str, bodies: list[dict[str, Any]]) -> list[tuple[float, int, str, str]]:
    """Post every body at once, each on a connection of its own: (seconds, status, Retry-After,
    event id when 200) per request."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(body: dict[str, Any]) -> tuple[float, int, str, str]:
            started = time.monotonic()
            async with session.post(url, data=orjson.dumps(body), headers=AUTH) as r:
                answer = await r.json()
                took = time.monotonic() - started
                return took, r.status, r.headers.get("Retry-After", ""), answer.get("id", "")

        return await asyncio.gather(*(post(body) for body in bodies))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# ── 3. a Redis that may evict, and a Redis out of memory ─────────────────────────────────────


def run_cli(command: str, gateway: Gateway) -> subprocess.CompletedProcess[str]:
    """`orderhook serve` or `check` on the gateway's config; a `serve` still running after 20 s
    is stopped (it did not refuse to start)."""
    args = [sys.executable, "-m", "app.cli", command, "--config", str(gateway.config)]
    if command == "serve":
        args += ["--port", str(gateway.port)]
    with subprocess.Popen(
        args, env=gateway.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.terminate()
            out, err = proc.communicate(timeout=30)
            err += "\n(still running after 20 s)"
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def hook_once(gateway: Gateway, **changes: Any) -> httpx.Response:
    return httpx.post(gateway.url + "/hooks/vtex", json=notification(**changes), headers=AUTH)


@pytest.fixture
def lru_server() -> Iterator[TestRedis]:
    server = TestRedis("--maxmemory-policy", "allkeys-lru")
    yield server
    server.stop()


def test_eviction_policy_refused_by_serve_check_and_readiness(
    lru_server: TestRedis, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = gateway_on(lru_server, tmp_path, keys.prefix)
    serve = run_cli("serve", gateway)
    check = run_cli("check", gateway)
    (tmp_path / "w").mkdir()
    sub = f'\n[[subscriptions]]\nid = "a"\nurl = "http://127.0.0.1:9/a"\nsecret = "{SECRET}"\n'
    worker = run_cli("worker", gateway_on(lru_server, tmp_path / "w", keys.prefix, sub))
    serve_lines = [line for line in serve.stderr.splitlines() if line.strip()]

    lru_server.client.config_set("maxmemory-policy", "noeviction")
    gateway.start()
    try:
        ready_before = httpx.get(gateway.url + "/readyz")
        accepted = hook_once(gateway, OrderId="before")
        lru_server.client.config_set("maxmemory-policy", "allkeys-lru")  # while it runs
        ready_lru = httpx.get(gateway.url + "/readyz")
        refused = hook_once(gateway, OrderId="during")
        lru_server.client.config_set("maxmemory-policy", "noeviction")
        ready_after = httpx.get(gateway.url + "/readyz")
        again = hook_once(gateway, OrderId="during")
    finally:
        gateway.stop()
    report(
        capsys,
        "Redis with maxmemory-policy allkeys-lru",
        {
            "orderhook serve": f"exit {serve.returncode}: {serve_lines}",
            "orderhook check": f"exit {check.returncode}: {check.stderr.strip()}",
            "orderhook worker": f"exit {worker.returncode}: {worker.stderr.strip()}",
            "/readyz: noeviction, set to allkeys-lru, back": (
                f"{ready_before.status_code}, {ready_lru.status_code} "
                f"{ready_lru.json()}, {ready_after.status_code}"
            ),
            "hook: noeviction, allkeys-lru, back": (
                f"{accepted.status_code}, {refused.status_code} "
                f"(Retry-After {refused.headers.get('retry-after')}), {again.status_code}"
            ),
        },
    )
    assert serve.returncode == 2 and len(serve_lines) == 1 and "allkeys-lru" in serve_lines[0]
    assert check.returncode == 2 and "allkeys-lru" in check.stderr
    assert worker.returncode == 2 and "allkeys-lru" in worker.stderr
    assert (ready_before.status_code, ready_lru.status_code, ready_after.status_code) == (
        200,
        503,
        200,
    )
    assert "allkeys-lru" in ready_lru.json()["error"]
    assert (accepted.status_code, refused.status_code, again.status_code) == (200, 503, 200)
    assert refused.headers["retry-after"]
    assert stream_ids(lru_server, keys) == {accepted.json()["id"], again.json()["id"]}


NO_CONFIG = ("--rename-command", "CONFIG", "")  # as managed Redis services refuse CONFIG


@pytest.mark.parametrize(
    ("options", "store_toml", "exit_code", "says"),
    [
        (("--maxmemory-policy", "allkeys-lru", *NO_CONFIG), "", 2, "allkeys-lru"),
        (("--maxmemory-policy", "noeviction", *NO_CONFIG), "", 0, "Redis answers"),
        ((*NO_CONFIG, "--rename-command", "INFO", ""), "", 2, "assume_noeviction"),
        ((*NO_CONFIG, "--rename-command", "INFO", ""), "assume_noeviction = true", 0, "answers"),
    ],
    ids=["INFO tells allkeys-lru", "INFO tells noeviction", "hidden", "hidden, vouched for"],
)
def test_eviction_policy_read_where_config_is_refused(
    tmp_path: Path,
    keys: Keys,
    options: tuple[str, ...],
    store_toml: str,
    exit_code: int,
    says: str,
) -> None:
    server = TestRedis(*options)
    try:
        gateway = gateway_on(server, tmp_path, keys.prefix)
        text = gateway.config.read_text()
        gateway.config.write_text(text.replace("[store]\n", f"[store]\n{store_toml}\n"))
        check = run_cli("check", gateway)
    finally:
        server.stop()
    assert check.returncode == exit_code, check.stderr
    assert says in check.stdout + check.stderr


@pytest.fixture
def small_server() -> Iterator[TestRedis]:
    server = TestRedis("--maxmemory", str(SMALL_MAXMEMORY), "--maxmemory-policy", "noeviction")
    yield server
    server.stop()


SMALL_MAXMEMORY = 2 * 1024 * 1024


def fill_up(server: TestRedis) -> list[str]:
    """Take Redis past its maxmemory, so that it refuses every write: the filler keys' names.
    (A command's own arguments count while Redis checks memory, so plain writes stop at the
    edge, where a small write may still pass; SETRANGE's few bytes allocate far past it.)"""
    server.client.setrange("filler", SMALL_MAXMEMORY, b"x")
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        server.client.set("one-more", b"x")
    return ["filler"]


def test_redis_out_of_memory_answers_503_with_retry_after_then_recovers(
    small_server: TestRedis, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = gateway_on(small_server, tmp_path, keys.prefix).start()
    try:
        before = [hook_once(gateway, OrderId=f"before-{i}") for i in range(10)]
        fillers = fill_up(small_server)
        full = [hook_once(gateway, OrderId=f"full-{i}") for i in range(10)]
        ready_full = httpx.get(gateway.url + "/readyz")
        small_server.client.delete(*fillers)
        ready_freed = httpx.get(gateway.url + "/readyz")
        freed = [hook_once(gateway, OrderId=f"full-{i}") for i in range(10)]
    finally:
        gateway.stop()
    accepted = {r.json()["id"] for r in before + full + freed if r.status_code == 200}
    stored = stream_ids(small_server, keys)
    report(
        capsys,
        "Redis (maxmemory 2mb, noeviction) filled up, then freed",
        {
            "hooks before / full / freed": " / ".join(
                str(dict(Counter(r.status_code for r in rs))) for rs in (before, full, freed)
            ),
            "Retry-After while full": {r.headers.get("retry-after") for r in full},
            "/readyz full / freed": (
                f"{ready_full.status_code} {ready_full.json()}, {ready_freed.status_code}"
            ),
            "answered 200 / lost": f"{len(accepted)} / {len(accepted - stored)}",
        },
    )
    assert [r.status_code for r in before + freed] == [200] * 20
    assert all(r.status_code == 503 and r.headers.get("retry-after") for r in full)
    assert (ready_full.status_code, ready_freed.status_code) == (503, 200)
    assert "out of memory" in ready_full.json()["error"]
    assert accepted <= stored


# ── 14. Redis hung ──────────────────────────────────────────────────────────────────────────────

HUNG_HOOKS = 800


@pytest.fixture
def hung_server() -> Iterator[TestRedis]:
    server = TestRedis()
    yield server
    server.stop()


@pytest.mark.anyio
async def test_redis_hung_every_hook_answered_within_3_s(
    hung_server: TestRedis, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No cap per address: all 800 come from 127.0.0.1, and each must wait for Redis (from one
    # address, the connections past the cap would be answered 503 at once).
    no_cap = "\n[server]\nmax_connections_per_client = 0\n"
    gateway = gateway_on(hung_server, tmp_path, keys.prefix, no_cap).start()
    hook_url = gateway.url + "/hooks/vtex"
    try:
        before = await post_all(hook_url, [notification(OrderId=f"before-{i}") for i in range(50)])
        hung_server.signal(signal.SIGSTOP)
        hung = await post_all(
            hook_url, [notification(OrderId=f"hung-{i}") for i in range(HUNG_HOOKS)]
        )
        hung_server.signal(signal.SIGCONT)
        await asyncio.sleep(0.5)
        after = await post_all(hook_url, [notification(OrderId=f"after-{i}") for i in range(50)])
    finally:
        gateway.stop()
    times = [took for took, *_ in hung]
    statuses = Counter(status for _, status, *_ in hung)
    accepted = {event for *_, event in before + hung + after if event}
    stored = stream_ids(hung_server, keys)
    report(
        capsys,
        f"{HUNG_HOOKS} concurrent hooks while Redis is SIGSTOPped",
        {
            "statuses": dict(statuses),
            "with Retry-After": sum(1 for _, status, retry, _ in hung if status == 503 and retry),
            "answer time p50 / p99 / max (s)": (
                f"{percentile(times, 0.5):.2f} / {percentile(times, 0.99):.2f} / {max(times):.2f}"
            ),
            "over 5 s (VTEX's timeout)": sum(1 for t in times if t > 5),
            "after SIGCONT": dict(Counter(status for _, status, *_ in after)),
            "answered 200 / lost": f"{len(accepted)} / {len(accepted - stored)}",
        },
    )
    assert percentile(times, 0.99) < 3.0
    assert all(status == 503 and retry for _, status, retry, _ in hung)
    assert [status for _, status, *_ in before + after] == [200] * 100
    assert accepted <= stored


# ── 13. connections held without a token ─────────────────────────────────────────────────────

HELD = 2000
HEAD_TIMEOUT_S = 2
BODY_TIMEOUT_S = 2
TRICKLE_EVERY_S = 0.5
KINDS = ("idle", "half-sent headers", "trickled /ops/login body")
STARTS = {
    "idle": b"",
    "half-sent headers": b"POST /hooks/vtex HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty",
    "trickled /ops/login body": (
        b"POST /ops/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4000\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\ntoken="
    ),
}


class Held:
    """One connection the attacker holds: what it sends, what the gateway answered, when it
    was closed (seconds after it was opened)."""

    def __init__(self, port: int, source: str, kind: str) -> None:
        self.kind = kind
        self.sock = socket.socket()
        self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.opened = time.monotonic()
        self.answer = b""
        self.closed_after: float | None = None
        self.send(STARTS[kind])

    def send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except OSError:
            pass  # closed by the gateway: read() notices

    def read(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        self.answer += chunk
        if not chunk:
            self.closed_after = time.monotonic() - self.opened

    @property
    def status(self) -> str:
        return self.answer[9:12].decode() if self.answer.startswith(b"HTTP/1.1 ") else "none"


def hold(port: int, source: str) -> list[Held]:
    return [Held(port, source, KINDS[i % len(KINDS)]) for i in range(HELD)]


def watch(held: list[Held], seconds: float) -> None:
    """Trickle the bodies and read whatever the gateway answers, until every connection is
    closed or `seconds` have passed."""
    with selectors.DefaultSelector() as selector:
        for connection in held:
            selector.register(connection.sock, selectors.EVENT_READ, connection)
        deadline = time.monotonic() + seconds
        next_trickle = time.monotonic()
        while time.monotonic() < deadline and any(c.closed_after is None for c in held):
            if time.monotonic() >= next_trickle:
                next_trickle += TRICKLE_EVERY_S
                for c in held:
                    if c.kind == KINDS[2] and c.closed_after is None:
                        c.send(b"x")
            for key, _ in selector.select(timeout=0.05):
                connection: Held = key.data
                connection.read()
                if connection.closed_after is not None:
                    selector.unregister(connection.sock)


@pytest.fixture
def plain_server() -> Iterator[TestRedis]:
    server = TestRedis()
    yield server
    server.stop()


@pytest.fixture
def production_fd_limit() -> Iterator[None]:
    """The gateway starts with the usual soft limit of open files (1,024), as under systemd or
    Docker; then this process raises its own, to hold the connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@pytest.mark.parametrize(
    ("cap", "attacker"),
    [("", "127.0.0.2"), ("max_connections_per_client = 0", "127.0.0.1")],
    ids=["per-client cap", "no cap, as behind a proxy"],
)
def test_connections_held_without_a_token_do_not_stall_the_hook(
    plain_server: TestRedis,
    keys: Keys,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    production_fd_limit: None,
    cap: str,
    attacker: str,
) -> None:
    limits = f"\n[server]\nheader_timeout_s = {HEAD_TIMEOUT_S}\n{cap}\n"
    ingest = f"body_timeout_s = {BODY_TIMEOUT_S}"
    gateway = gateway_on(plain_server, tmp_path, keys.prefix, limits, ingest).start()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        held = hold(gateway.port, attacker)
        started = time.monotonic()
        try:
            hook = hook_once(gateway, OrderId="while-held")
            hook_status = hook.status_code
        except httpx.HTTPError as exc:
            hook_status = type(exc).__name__  # type: ignore[assignment]
        hook_s = time.monotonic() - started
        watch(held, HEAD_TIMEOUT_S + BODY_TIMEOUT_S + 6)
    finally:
        for connection in held:
            connection.sock.close()
        gateway.stop()
    figures: dict[str, Any] = {
        f"valid hook while {attacker} holds {HELD}": f"{hook_status} in {hook_s * 1000:.0f} ms"
    }
    for kind in KINDS:
        mine = [c for c in held if c.kind == kind]
        closed = [c.closed_after for c in mine if c.closed_after is not None]
        figures[kind] = (
            f"answers {dict(Counter(c.status for c in mine))}, closed {len(closed)}/{len(mine)}"
            + (f" after {min(closed):.1f}-{max(closed):.1f} s" if closed else "")
        )
    report(capsys, f"{HELD} connections held by one client ({cap or 'default cap'})", figures)
    assert hook_status == 200 and hook_s < 1.0
    assert all(c.closed_after is not None for c in held)
    refused = [c for c in held if c.status == "503"]
    kept = [c for c in held if c.status != "503"]
    assert all(c.closed_after < 1.0 for c in refused)  # type: ignore[operator]
    for c in kept:
        bound = HEAD_TIMEOUT_S if c.kind != KINDS[2] else BODY_TIMEOUT_S
        assert c.closed_after < bound + 1.5, (c.kind, c.closed_after)  # type: ignore[operator]
        assert c.status == {"idle": "none", "half-sent headers": "408"}.get(c.kind, "408")

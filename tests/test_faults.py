"""The fault suite: crashes, a Redis restart, misbehaving subscribers and hostile hook input.

Every test here runs real processes (the gateway as `orderhook serve`, Redis, subscribers on
loopback) and prints its figures, shown even when it passes (`-s` is not needed).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import psutil
import pytest
import redis

from app.store.embedded import redis_executable
from app.store.schema import Keys
from tests.conftest import AUTH, CONFIG_TOML, Gateway, free_port, notification
from tests.relaying import ADMIN, subscription
from tests.subscribers import Reply, Sink

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(600)]

STATES = ["payment-pending", "payment-approved", "ready-for-handling", "invoiced", "canceled"]


def report(capsys: pytest.CaptureFixture[str], title: str, figures: dict[str, Any]) -> None:
    with capsys.disabled():
        print(f"\n  ── {title}")
        for name, value in figures.items():
            print(f"     {name:<44} {value}")


def burst(count: int, tag: str) -> list[dict[str, Any]]:
    """`count` distinct notifications: orders of five states each."""
    return [
        notification(
            OrderId=f"{tag}-{i // len(STATES):05d}-01",
            State=STATES[i % len(STATES)],
            CurrentChange=f"2026-11-27T10:{(i // 60) % 60:02d}:{i % 60:02d}.{i:07d}Z",
        )
        for i in range(count)
    ]


def start_gateway(
    tmp: Path, prefix: str, redis_url: str, extra_toml: str, ingest: str = ""
) -> Gateway:
    """`orderhook serve` on the test config plus `extra_toml`; `ingest` replaces its [ingest]."""
    config = tmp / "orderhook.toml"
    text = CONFIG_TOML.replace("{prefix}", prefix)
    if ingest:
        text = text.replace("max_body_bytes = 4096", ingest)
    config.write_text(text + extra_toml)
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "ORDERHOOK_ADMIN_TOKEN": "admin-token",
        "PYTHONUNBUFFERED": "1",
    }
    return Gateway(config, env, tmp / "gateway.log").start()


@dataclass
class Sender:
    """VTEX's side of the hook: posts every notification until it is answered 200."""

    url: str
    accepted: dict[int, str] = field(default_factory=dict)  # notification index → event id
    statuses: Counter[str] = field(default_factory=Counter)
    answers: list[tuple[float, float, str]] = field(default_factory=list)  # sent, answered, what

    async def run(self, bodies: list[dict[str, Any]], concurrency: int = 32) -> None:
        pending = list(range(len(bodies)))
        pending.reverse()
        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

            async def worker() -> None:
                while pending:
                    index = pending.pop()
                    await self._deliver(session, index, orjson.dumps(bodies[index]))

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def _deliver(self, session: aiohttp.ClientSession, index: int, body: bytes) -> None:
        while True:
            sent = time.monotonic()
            try:
                async with session.post(self.url, data=body, headers=AUTH) as r:
                    what = str(r.status)
                    if r.status == 200:
                        self.accepted[index] = (await r.json())["id"]
            except (aiohttp.ClientError, TimeoutError) as exc:
                what = type(exc).__name__
            self.answers.append((sent, time.monotonic(), what))
            self.statuses[what] += 1
            if what == "200":
                return
            await asyncio.sleep(0.05)


def delivered_ids(sink: Sink, path: str) -> list[str]:
    """Event ids of the requests this path answered 2xx, duplicates included."""
    return [orjson.loads(r.body)["id"] for r in sink.at(path) if 200 <= r.status < 300]


async def wait_delivered(
    sink: Sink, expected: dict[str, set[str]], timeout: float
) -> dict[str, float]:
    """Wait until every path got every expected id; the seconds each path took."""
    started = time.monotonic()
    took: dict[str, float] = {}
    while len(took) < len(expected):
        for path, ids in expected.items():
            if path not in took and ids <= set(delivered_ids(sink, path)):
                took[path] = round(time.monotonic() - started, 1)
        if time.monotonic() - started > timeout:
            missing = {p: len(ids - set(delivered_ids(sink, p))) for p, ids in expected.items()}
            raise AssertionError(f"events not delivered after {timeout} s: {missing}")
        await asyncio.sleep(0.2)
    return took


def delete_prefix(url: str, keys: Keys) -> None:
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=keys.pattern, count=1000):
        client.delete(key)
    client.close()


def dead_letters(gateway: Gateway) -> dict[str, int]:
    rows = httpx.get(gateway.url + "/admin/subscriptions", headers=ADMIN).json()
    return {row["id"]: row["deadLetters"] for row in rows["subscriptions"]}


# ── 1. the gateway killed with SIGKILL during a burst ──────────────────────────────────────────

EVENTS = 5000
KILLS = 5
RETRIES = "[0.05, 0.1, 0.2, 0.3, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]"


async def test_sigkill_five_times_during_a_burst_loses_nothing(
    redis_url: str, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Sink() as sink:
        sink.flaky("/flaky", 0.3, seed=7)
        toml = (
            subscription(sink, "all", timeout=2, retry_schedule=RETRIES)
            + subscription(sink, "flaky", timeout=2, retry_schedule=RETRIES, breaker_threshold=1000)
            + subscription(
                sink,
                "invoiced",
                timeout=2,
                retry_schedule=RETRIES,
                filter='{ type = "FromWorkflow", status = ["invoiced"] }',
            )
            + "\n[delivery]\nrouter_claim_idle_s = 1\n"
        )
        gateway = start_gateway(tmp_path, keys.prefix, redis_url, toml)
        bodies = burst(EVENTS, "kill")
        sender = Sender(gateway.url + "/hooks/vtex")
        downtimes: list[float] = []

        async def killer() -> None:
            for k in range(KILLS):
                while len(sender.accepted) < (k + 1) * EVENTS / (KILLS + 1):
                    await asyncio.sleep(0.01)
                assert gateway.proc is not None
                gateway.proc.kill()
                gateway.proc.wait()
                gateway.proc = None
                down = time.monotonic()
                await asyncio.to_thread(gateway.start)
                downtimes.append(time.monotonic() - down)

        started = time.monotonic()
        try:
            await asyncio.gather(sender.run(bodies), killer())
            ingest_s = time.monotonic() - started
            ids = {i: sender.accepted[i] for i in range(EVENTS)}
            expected = {
                "/all": set(ids.values()),
                "/flaky": set(ids.values()),
                "/invoiced": {ids[i] for i, b in enumerate(bodies) if b["State"] == "invoiced"},
            }
            took = await wait_delivered(sink, expected, timeout=240)
            dead = dead_letters(gateway)
        finally:
            gateway.stop()
            delete_prefix(redis_url, keys)

    figures: dict[str, Any] = {
        "events sent / answered 200": f"{EVENTS} / {len(sender.accepted)}",
        "SIGKILLs": f"{len(downtimes)}, restarts took "
        + ", ".join(f"{d:.1f}" for d in downtimes)
        + " s",
        "hook answers": dict(sender.statuses),
        "burst took (s)": round(ingest_s, 1),
    }
    for path, ids_expected in expected.items():
        got = delivered_ids(sink, path)
        figures[f"{path}: expected / delivered distinct / dups"] = (
            f"{len(ids_expected)} / {len(set(got) & ids_expected)} / {len(got) - len(set(got))}"
            f"  (all in {took[path]} s after the burst)"
        )
    failed = sum(1 for r in sink.at("/flaky") if r.status >= 500)
    figures["/flaky: requests answered 500"] = f"{failed} of {len(sink.at('/flaky'))}"
    figures["lost"] = sum(len(ids - set(delivered_ids(sink, p))) for p, ids in expected.items())
    figures["dead letters"] = dead
    report(capsys, f"SIGKILL x{KILLS} during a {EVENTS}-event burst, 3 subscribers", figures)
    assert len(downtimes) == KILLS
    assert sum(dead.values()) == 0
    assert set(delivered_ids(sink, "/invoiced")) == expected["/invoiced"]  # and nothing else


# ── 2. Redis restarted during a burst ──────────────────────────────────────────────────────────


class OwnRedis:
    """A redis-server of the test's own on a loopback port, append-only, fsync on every write."""

    def __init__(self, data: Path) -> None:
        self.data, self.port = data, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data.mkdir(exist_ok=True)
        command = [
            shutil.which("redis-server") or redis_executable(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "redis")
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()


REDIS_EVENTS = 3000
REDIS_DOWN_S = 2.0


async def test_redis_killed_and_restarted_during_a_burst(
    own_redis: OwnRedis, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Sink() as sink:
        toml = subscription(sink, "all", timeout=2, retry_schedule=RETRIES)
        toml += "\n[delivery]\nrouter_claim_idle_s = 1\n"
        gateway = start_gateway(tmp_path, keys.prefix, own_redis.url, toml)
        sender = Sender(gateway.url + "/hooks/vtex")
        window: list[float] = []

        async def restart_redis() -> None:
            while len(sender.accepted) < REDIS_EVENTS / 3:
                await asyncio.sleep(0.01)
            own_redis.kill()
            window.append(time.monotonic())
            await asyncio.sleep(REDIS_DOWN_S)
            window.append(time.monotonic())
            await asyncio.to_thread(own_redis.start)

        try:
            await asyncio.gather(sender.run(burst(REDIS_EVENTS, "redis")), restart_redis())
            expected = {"/all": set(sender.accepted.values())}
            took = await wait_delivered(sink, expected, timeout=120)
            dead = dead_letters(gateway)
        finally:
            gateway.stop()
    down, back = window
    during = Counter(what for sent, answered, what in sender.answers if down < sent < back)
    lied = [a for a in sender.answers if down < a[0] and a[1] < back and a[2] == "200"]
    first_200 = min(a[1] for a in sender.answers if a[1] > back and a[2] == "200")
    got = delivered_ids(sink, "/all")
    report(
        capsys,
        f"Redis SIGKILLed (appendfsync always) and restarted during a {REDIS_EVENTS}-event burst",
        {
            "answered 200": len(sender.accepted),
            "answers while Redis was down": dict(during),
            "200s answered while Redis was down": len(lied),
            "first 200 after Redis restarted (s)": round(first_200 - back, 2),
            "delivered distinct / duplicates": f"{len(set(got))} / {len(got) - len(set(got))}",
            "all delivered, after the burst (s)": took["/all"],
            "lost": len(expected["/all"] - set(got)),
            "dead letters": dead,
        },
    )
    assert during["503"] > 0
    assert not lied
    assert len(sender.accepted) == REDIS_EVENTS
    assert sum(dead.values()) == 0


# ── 3. subscribers that misbehave ──────────────────────────────────────────────────────────────

TEN_MB = 10 * 1024 * 1024


async def test_misbehaving_subscribers_cost_bounded_time_and_memory(
    redis_url: str, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Sink() as sink:
        sink.script("/hang", *[Reply(hang=True)] * 2)
        sink.script("/slow", Reply(body_bytes=TEN_MB, chunk_delay_s=0.05))
        sink.script("/cut", Reply(cut=True))
        elsewhere = sink.url("/elsewhere")
        sink.script("/redirect", *[Reply(status=302, headers={"Location": elsewhere})] * 2)
        options = {"timeout": 1, "retry_schedule": "[0.2]"}
        toml = "".join(
            subscription(sink, name, **options) for name in ("hang", "slow", "cut", "redirect")
        )
        gateway = start_gateway(tmp_path, keys.prefix, redis_url, toml)
        assert gateway.proc is not None
        process = psutil.Process(gateway.proc.pid)
        try:
            rss_before = process.memory_info().rss
            started = time.monotonic()
            r = httpx.post(gateway.url + "/hooks/vtex", json=notification(), headers=AUTH)
            event_id = r.json()["id"]

            def log() -> dict[str, list[dict[str, Any]]]:
                url = f"{gateway.url}/admin/events/{event_id}"
                attempts: dict[str, list[dict[str, Any]]] = httpx.get(url, headers=ADMIN).json()[
                    "attempts"
                ]
                return attempts

            final = {"hang": "dead", "slow": "delivered", "cut": "delivered", "redirect": "dead"}
            deadline = time.monotonic() + 30
            while True:
                attempts = await asyncio.to_thread(log)
                ends = {sub: rows[-1]["outcome"] for sub, rows in attempts.items() if rows}
                if ends == final or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            settled_s = time.monotonic() - started
            rss_after = process.memory_info().rss
        finally:
            gateway.stop()
            delete_prefix(redis_url, keys)

    figures: dict[str, Any] = {}
    for sub, rows in attempts.items():
        figures[sub] = "; ".join(
            f"{row['outcome']} in {row['durationMs']:.0f} ms ({row['error'] or row['status']})"
            for row in rows
        )
    figures["slow 10 MB body: bytes the subscriber got to send"] = sink.body_bytes_sent
    figures["gateway RSS before / after (MB)"] = (
        f"{rss_before / 2**20:.1f} / {rss_after / 2**20:.1f}"
    )
    figures["all four settled in (s)"] = round(settled_s, 1)
    report(capsys, "misbehaving subscribers (timeout 1 s, one retry)", figures)

    assert ends == final, attempts
    assert all(row["durationMs"] < 1500 for rows in attempts.values() for row in rows)
    assert [row["outcome"] for row in attempts["hang"]] == ["retry", "dead"]
    assert "timeout after 1 s" in attempts["hang"][-1]["error"]
    assert attempts["slow"][0]["durationMs"] < 1000
    assert max(sink.body_bytes_sent) < TEN_MB / 4  # the gateway stopped reading and hung up
    assert [row["outcome"] for row in attempts["cut"]] == ["retry", "delivered"]
    assert "Payload" in attempts["cut"][0]["error"]  # aiohttp's ClientPayloadError
    assert "redirect to" in attempts["redirect"][-1]["error"]
    assert not sink.at("/elsewhere")  # redirects are not followed
    assert rss_after - rss_before < 30 * 2**20


# ── 4. hostile input on the hook ───────────────────────────────────────────────────────────────


def _deep(depth: int) -> bytes:
    return (
        b'{"OrderId": "deep", "Origin": {"Account": "mystore"}, "Nested": '
        + b"[" * depth
        + b"]" * depth
        + b"}"
    )


def _with_number(literal: bytes) -> bytes:
    return b'{"OrderId": "n", "Origin": {"Account": "mystore"}, "Total": ' + literal + b"}"


HOSTILE: list[tuple[str, bytes, str, int, str]] = [
    ("10,000 nested arrays", _deep(10_000), "application/json", 400, "depth"),
    ("1e400", _with_number(b"1e400"), "application/json", 400, "infinity"),
    ("-1e400", _with_number(b"-1e400"), "application/json", 400, "infinity"),
    ("30-digit integer", _with_number(b"1" * 30), "application/json", 400, "out of range"),
    ("2^53 + 1", _with_number(str(2**53 + 1).encode()), "application/json", 400, "out of range"),
    (
        "invalid UTF-8 (0xff)",
        b'{"OrderId": "\xff\xfe", "Origin": {"Account": "mystore"}}',
        "application/json",
        400,
        "UTF-8",
    ),
    (
        "overlong UTF-8 (0xc0 0xaf)",
        b'{"OrderId": "\xc0\xaf", "Origin": {"Account": "mystore"}}',
        "application/json",
        400,
        "UTF-8",
    ),
    (
        "lone surrogate escape",
        b'{"OrderId": "\\ud800", "Origin": {"Account": "mystore"}}',
        "application/json",
        400,
        "surrogate",
    ),
    ("text/plain", orjson.dumps(notification()), "text/plain", 415, "content type"),
    ("application/xml", b"<OrderId>x</OrderId>", "application/xml", 415, "content type"),
    (
        "multipart/form-data",
        b"--x\r\n\r\n--x--",
        "multipart/form-data; boundary=x",
        415,
        "content type",
    ),
]


def _post_raw(url: str, body: bytes, content_type: str) -> tuple[int, dict[str, Any], float]:
    # TCP_NODELAY: httpx writes headers and body apart, which Nagle would delay by ~40 ms.
    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    with httpx.Client(transport=transport, timeout=10) as http:
        started = time.monotonic()
        r = http.post(
            url + "/hooks/vtex", content=body, headers={**AUTH, "Content-Type": content_type}
        )
    return r.status_code, r.json(), (time.monotonic() - started) * 1000


def _slow_body(port: int, seconds: float) -> tuple[int | None, float]:
    """Send a hook request whose body trickles in a byte every 0.2 s: (status, seconds taken)."""
    body = orjson.dumps(notification(OrderId="slow"))
    head = (
        f"POST /hooks/vtex HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"{next(iter(AUTH))}: {AUTH[next(iter(AUTH))]}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds + 5) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        reply = b""
        for byte in body:
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            try:
                reply += sock.recv(4096)
            except BlockingIOError:
                pass
            if b"\r\n\r\n" in reply:
                break
            time.sleep(0.2)
        sock.setblocking(True)
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    status = int(reply.split(b" ")[1]) if reply.startswith(b"HTTP/1.1 ") else None
    return status, time.monotonic() - started


def test_hostile_input_is_refused_and_nothing_stored(
    redis_url: str, rdb: redis.Redis, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ingest = "max_body_bytes = 65536\nbody_timeout_s = 1"
    gateway = start_gateway(tmp_path, keys.prefix, redis_url, "", ingest)
    figures: dict[str, Any] = {}
    try:
        for name, body, content_type, status, says in HOSTILE:
            got, answer, ms = _post_raw(gateway.url, body, content_type)
            figures[name] = f"{got} in {ms:.0f} ms: {answer['error'][:70]}"
            assert (got, says.lower() in answer["error"].lower()) == (status, True), answer

        def healthz_ms() -> float:
            started = time.monotonic()
            assert httpx.get(gateway.url + "/healthz").status_code == 200
            return (time.monotonic() - started) * 1000

        # 50 trickled bodies at once, and meanwhile the gateway answers others at once.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(50) as pool:
            slow = [pool.submit(_slow_body, gateway.port, 1.0) for _ in range(50)]
            time.sleep(0.3)
            during = [healthz_ms() for _ in range(5)]
            ok = httpx.post(
                gateway.url + "/hooks/vtex", json=notification(OrderId="ok"), headers=AUTH
            )
            results = [f.result() for f in slow]
        figures["50 slow bodies (a byte every 0.2 s)"] = (
            f"statuses {dict(Counter(s for s, _ in results))}, cut off after "
            f"{min(t for _, t in results):.1f}–{max(t for _, t in results):.1f} s"
        )
        figures["/healthz during them (ms)"] = f"max {max(during):.1f}"
        assert all(s == 408 for s, _ in results)
        assert all(t < 3 for _, t in results)
        assert ok.status_code == 200
        assert max(during) < 500

        figures["events stored (only the one valid request)"] = rdb.xlen(keys.ingest_stream)
        assert rdb.xlen(keys.ingest_stream) == 1

        evil = "<script>alert(1)"  # no "/": ingest refuses it in an order id
        accepted = httpx.post(
            gateway.url + "/hooks/vtex", json=notification(OrderId=evil), headers=AUTH
        )
        assert accepted.status_code == 200
        page = httpx.get(gateway.url + "/ops", params={"orderId": evil}, headers=ADMIN)
        assert evil not in page.text and "&lt;script&gt;alert(1)" in page.text
        history = httpx.get(gateway.url + "/admin/events", params={"orderId": evil}, headers=ADMIN)
        assert history.headers["content-type"] == "application/json"
        figures["<script> OrderId"] = (
            f"accepted ({accepted.json()['status']}), dashboard shows it escaped"
        )
        assert rdb.xlen(keys.ingest_stream) == 2
    finally:
        gateway.stop()
    report(capsys, "hostile input on POST /hooks/vtex", figures)

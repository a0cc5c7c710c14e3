"""The embedded store's redis-server watched by the gateway: restarted when it dies, the gateway
stopped (exit 1) when it cannot be; a torn append-only file reported at start-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from app.store.embedded import LOCK_WAIT_S, RESTART_DELAYS_S
from tests.conftest import AUTH, Gateway, notification
from tests.test_server import embedded_gateway, post, redis_children

PULL = """
[delivery]  # an entry the router had read when redis-server died is taken over after this
router_claim_idle_s = 1

[[subscriptions]]
id = "pull"
mode = "pull"
token = "feed-token"
"""
FEED = {"Authorization": "Bearer feed-token"}


def pulling_gateway(tmp_path: Path, *args: str) -> Gateway:
    gateway = embedded_gateway(tmp_path)
    gateway.config.write_text(gateway.config.read_text() + PULL)
    gateway.args = list(args)
    return gateway


def accepted_within(gateway: Gateway, timeout_s: float, **changes: object) -> tuple[str, float]:
    """Post until the hook answers 200; its event id and how long that took."""
    started = time.monotonic()
    while True:
        r = httpx.post(gateway.url + "/hooks/vtex", json=notification(**changes), headers=AUTH)
        if r.status_code == 200:
            return r.json()["id"], time.monotonic() - started
        assert r.status_code == 503 and r.headers["retry-after"], r.text
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"hooks still refused after {timeout_s} s: {r.text}")
        time.sleep(0.05)


def gone(process: psutil.Process) -> None:
    deadline = time.monotonic() + 5
    while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "still running"
        time.sleep(0.02)


def only_redis(gateway: Gateway) -> psutil.Process:
    [child] = redis_children(gateway)
    return child


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkilled_embedded_redis_is_restarted_and_keeps_what_was_accepted(
    tmp_path: Path, workers: int
) -> None:
    """A SIGKILLed embedded redis-server was never started again: 503 for every hook, for
    ever. Now it is restarted on its files, the hook answers 200 again within a second, and
    the event accepted before the kill is still there to take."""
    gateway = pulling_gateway(tmp_path, "--workers", str(workers)).start()
    try:
        before = post(gateway, State="invoiced")["id"]
        dead = only_redis(gateway)
        dead.send_signal(signal.SIGKILL)
        gone(dead)
        after, waited_s = accepted_within(gateway, 10, State="handling")
        assert waited_s < 2
        assert only_redis(gateway).pid != dead.pid
        deadline = time.monotonic() + 10
        taken: set[str] = set()
        while taken != {before, after} and time.monotonic() < deadline:
            r = httpx.get(gateway.url + "/feed/pull?maxlot=10", headers=FEED)
            taken |= {item["eventId"] for item in r.json()} if r.status_code == 200 else set()
            time.sleep(0.1)
        assert taken == {before, after}
    finally:
        status = gateway.stop()
    assert status == 0
    log = gateway.log.read_text()
    assert "embedded redis-server was killed by SIGKILL; restarting it" in log
    print(f"\nworkers={workers}: hooks accepted again {waited_s:.2f} s after the SIGKILL")


def test_embedded_redis_that_cannot_restart_stops_the_gateway_with_1(tmp_path: Path) -> None:
    """A server that dies at every restart (here: its append-only file is corrupt) is given
    up after RESTART_DELAYS_S: the gateway stops and exits 1, for its supervisor to see."""
    gateway = pulling_gateway(tmp_path).start()
    assert gateway.proc is not None
    process = gateway.proc
    try:
        post(gateway)
        with (tmp_path / "data" / "appendonly.aof").open("r+b") as aof:
            aof.write(b"not a redis command\r\n")  # at the start: every load fails
        only_redis(gateway).send_signal(signal.SIGKILL)
        status = process.wait(sum(RESTART_DELAYS_S) + 30)
    finally:
        gateway.stop(signal.SIGKILL)
    assert status == 1
    log = gateway.log.read_text()
    assert log.count("restarting it in") == len(RESTART_DELAYS_S)
    assert "Bad file format reading the append only file" in log
    assert "giving up, the gateway stops and exits 1" in log


def test_torn_aof_tail_is_reported_at_start(tmp_path: Path) -> None:
    gateway = embedded_gateway(tmp_path).start()
    try:
        post(gateway)
    finally:
        assert gateway.stop() == 0
    aof = tmp_path / "data" / "appendonly.aof"
    aof.write_bytes(aof.read_bytes()[:-7])  # a write cut short by a crash
    gateway.start()
    try:
        post(gateway, State="invoiced")
    finally:
        gateway.stop()
    [warning] = [line for line in gateway.log.read_text().splitlines() if "torn write" in line]
    assert " WARNING orderhook.store embedded redis: the append-only file " in warning
    assert "redis.log" in warning


def ready(gateway: Gateway) -> bool:
    try:
        answer = httpx.get(gateway.url + "/readyz", timeout=1)
    except httpx.TransportError:
        return False
    return answer.status_code == 200 and bool(redis_children(gateway))


def test_ctrl_c_stops_the_gateway_and_its_redis_without_a_restart(tmp_path: Path) -> None:
    """A terminal's Ctrl-C signals the whole foreground process group. The embedded
    redis-server was in it: it died first, and the watcher logged an ERROR and restarted it
    mid-shutdown. It now has its own session; the gateway stops it."""
    gateway = embedded_gateway(tmp_path)
    command = [sys.executable, "-m", "app.cli", "serve", "--config", str(gateway.config)]
    command += ["--port", str(gateway.port)]
    with gateway.log.open("ab") as out:
        proc = subprocess.Popen(
            command, env=gateway.env, stdout=out, stderr=out, start_new_session=True
        )
    try:
        gateway.proc = proc
        deadline = time.monotonic() + 20
        while not ready(gateway):
            assert time.monotonic() < deadline, gateway.log.read_text()
            time.sleep(0.1)
        redis = only_redis(gateway)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C
        assert proc.wait(30) == 0
        gone(redis)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = gateway.log.read_text()
    assert "restarting" not in log and "ERROR" not in log, log


def test_a_second_gateway_on_the_same_data_directory_stops_with_one_line_and_2(
    tmp_path: Path,
) -> None:
    first = embedded_gateway(tmp_path).start()
    try:
        second = subprocess.run(
            [sys.executable, "-m", "app.cli", "serve", "--config", str(first.config)],
            env=first.env,
            capture_output=True,
            text=True,
            timeout=LOCK_WAIT_S + 30,
        )
        assert second.returncode == 2
        assert second.stderr.count("\n") == 1, second.stderr
        assert second.stderr.startswith("orderhook: the data directory ")
        assert "is in use by another orderhook process" in second.stderr
        assert httpx.get(first.url + "/healthz").status_code == 200  # the first goes on
    finally:
        assert first.stop() == 0

"""`orderhook status | dlq | events` against a running gateway, and their error paths."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psutil
import pytest

from app.store.keys import Keys
from tests.conftest import AUTH, Gateway, free_port, notification
from tests.subscribers import Reply, Sink
from tests.test_dashboard_browser import config


def orderhook(
    *args: str, url: str, token: str | None = "admin-token"
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ORDERHOOK_ADMIN_TOKEN"}
    if token is not None:
        env["ORDERHOOK_ADMIN_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args, "--url", url],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


@pytest.fixture
def running(redis_url: str, keys: Keys, tmp_path: Path) -> Iterator[tuple[Gateway, Sink, str]]:
    """A gateway with one delivered event (erp) and one dead letter (wms)."""
    with Sink() as sink:
        sink.script("/wms", Reply(500), Reply(500), Reply(500))
        env = {**os.environ, "REDIS_URL": redis_url, "ORDERHOOK_ADMIN_TOKEN": "admin-token"}
        gateway = Gateway(config(tmp_path, keys.prefix, sink), env, tmp_path / "gw.log").start()
        try:
            r = httpx.post(gateway.url + "/hooks/vtex", json=notification(), headers=AUTH)
            sink.wait_for_sync(
                lambda: len(sink.at("/wms")) >= 3 and len(sink.at("/erp")) >= 1, 10, "deliveries"
            )
            yield gateway, sink, r.json()["id"]
        finally:
            gateway.stop()


def wait_dead(gateway: Gateway) -> None:
    for _ in range(100):
        if "wms" in orderhook("dlq", "list", url=gateway.url).stdout:
            return
    raise AssertionError("no dead letter")


def test_status_dlq_events_and_replay(running: tuple[Gateway, Sink, str]) -> None:
    gateway, sink, event_id = running
    wait_dead(gateway)
    status = orderhook("status", url=gateway.url)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].startswith("ingest: received 1, accepted 1")
    assert any(line.startswith("erp ") and " enabled " in line for line in lines)
    assert any(line.startswith("wms ") and "HTTP 500" in line for line in lines)

    listing = orderhook("dlq", "list", "--subscription", "wms", url=gateway.url)
    assert listing.returncode == 0
    assert f"{event_id}.wms" in listing.stdout and "1 of 1 dead letters" in listing.stdout

    shown = orderhook("events", "show", event_id, url=gateway.url)
    assert shown.returncode == 0
    assert "order v52277740atmc-01 window-to-cancel -> ready-for-handling" in shown.stdout
    assert shown.stdout.count(" retry ") == 2 and " dead " in shown.stdout

    replay = orderhook("dlq", "replay", "--subscription", "wms", url=gateway.url)
    assert replay.returncode == 0, replay.stderr
    assert "[##############################] 1/1" in replay.stderr  # the progress bar
    assert "replayed 1 dead letters of wms" in replay.stdout
    sink.wait_for_sync(lambda: len(sink.at("/wms")) >= 4, 10, "the replayed delivery")


def test_errors_are_one_line_and_exit_1(running: tuple[Gateway, Sink, str]) -> None:
    gateway, _, _ = running
    cases = [
        (orderhook("events", "show", "nope", url=gateway.url), "HTTP 404: no event 'nope'"),
        (orderhook("dlq", "replay", "--id", "nope", url=gateway.url), "replayed 0 of 1"),
        (orderhook("status", url=gateway.url, token="wrong"), "refused the token (HTTP 401)"),
        (orderhook("status", url=gateway.url, token=None), "set ORDERHOOK_ADMIN_TOKEN"),
        (orderhook("status", url=f"http://127.0.0.1:{free_port()}"), "cannot reach the gateway"),
    ]
    for result, message in cases:
        assert result.returncode == 1, result
        assert result.stderr.startswith("orderhook: ") and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def _python_children(gateway: Gateway) -> list[psutil.Process]:
    assert gateway.proc is not None
    children = psutil.Process(gateway.proc.pid).children()
    return [c for c in children if "spawn_main" in " ".join(c.cmdline())]


@pytest.mark.parametrize("store", ["redis-url", "embedded"])
def test_serve_workers_runs_n_processes_on_one_redis(
    redis_url: str, keys: Keys, tmp_path: Path, store: str
) -> None:
    with Sink() as sink:
        env = {**os.environ, "ORDERHOOK_DATA_DIR": str(tmp_path / "data")}
        env.pop("REDIS_URL", None)
        if store == "redis-url":
            env["REDIS_URL"] = redis_url
        gateway = Gateway(config(tmp_path, keys.prefix, sink), env, tmp_path / "gw.log")
        gateway.args = ["--workers", "2"]
        gateway.start()
        try:
            workers = _python_children(gateway)
            with httpx.Client(base_url=gateway.url) as http:
                ids = {
                    http.post(
                        "/hooks/vtex", json=notification(OrderId=f"w-{i}"), headers=AUTH
                    ).json()["id"]
                    for i in range(40)
                }
            sink.wait_for_sync(lambda: len(sink.at("/erp")) >= 40, 20, "40 deliveries")
        finally:
            status = gateway.stop()
    assert len(workers) == 2
    assert status == 0
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    delivered = [orjson.loads(r.body)["id"] for r in sink.at("/erp")]
    assert sorted(delivered) == sorted(ids)  # each once, whichever process took it


def test_check_loads_the_config_and_pings_redis(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[sources]]\naccount = "*"\nauth_header = "X-T"\nauth_token = "t"\n')

    def check(url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", "check", "--config", str(path)],
            capture_output=True,
            text=True,
            env={**os.environ, "REDIS_URL": url},
            timeout=30,
        )

    ok = check(redis_url)
    assert ok.returncode == 0 and "Redis answers" in ok.stdout
    down = check(f"redis://127.0.0.1:{free_port()}/0")
    assert down.returncode == 2 and "Redis does not answer" in down.stderr
    path.write_text("[[sources]]\naccount = 1\n")
    assert check(redis_url).returncode == 2

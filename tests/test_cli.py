"""`orderhook status | dlq | events` against a running gateway, and their error paths."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
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

"""Every process applies a change within a second, without a restart: two real gateway
processes on one Redis, a subscription changed through one, the other one follows."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.sealing import new_key
from app.store.schema import Keys
from tests.conftest import AUTH, Gateway, gateway_config, notification
from tests.relaying import ADMIN
from tests.subscribers import Sink


@pytest.fixture
def pair(redis_url: str, keys: Keys, tmp_path: Path) -> Iterator[tuple[Gateway, Gateway]]:
    """Two gateways (serve, each its own router and deliverer) on the same Redis and prefix."""
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "ORDERHOOK_ADMIN_TOKEN": "admin-token",
        "ORDERHOOK_SECRET_KEY": new_key(),
    }
    config = gateway_config(tmp_path, keys.prefix)
    a = Gateway(config, env, tmp_path / "a.log").start()
    try:
        b = Gateway(config, env, tmp_path / "b.log").start()
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


def post_hook(gateway: Gateway, order_id: str) -> None:
    r = httpx.post(gateway.url + "/hooks/vtex", json=notification(OrderId=order_id), headers=AUTH)
    assert r.status_code == 200, r.text


def wait_for(sink: Sink, path: str, count: int, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while len(sink.at(path)) < count:
        assert time.monotonic() < deadline, f"{len(sink.at(path))} of {count} received"
        time.sleep(0.02)


def test_a_change_through_one_process_is_applied_by_the_other_within_a_second(
    pair: tuple[Gateway, Gateway],
) -> None:
    a, b = pair
    with Sink() as sink:
        body = {"id": "wms", "url": sink.url("/wms"), "retry_schedule": [0.05]}
        created = httpx.post(a.url + "/admin/subscriptions", json=body, headers=ADMIN)
        assert created.status_code == 201, created.text
        time.sleep(1)  # B's copy follows within REFRESH_S (0.25 s)
        post_hook(b, "v1-01")
        wait_for(sink, "/wms", 1)

        paused = httpx.post(a.url + "/admin/subscriptions/wms/pause", headers=ADMIN)
        assert paused.json() == {"id": "wms", "state": "paused"}
        for n in range(2, 5):
            post_hook(b, f"v{n}-01")
        time.sleep(2)
        assert len(sink.at("/wms")) == 1  # nothing sent while paused, by either process
        shown = httpx.get(b.url + "/admin/subscriptions/wms", headers=ADMIN).json()
        assert (shown["state"], shown["queued"]) == ("paused", 3)

        resumed = httpx.post(b.url + "/admin/subscriptions/wms/resume", headers=ADMIN)
        assert resumed.json()["state"] == "enabled"
        wait_for(sink, "/wms", 4)
        orders = sorted(r.body.decode().split('"orderId":"')[1][:5] for r in sink.at("/wms"))
        assert orders == ["v1-01", "v2-01", "v3-01", "v4-01"]


def test_a_url_patched_through_one_process_is_used_by_the_other(
    pair: tuple[Gateway, Gateway],
) -> None:
    a, b = pair
    with Sink() as sink:
        body = {"id": "wms", "url": sink.url("/old"), "retry_schedule": [0.05]}
        assert httpx.post(a.url + "/admin/subscriptions", json=body, headers=ADMIN).is_success
        patch = {"url": sink.url("/new")}
        r = httpx.patch(a.url + "/admin/subscriptions/wms", json=patch, headers=ADMIN)
        assert r.json()["version"] == 2
        time.sleep(1)
        post_hook(b, "v1-01")
        wait_for(sink, "/new", 1)
        assert sink.at("/old") == []

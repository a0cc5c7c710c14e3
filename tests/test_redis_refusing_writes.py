"""A Redis that answers but refuses writes (a replica after a failover: READONLY; a failing
save: MISCONF) is a store that cannot keep events: the hook answers 503 (VTEX retries), /readyz
503 with its reason, and /metrics still answers, with `orderhook_ready 0` for the rule to fire.
redis-py cuts the READONLY code off the message, so it is told by its class."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import redis

from app.store.embedded import redis_executable
from tests.conftest import AUTH, CONFIG_TOML, Gateway, free_port, notification


def test_a_redis_that_became_a_replica_is_unavailable_not_an_internal_error(tmp_path: Path) -> None:
    port = free_port()
    command = [redis_executable(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    config = tmp_path / "o.toml"
    config.write_text(CONFIG_TOML.replace("{prefix}", "atk"))
    env = {
        **os.environ,
        "REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "ORDERHOOK_ADMIN_TOKEN": "admin-token",
    }
    try:
        gateway = Gateway(config, env, tmp_path / "g.log").start()
        try:
            redis.Redis(port=port).execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
            auth = {"Authorization": "Bearer admin-token"}
            metrics = httpx.get(gateway.url + "/metrics", headers=auth, timeout=10)
            ready = httpx.get(gateway.url + "/readyz", timeout=10)
            hook = httpx.post(gateway.url + "/hooks/vtex", json=notification(), headers=AUTH)
        finally:
            gateway.stop()
    finally:
        server.terminate()
        server.wait(10)
    assert metrics.status_code == 200, (
        metrics.status_code,
        metrics.text[:200],
        ready.status_code,
        ready.text,
    )
    assert "orderhook_ready 0.0" in metrics.text
    assert ready.status_code == 503 and "error" in ready.json(), (ready.status_code, ready.text)
    assert hook.status_code == 503 and "unavailable" in hook.json()["error"], hook.text

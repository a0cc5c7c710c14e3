"""The data's schema version (app/store/version.py): a fresh prefix is stamped, data from before
versions is stamped and used as it is, a newer or unknown version is refused in one line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from app.config import Settings
from app.runtime import open_runtime
from app.store.embedded import EmbeddedRedis, redis_executable
from app.store.schema import SCHEMA_VERSION, Keys
from app.store.version import check_schema
from tests.conftest import CONFIG_TOML, free_port
from tests.conftest import Gateway as LiveGateway
from tests.relaying import Gateway, body, hook, subscription
from tests.subscribers import Reply, Sink
from tests.test_check import wait_for_line
from tests.test_server import embedded_gateway

pytestmark = pytest.mark.anyio


async def test_a_fresh_prefix_is_stamped(settings: Settings, rdb: redis.Redis, keys: Keys) -> None:
    assert rdb.get(keys.schema_version) is None
    async with open_runtime(settings):
        assert rdb.get(keys.schema_version) == str(SCHEMA_VERSION).encode()
    async with open_runtime(settings):  # and read as this version's next time
        assert rdb.get(keys.schema_version) == str(SCHEMA_VERSION).encode()


async def test_processes_starting_at_once_agree(settings: Settings, rdb: redis.Redis) -> None:
    async with open_runtime(settings) as runtime:
        rdb.delete(runtime.store.keys.schema_version)
        await asyncio.gather(*(check_schema(runtime.store) for _ in range(8)))
        assert rdb.get(runtime.store.keys.schema_version) == str(SCHEMA_VERSION).encode()


async def test_unversioned_data_is_stamped_then_routed_and_delivered(
    gateway: Gateway, sink: Sink, rdb: redis.Redis, keys: Keys
) -> None:
    """Data an orderhook wrote before versions were stamped: a delivery waiting for its retry
    (its hash), an event in the ingest stream not routed yet (and no catalog of
    subscriptions: it is newer). Migrated to this version, and both reach the subscriber."""
    sink.script("/erp", Reply(500))
    erp = subscription(sink, "erp", retry_schedule="[2]")
    async with gateway(erp) as client:
        retried = await hook(client, State="invoiced")
        await sink.wait_for("/erp", 1)
        while not rdb.zcard(keys.ready("erp")):  # its failure settled (a retry), before the stop
            await asyncio.sleep(0.02)
    rdb.delete(keys.subscriptions, keys.subscriptions_revision, keys.audit, keys.received)
    async with gateway("") as client:  # no subscription: the event waits in the stream
        waiting = await hook(client, OrderId="v52277740atmc-02")
    rdb.delete(keys.schema_version)
    assert rdb.xlen(keys.ingest_stream) and rdb.keys(keys.delivery("*"))
    async with gateway(erp):
        got = await sink.wait_for("/erp", 3)
        assert rdb.get(keys.schema_version) == str(SCHEMA_VERSION).encode()
        while rdb.exists(keys.inflight("erp")):  # settled, before the relay stops
            await asyncio.sleep(0.02)
    assert {body(r)["id"] for r in got[1:]} == {retried, waiting}


def orderhook(command: str, config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", command, "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def config_for(tmp_path: Path, keys: Keys) -> Path:
    path = tmp_path / "orderhook.toml"
    sub = '\n[[subscriptions]]\nid = "erp"\nurl = "http://127.0.0.1:9/erp"\nsecret = "{s}"\n'
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    path.write_text(CONFIG_TOML.replace("{prefix}", keys.prefix) + sub.format(s=secret))
    return path


def assert_refused(done: subprocess.CompletedProcess[str], found: str) -> None:
    """Exit 2 after one line saying so (beside the embedded store's start and stop records)."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    [said] = [line for line in done.stderr.splitlines() if not line[:1].isdigit()]
    assert said.startswith("orderhook: ") and found in said, done.stderr


NEWER = "holds orderhook data of schema version 99 under key prefix"
REMEDY = (
    f"this orderhook reads version {SCHEMA_VERSION}: upgrade orderhook, or set [store] key_prefix"  # noqa: E501
)


@pytest.mark.parametrize("command", ["serve", "worker", "check"])
def test_a_newer_schema_is_refused_in_one_line_with_2(
    command: str, redis_url: str, rdb: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    rdb.set(keys.schema_version, 99)
    done = orderhook(command, config_for(tmp_path, keys), {**os.environ, "REDIS_URL": redis_url})
    assert_refused(done, f"{NEWER} '{keys.prefix}'; {REMEDY}")
    assert rdb.get(keys.schema_version) == b"99"  # left as it was


def test_a_version_that_is_no_number_is_refused(
    redis_url: str, rdb: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    rdb.set(keys.schema_version, "v2\nnext")
    done = orderhook("check", config_for(tmp_path, keys), {**os.environ, "REDIS_URL": redis_url})
    assert_refused(done, "is 'v2\\nnext', not a number")


def test_a_version_key_of_another_type_is_refused(
    redis_url: str, rdb: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    rdb.hset(keys.schema_version, "version", "1")  # another program's hash under our name
    done = orderhook("check", config_for(tmp_path, keys), {**os.environ, "REDIS_URL": redis_url})
    assert_refused(done, "that is no orderhook schema version (WRONGTYPE")


@pytest.mark.parametrize("command", ["serve", "check"])
def test_the_embedded_store_holding_a_newer_schema_is_refused(
    command: str, keys: Keys, tmp_path: Path
) -> None:
    data = tmp_path / "data"

    async def stamp_99() -> None:
        embedded = EmbeddedRedis(data, appendfsync="always")
        await embedded.start()
        client = redis.Redis.from_url(embedded.url)
        client.set(keys.schema_version, 99)
        client.close()
        await embedded.stop()

    asyncio.run(stamp_99())
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    done = orderhook(command, config_for(tmp_path, keys), {**env, "ORDERHOOK_DATA_DIR": str(data)})
    assert_refused(done, f"{NEWER} '{keys.prefix}'")


def test_a_redis_answering_late_is_checked_once_it_answers(keys: Keys, tmp_path: Path) -> None:
    """A gateway starts while Redis does not answer (VTEX retries on 503); once it answers
    with data of a newer schema, the gateway says so and stops with 2."""
    port = free_port()
    log = tmp_path / "gateway.log"
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    gateway = LiveGateway(config_for(tmp_path, keys), env, log).start()
    command = [redis_executable(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    server = subprocess.Popen([*command, "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                client.set(keys.schema_version, 99)
                break
            time.sleep(0.05)
        client.close()
        assert gateway.proc is not None
        assert gateway.proc.wait(20) == 2
        [line] = wait_for_line(log, "refusing to go on")
        assert f"ERROR orderhook.store refusing to go on: redis at 127.0.0.1:{port}/0 " in line
        assert f"{NEWER} '{keys.prefix}'" in line and "Traceback" not in log.read_text()
    finally:
        gateway.stop()
        server.terminate()
        server.wait(10)


def test_check_reads_the_embedded_store_a_running_gateway_serves(tmp_path: Path) -> None:
    """`check` beside a running gateway (a deploy's release step) asks that gateway's embedded
    store, rather than wait for its data directory."""
    gateway = embedded_gateway(tmp_path).start()
    try:
        started = time.monotonic()
        done = orderhook("check", gateway.config, gateway.env)
        assert done.returncode == 0, done.stderr
        assert "the embedded store in " in done.stdout and time.monotonic() - started < 10
    finally:
        assert gateway.stop() == 0

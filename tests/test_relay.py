"""The relay across processes: SIGKILL in a burst, `orderhook worker`, several processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from app.store.schema import Keys
from tests.conftest import AUTH, CONFIG_TOML, Gateway, notification
from tests.subscribers import Reply, Sink

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def relay_config(tmp_path: Path, prefix: str, sink: Sink, subs: list[str]) -> Path:
    text = CONFIG_TOML.replace("{prefix}", prefix)
    text += "\n[delivery]\nrouter_claim_idle_s = 1\n"
    for sub in subs:
        text += (
            f'\n[[subscriptions]]\nid = "{sub}"\nurl = "{sink.url("/" + sub)}"\n'
            f'secret = "{SECRET}"\nretry_schedule = [0.1, 0.2, 0.5, 1, 1, 1, 1, 1]\ntimeout = 1\n'
        )
    path = tmp_path / f"relay-{len(subs)}.toml"
    path.write_text(text)
    return path


def env_for(redis_url: str) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": redis_url}


async def post_all(url: str, bodies: list[bytes]) -> list[dict[str, Any] | None]:
    """POST every body concurrently; None where the gateway did not answer 200."""
    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(url, connector=connector) as session:

        async def one(body: bytes) -> dict[str, Any] | None:
            try:
                async with session.post("/hooks/vtex", data=body, headers=AUTH) as r:
                    return dict(await r.json()) if r.status == 200 else None
            except (aiohttp.ClientError, OSError):
                return None

        return await asyncio.gather(*(one(b) for b in bodies))


def delivered_ids(sink: Sink, path: str) -> Counter[str]:
    return Counter(r.headers["webhook-id"] for r in sink.at(path))


def test_sigkill_in_a_burst_loses_no_event(redis_url: str, keys: Keys, tmp_path: Path) -> None:
    with Sink() as sink:
        sink.script("/flaky", *[Reply(500) if i % 3 == 0 else Reply(200) for i in range(300)])
        config = relay_config(tmp_path, keys.prefix, sink, ["steady", "flaky"])
        gateway = Gateway(config, env_for(redis_url), tmp_path / "gateway.log").start()
        bodies = [orjson.dumps(notification(OrderId=f"kill-{i}")) for i in range(600)]

        async def burst_and_kill() -> list[dict[str, Any] | None]:
            posting = asyncio.ensure_future(post_all(gateway.url, bodies))
            while len(sink.at("/steady")) < 50:
                await asyncio.sleep(0.01)
            gateway.stop(signal.SIGKILL)
            return await posting

        answers = asyncio.run(burst_and_kill())
        accepted = {a["id"] for a in answers if a is not None}
        unanswered = [b for b, a in zip(bodies, answers, strict=True) if a is None]
        gateway.start()
        # VTEX retries what was not answered 200; the same notification keeps its id.
        retried = asyncio.run(post_all(gateway.url, unanswered))
        accepted |= {a["id"] for a in retried if a is not None}
        assert len(accepted) == 600
        try:
            for path in ("/steady", "/flaky"):
                sink.wait_for_sync(lambda p=path: accepted <= set(delivered_ids(sink, p)), 60, path)
        finally:
            gateway.stop()
        for path in ("/steady", "/flaky"):
            counts = delivered_ids(sink, path)
            extra = sum(counts.values()) - len(counts)
            print(f"{path}: {len(counts)} events delivered, {extra} requests beyond the first")
            assert set(counts) == accepted


def test_worker_delivers_what_the_api_accepted(redis_url: str, keys: Keys, tmp_path: Path) -> None:
    with Sink() as sink:
        api = Gateway(
            relay_config(tmp_path, keys.prefix, sink, []),
            env_for(redis_url),
            tmp_path / "api.log",
        ).start()
        bodies = [orjson.dumps(notification(OrderId=f"w-{i}")) for i in range(50)]
        answers = asyncio.run(post_all(api.url, bodies))
        assert all(a is not None for a in answers)
        config = relay_config(tmp_path, keys.prefix, sink, ["erp"])
        with (tmp_path / "worker.log").open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker", "--config", str(config)],
                env=env_for(redis_url),
                stdout=log,
                stderr=log,
            )
        try:
            sink.wait_for_sync(lambda: len(delivered_ids(sink, "/erp")) == 50, 20, "/erp")
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(30) == 0
            api.stop()
        assert set(delivered_ids(sink, "/erp")) == {a["id"] for a in answers if a}


def test_two_processes_share_the_work(redis_url: str, keys: Keys, tmp_path: Path) -> None:
    with Sink() as sink:
        config = relay_config(tmp_path, keys.prefix, sink, ["erp"])
        first = Gateway(config, env_for(redis_url), tmp_path / "first.log").start()
        second = Gateway(config, env_for(redis_url), tmp_path / "second.log").start()
        try:
            bodies = [orjson.dumps(notification(OrderId=f"two-{i}")) for i in range(200)]
            half = len(bodies) // 2

            async def both() -> list[dict[str, Any] | None]:
                a, b = await asyncio.gather(
                    post_all(first.url, bodies[:half]), post_all(second.url, bodies[half:])
                )
                return a + b

            answers = asyncio.run(both())
            ids = {a["id"] for a in answers if a}
            sink.wait_for_sync(lambda: set(delivered_ids(sink, "/erp")) == ids, 20, "/erp")
        finally:
            first.stop()
            second.stop()
        counts = delivered_ids(sink, "/erp")
        assert len(counts) == 200
        assert sum(counts.values()) == 200  # no process took another's delivery

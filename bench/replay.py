"""The replay of a time range: how fast a job replays a 10,000-event range, and what it does to
the latency of live deliveries meanwhile, on loopback.

Run from the repository root, as a module:

    .venv/bin/python -m bench.replay [--events N] [--rate R] [--duration S]

It starts, each in its own process group on 127.0.0.1 and free ports, a `redis-server` without
persistence, the sink (`bench/delivery_sink.py`, which records each POST's receipt time and
`webhook-id`) and `orderhook serve` with one subscription, `s1` (no filter, `max_in_flight`
32), to the sink's /s1. Then:

1. seed: N routed events written as route.lua keeps them (the event, `Keys.event`, and its
   receipt time in `Keys.received`), received over the last minutes, never delivered;
2. `live`: an open loop of R notifications/s for S seconds (sent at fixed times whatever the
   answers): latency from each hook POST being sent to the sink's receipt of its delivery;
3. `live+replay`: the same load again, and at its start `POST /admin/subscriptions/s1/replay`
   over the seeded range: the job's events/s (from the request to the job reading `done`,
   polled every 20 ms), the replayed deliveries/s at the sink (request to the last one), and
   the live latency of the hooks sent while the replayed deliveries were still arriving.

The results go to `bench/results/replay-<timestamp>.json`. Exit status: 0 when every live
notification and every replayed event arrived; 1 otherwise; 2 when a server did not start;
130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis
import uvloop

from app.config import DEFAULT_KEY_PREFIX, DEFAULT_LOG_RETENTION_S
from app.events import normalize, parse_body
from app.store.schema import Keys
from bench.delivery import (
    HOOK_BODY,
    HOOK_HEADERS,
    SECRET,
    latency_summary,
    machine_info,
    start_sink,
    urlopen_text,
)
from bench.ingest import (
    CONFIG_TOML,
    HOST,
    RESULTS_DIR,
    BenchError,
    Server,
    child_env,
    free_port,
    log_excerpt,
    orderhook_executable,
    run_in_workdir,
    spawn,
    start_redis,
    stop,
    wait_until_healthy,
    wait_until_redis_answers,
)

ADMIN_TOKEN = "bench-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SEED_SPREAD_S = 600  # the seeded events were received over the last ten minutes
SEED_BATCH = 1000
JOB_POLL_S = 0.02
DRAIN_TIMEOUT_S = 60.0


@dataclass
class Phase:
    """One phase of live load: send times (monotonic) by event id."""

    name: str
    sent: dict[str, float] = field(default_factory=dict)
    refused: int = 0


@dataclass
class Replay:
    """The replay's timings (monotonic) and its job's last status."""

    started: float = 0.0
    job_done: float = 0.0
    status: dict[str, Any] = field(default_factory=dict)


def config_toml(sink_port: int) -> str:
    return CONFIG_TOML + (
        f'\n[[subscriptions]]\nid = "s1"\nurl = "http://{HOST}:{sink_port}/s1"\n'
        f'secret = "{SECRET}"\nmax_in_flight = 32\n'
    )


def start_gateway(config: Path, workdir: Path, redis_url: str) -> Server:
    """`orderhook serve` on `redis_url`, with the admin API (bench.ingest's has none)."""
    port = free_port()
    command = [str(orderhook_executable()), "serve", "--config", str(config)]
    command += ["--host", HOST, "--port", str(port)]
    log_path = workdir / "gateway.log"
    env = child_env(REDIS_URL=redis_url, ORDERHOOK_ADMIN_TOKEN=ADMIN_TOKEN)
    return Server("G", "gateway", port, log_path, spawn(command, log_path, env))


def seed(redis_port: int, count: int) -> tuple[list[str], dict[str, str]]:
    """`count` routed events, as route.lua keeps them; their ids, and the replay's range: from
    before the first one's receipt to just after the last one's."""
    client = redis.Redis(host=HOST, port=redis_port)
    keys, now = Keys(DEFAULT_KEY_PREFIX), time.time()
    ids = []
    for start in range(0, count, SEED_BATCH):
        with client.pipeline(transaction=False) as pipe:
            for n in range(start, min(count, start + SEED_BATCH)):
                received = now - SEED_SPREAD_S * (1 - n / count)
                at = datetime.fromtimestamp(received, UTC).isoformat(timespec="milliseconds")
                event = normalize(parse_body((HOOK_BODY % f"seed-{n}").encode()), at)  # type: ignore[arg-type]
                pipe.set(keys.event(event["id"]), orjson.dumps(event), ex=DEFAULT_LOG_RETENTION_S)
                pipe.zadd(keys.received, {event["id"]: int(received * 1000)})
                ids.append(event["id"])
            pipe.execute()
    client.close()
    since = datetime.fromtimestamp(now - SEED_SPREAD_S - 1, UTC).isoformat()
    return ids, {"since": since, "until": datetime.fromtimestamp(now + 0.001, UTC).isoformat()}


async def live_load(
    session: aiohttp.ClientSession, url: str, phase: Phase, rate: float, duration_s: float
) -> None:
    """An open loop: notification i sent at start + i / rate, whatever the answers."""
    start, tasks = time.monotonic(), []
    for i in range(int(rate * duration_s)):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        tasks.append(asyncio.create_task(send(session, url, phase, f"live-{phase.name}-{i}")))
    await asyncio.gather(*tasks)


async def send(session: aiohttp.ClientSession, url: str, phase: Phase, order: str) -> None:
    sent = time.monotonic()
    async with session.post(url, data=HOOK_BODY % order, headers=HOOK_HEADERS) as r:
        answer = await r.json(content_type=None)
    if r.status == 200 and answer.get("status") == "accepted":
        phase.sent[answer["id"]] = sent
    else:
        phase.refused += 1


async def run_replay(
    session: aiohttp.ClientSession, base: str, wanted: dict[str, str], out: Replay
) -> None:
    out.started = time.monotonic()
    url = f"{base}/admin/subscriptions/s1/replay"
    async with session.post(url, json=wanted, headers=ADMIN) as r:
        if r.status != 202:
            raise BenchError(f"replay refused: {r.status} {await r.text()}")
        job = (await r.json())["job"]
    while True:
        async with session.get(f"{base}/admin/jobs/{job}", headers=ADMIN) as r:
            out.status = await r.json()
        if out.status["state"] != "running":
            out.job_done = time.monotonic()
            return
        await asyncio.sleep(JOB_POLL_S)


def receipts(sink_url: str) -> dict[str, float]:
    """The sink's first receipt time by webhook-id."""
    found: dict[str, float] = {}
    for line in urlopen_text(sink_url + "/receipts?since=0").splitlines():
        when, _, webhook_id = line.split(" ")
        found.setdefault(webhook_id, float(when))
    return found


async def drain(sink_url: str, wanted: int) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while int(urlopen_text(sink_url + "/count")) < wanted and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


async def drive(
    args: argparse.Namespace, base: str, sink_url: str, wanted: dict[str, str], seeded: int
) -> tuple[list[Phase], Replay]:
    live, during, replay = Phase("live"), Phase("live+replay"), Replay()
    hook_url = base + "/hooks/vtex"
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:
        print(f"live: {args.rate:g}/s for {args.duration:g} s ...", flush=True)
        await live_load(session, hook_url, live, args.rate, args.duration)
        await drain(sink_url, len(live.sent))
        print(f"live+replay: the same, and a replay of {seeded} events ...", flush=True)
        await asyncio.gather(
            live_load(session, hook_url, during, args.rate, args.duration),
            run_replay(session, base, wanted, replay),
        )
        await drain(sink_url, len(live.sent) + len(during.sent) + seeded)
    return [live, during], replay


def summarize(
    phases: Sequence[Phase], replay: Replay, seeded_ids: Sequence[str], got: dict[str, float]
) -> dict[str, Any]:
    replayed = [got[i] for i in seeded_ids if i in got]
    last = max(replayed, default=replay.started)
    job_s = replay.job_done - replay.started
    result: dict[str, Any] = {
        "replay": {
            "events": len(seeded_ids),
            "job": replay.status,
            "job_s": round(job_s, 3),
            "job_events_per_s": round(replay.status["done"] / job_s, 1) if job_s > 0 else None,
            "delivered": len(replayed),
            "delivered_s": round(last - replay.started, 3),
            "delivered_per_s": round(len(replayed) / (last - replay.started), 1)
            if last > replay.started
            else None,
        }
    }
    for phase in phases:
        latencies = [got[i] - t for i, t in phase.sent.items() if i in got]
        result[phase.name] = {
            "sent": len(phase.sent) + phase.refused,
            "refused": phase.refused,
            "missing": sum(1 for i in phase.sent if i not in got),
            "latency_ms": latency_summary(latencies),
        }
    overlap = [got[i] - t for i, t in phases[-1].sent.items() if i in got and t <= last]
    result["live while the replay was delivered"] = {
        "sent": len(overlap),
        "latency_ms": latency_summary(overlap),
    }
    return result


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        redis_port, redis_process = start_redis(args.redis_server, workdir)
        stack.callback(stop, redis_process)
        wait_until_redis_answers(redis_port, redis_process)
        sink = start_sink(workdir)
        stack.callback(stop, sink.process)
        wait_until_healthy(sink)
        config = workdir / "orderhook.toml"
        config.write_text(config_toml(sink.port), encoding="utf-8")
        gateway = start_gateway(config, workdir, f"redis://{HOST}:{redis_port}/0")
        stack.callback(stop, gateway.process)
        try:
            wait_until_healthy(gateway)
        except BenchError as exc:
            raise BenchError(f"{exc}\n{log_excerpt(gateway.log_path)}") from None
        print(f"seeding {args.events} routed events ...", flush=True)
        ids, wanted = seed(redis_port, args.events)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            phases, replay = runner.run(
                drive(args, gateway.base_url, sink.base_url, wanted, len(ids))
            )
        return summarize(phases, replay, ids, receipts(sink.base_url))


def report(args: argparse.Namespace, workdir: Path, result: dict[str, Any]) -> bool:
    r = result["replay"]
    print(
        f"\nreplay of {r['events']} events: job {r['job_s']} s = {r['job_events_per_s']} "
        f"events/s; delivered {r['delivered']} in {r['delivered_s']} s = "
        f"{r['delivered_per_s']} deliveries/s; job {r['job']}"
    )
    print(f"\n{'phase':<36} {'sent':>6} {'missing':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name in ("live", "live+replay", "live while the replay was delivered"):
        row, lat = result[name], result[name]["latency_ms"]
        print(
            f"{name:<36} {row['sent']:>6} {row.get('missing', 0):>8} {lat['p50']!s:>8} "
            f"{lat['p99']!s:>8} {lat['max']!s:>8}"
        )
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"replay-{stamp}.json"
    document = {
        "timestamp": stamp,
        "settings": vars(args),
        "machine": machine_info(args.redis_server, workdir),
        **result,
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"\nresults: {path}")
    complete = r["delivered"] == r["events"] and r["job"].get("state") == "done"
    return complete and not any(result[n]["missing"] for n in ("live", "live+replay"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000, help="events in the range")
    parser.add_argument("--rate", type=float, default=100.0, help="live notifications/s")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per live phase")
    parser.add_argument("--redis-server", default=shutil.which("redis-server"))
    parser.add_argument("--keep-temp", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if not args.redis_server:
        parser.error("no redis-server found; pass --redis-server PATH")
    return args


def run(args: argparse.Namespace, workdir: Path) -> int:
    result = measure(args, workdir)
    return 0 if report(args, workdir, result) else 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_in_workdir(run, parse_args(argv), "orderhook-bench-replay-")


if __name__ == "__main__":
    sys.exit(main())

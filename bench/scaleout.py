"""Ingest and delivery throughput with 1, 2 and 4 gateway processes on one Redis.

    .venv/bin/python -m bench.scaleout [--processes 1,2,4] [--duration 10] [--events 10000]

It starts a `redis-server` (no persistence) and the sink of `bench/delivery.py` on loopback;
then for each process count N, `orderhook serve --workers N` (N processes on one port, one
Redis):

- ingest: without subscriptions, loaded by `wrk -t2 -c128` with unique notifications for
  `--duration` s: requests/s and p99;
- delivery: with 3 subscriptions to the sink (`max_in_flight` 32 each, in every process), a
  burst of `--events` notifications (64 senders): deliveries/s at the sink between its first
  and last receipt, and that every delivery arrived exactly once.

Redis is flushed between runs. It prints the machine, a table, and draws
`docs/bench/scaleout.png` (both throughputs against N). Exit status: 0 when every request was
accepted and every delivery arrived; 1 otherwise; 2 when a server did not start; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import redis
import uvloop

from bench.delivery import Load, Plan, closed_loop, config_toml, start_sink, urlopen_text
from bench.ingest import (
    CHARTS_DIR,
    CONFIG_TOML,
    HOST,
    LUA_SCRIPT,
    BenchError,
    Server,
    child_env,
    free_port,
    log_excerpt,
    orderhook_executable,
    parse_wrk,
    print_machine,
    run_in_workdir,
    spawn,
    start_redis,
    stop,
    wait_until_healthy,
    wait_until_redis_answers,
)

DRAIN_TIMEOUT_S = 120.0


@dataclass
class Point:
    processes: int
    ingest_rps: float
    ingest_p99_ms: float
    ingest_failures: int
    deliveries: int
    expected: int
    duplicates: int
    delivery_rate: float


def start_serve(workdir: Path, config: Path, redis_url: str, processes: int, tag: str) -> Server:
    port = free_port()
    command = [str(orderhook_executable()), "serve", "--config", str(config)]
    command += ["--host", HOST, "--port", str(port), "--workers", str(processes)]
    log_path = workdir / f"gateway-{tag}.log"
    process = spawn(command, log_path, child_env(REDIS_URL=redis_url))
    server = Server(tag, f"serve --workers {processes}", port, log_path, process)
    try:
        wait_until_healthy(server)
    except BenchError as exc:
        stop(process)
        raise BenchError(f"{exc}\n{log_excerpt(log_path)}") from None
    return server


def measure_ingest(args: argparse.Namespace, server: Server) -> tuple[float, float, int]:
    url = server.base_url + "/hooks/vtex"
    command = ["wrk", "-t2", "-c128", f"-d{args.duration:g}s", "--latency", "-s", str(LUA_SCRIPT)]
    done = subprocess.run(
        [*command, url, "--", f"{server.key}{time.monotonic_ns()}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise BenchError(f"wrk failed: {done.stderr}")
    run = parse_wrk(done.stdout, server.key, 1)
    return run.rps, run.p99_ms, run.failures


async def burst(url: str, events: int) -> Load:
    load = Load(Plan(1, "burst", "closed", events, None, 64))
    async with aiohttp.ClientSession() as session:
        await closed_loop(session, url, f"s{time.monotonic_ns()}", load)
    return load


def measure_delivery(server: Server, sink: Server, events: int) -> tuple[int, int, int, float]:
    first = int(urlopen_text(sink.base_url + "/count"))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        load = runner.run(burst(server.base_url + "/hooks/vtex", events))
    expected = 3 * len(load.sent_at)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while int(urlopen_text(sink.base_url + "/count")) - first < expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    lines = urlopen_text(f"{sink.base_url}/receipts?since={first}").splitlines()
    receipts = [line.split(" ") for line in lines]
    times = sorted(float(at) for at, _, _ in receipts)
    seen = Counter((path, webhook_id) for _, path, webhook_id in receipts)
    duplicates = sum(n - 1 for n in seen.values())
    rate = len(times) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return len(seen), expected, duplicates, rate


def run(args: argparse.Namespace, workdir: Path) -> int:
    points = []
    with contextlib.ExitStack() as stack:
        redis_port, redis_process = start_redis(args.redis_server, workdir)
        stack.callback(stop, redis_process)
        wait_until_redis_answers(redis_port, redis_process)
        redis_url = f"redis://{HOST}:{redis_port}/0"
        client = redis.Redis(host=HOST, port=redis_port)
        sink = start_sink(workdir)
        stack.callback(stop, sink.process)
        wait_until_healthy(sink)
        ingest_config = workdir / "ingest.toml"
        ingest_config.write_text(CONFIG_TOML, encoding="utf-8")
        relay_config = workdir / "relay.toml"
        relay_config.write_text(config_toml(sink.port, 32), encoding="utf-8")
        for n in args.processes:
            client.flushall()
            server = start_serve(workdir, ingest_config, redis_url, n, f"i{n}")
            try:
                rps, p99, failures = measure_ingest(args, server)
            finally:
                stop(server.process)
            client.flushall()
            server = start_serve(workdir, relay_config, redis_url, n, f"d{n}")
            try:
                delivered, expected, duplicates, rate = measure_delivery(server, sink, args.events)
            finally:
                stop(server.process)
            point = Point(n, rps, p99, failures, delivered, expected, duplicates, rate)
            points.append(point)
            print(
                f"{n} process(es): ingest {rps:,.0f} req/s p99 {p99:.1f} ms (failures {failures})"
                f" | delivery {rate:,.0f}/s, {delivered}/{expected} arrived, {duplicates} dups",
                flush=True,
            )
        client.close()
    return report(args, workdir, points)


def report(args: argparse.Namespace, workdir: Path, points: list[Point]) -> int:
    print_machine(args.redis_server, workdir)
    base = points[0]
    head = ["processes", "ingest req/s", "x", "p99 ms", "deliveries/s", "x"]
    print("\n" + " ".join(f"{h:>{w}}" for h, w in zip(head, (9, 13, 5, 7, 13, 5), strict=True)))
    for p in points:
        print(
            f"{p.processes:>9} {p.ingest_rps:>13,.0f} {p.ingest_rps / base.ingest_rps:>5.2f} "
            f"{p.ingest_p99_ms:>7.1f} {p.delivery_rate:>13,.0f} "
            f"{p.delivery_rate / base.delivery_rate if base.delivery_rate else 0:>5.2f}"
        )
    print(f"chart: {draw(points)}")
    ok = all(p.ingest_failures == 0 and p.deliveries == p.expected for p in points)
    return 0 if ok else 1


def draw(points: list[Point]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    CHARTS_DIR.mkdir(parents=True, exist_ok=True)
    xs = [p.processes for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.plot(xs, [p.ingest_rps for p in points], marker="o")
    left.set(title="ingest (wrk -t2 -c128)", xlabel="gateway processes", ylabel="requests/s")
    right.plot(xs, [p.delivery_rate for p in points], marker="o", color="tab:green")
    right.set(title="delivery (3 subscriptions)", xlabel="gateway processes", ylabel="deliveries/s")
    for ax in (left, right):
        ax.set_xticks(xs)
        ax.set_ylim(0, None)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = CHARTS_DIR / "scaleout.png"
    fig.savefig(path, dpi=110)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--events", type=int, default=10000)
    parser.add_argument("--redis-server", default="redis-server")
    parser.add_argument("--keep-temp", action="store_true")
    args = parser.parse_args(argv)
    args.processes = [int(n) for n in re.split(r"[ ,]+", args.processes) if n]
    return args


def main(argv: list[str] | None = None) -> int:
    return run_in_workdir(run, parse_args(argv), "orderhook-scaleout-", needs_wrk=True)


if __name__ == "__main__":
    raise SystemExit(main())

"""Delivery throughput with `ordering = "per-order"` against without, side by side in one run.

    .venv/bin/python -m bench.ordering [--orders 1000] [--states 5] [--rounds 3] [--workers 1]

It starts a `redis-server` (no persistence) and the sink of `bench/delivery.py` on loopback, then
for each round runs both modes, alternating (none, per-order, none, per-order, ...) so that the
machine's noise falls on both: a fresh `orderhook serve` (plus `--workers` `orderhook worker`
processes) with 3 subscriptions in that mode, a burst of orders × states notifications sent by
64 concurrent senders, each order's states sent in their order but orders interleaved at random
(the same sequence in every run; an order's next state is sent once its previous one was
answered, since without a reorder window arrival order decides), and waits until the sink has
every delivery. Throughput is
deliveries/s at the sink between its first and last receipt. For per-order runs it also checks
that each subscription received each order's states in order. Redis is flushed between runs.

Prints each run, the median per mode, and the ratio per-order / none. Target: >= 70%.
Exit status: 0 when every delivery arrived (and in order where ordered); 1 otherwise; 2 when a
server did not start; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import redis
import uvloop

from bench.delivery import HOOK_HEADERS, SECRET, SUBSCRIPTION_IDS, start_sink
from bench.ingest import (
    CONFIG_TOML,
    HOST,
    BenchError,
    Server,
    child_env,
    log_excerpt,
    orderhook_executable,
    print_machine,
    run_in_workdir,
    spawn,
    start_gateway,
    start_redis,
    stop,
    wait_until_healthy,
    wait_until_redis_answers,
)

STATES = ["order-created", "payment-approved", "ready-for-handling", "handling", "invoiced"]
MODES = ("none", "per-order")
CONCURRENCY = 64
TARGET_RATIO = 0.70
DRAIN_TIMEOUT_S = 120.0


@dataclass
class Run:
    mode: str
    round: int
    deliveries: int
    expected: int
    seconds: float
    out_of_order: int

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds if self.seconds > 0 else 0.0


def sends(orders: int, states: int, seed: int = 1) -> list[tuple[int, int]]:
    """(order, state) pairs: each order's states in order, orders interleaved at random."""
    line = [o for o in range(orders) for _ in range(states)]
    random.Random(seed).shuffle(line)
    seen: dict[int, int] = defaultdict(int)
    pairs = []
    for order in line:
        pairs.append((order, seen[order]))
        seen[order] += 1
    return pairs


def hook_body(tag: str, order: int, state: int) -> bytes:
    return orjson.dumps(
        {
            "Domain": "Fulfillment",
            "OrderId": f"{tag}-{order:06d}-01",
            "State": STATES[state % len(STATES)],
            "LastState": None,
            "CurrentChange": f"2026-11-27T10:00:{state:02d}.{order % 10_000_000:07d}Z",
            "Origin": {"Account": "mystore", "Key": "k"},
        }
    )


async def burst(url: str, tag: str, pairs: list[tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Send every notification (64 in flight); event id → (order, state)."""
    ids: dict[str, tuple[int, int]] = {}
    queue = iter(pairs)
    answered = {pair: asyncio.Event() for pair in pairs}
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def sender() -> None:
            for order, state in queue:
                if state > 0:  # as VTEX: an order's next state only once the last was taken
                    await answered[(order, state - 1)].wait()
                body = hook_body(tag, order, state)
                async with session.post(url, data=body, headers=HOOK_HEADERS) as r:
                    answer = await r.json()
                    if r.status != 200 or answer.get("status") != "accepted":
                        raise BenchError(f"hook answered {r.status} {answer}")
                    ids[answer["id"]] = (order, state)
                answered[(order, state)].set()

        await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))
    return ids


def receipts(sink: Server, since: int) -> list[tuple[float, str, str]]:
    with urllib.request.urlopen(f"{sink.base_url}/receipts?since={since}", timeout=30) as r:
        lines = r.read().decode().splitlines()
    rows = []
    for line in lines:
        at, path, webhook_id = line.split(" ")
        rows.append((float(at), path, webhook_id))
    return rows


def sink_count(sink: Server) -> int:
    with urllib.request.urlopen(f"{sink.base_url}/count", timeout=5) as r:
        return int(r.read())


def config_toml(sink_port: int, mode: str) -> str:
    return CONFIG_TOML + "".join(
        f"""
[[subscriptions]]
id = "{sub}"
url = "http://{HOST}:{sink_port}/{sub}"
secret = "{SECRET}"
max_in_flight = 32
ordering = "{mode}"
"""
        for sub in SUBSCRIPTION_IDS
    )


def one_run(
    args: argparse.Namespace, workdir: Path, sink: Server, redis_url: str, mode: str, rnd: int
) -> Run:
    config = workdir / f"orderhook-{mode}-{rnd}.toml"
    config.write_text(config_toml(sink.port, mode), encoding="utf-8")
    with contextlib.ExitStack() as stack:
        gateway = start_gateway(f"{mode}-{rnd}", "gateway", config, workdir, redis_url)
        stack.callback(stop, gateway.process)
        for n in range(args.workers):
            command = [str(orderhook_executable()), "worker", "--config", str(config)]
            log = workdir / f"worker-{mode}-{rnd}-{n}.log"
            stack.callback(stop, spawn(command, log, child_env(REDIS_URL=redis_url)))
        try:
            wait_until_healthy(gateway)
        except BenchError as exc:
            raise BenchError(f"{exc}\n{log_excerpt(gateway.log_path)}") from None
        first = sink_count(sink)
        pairs = sends(args.orders, args.states)
        tag = f"r{rnd}{mode[0]}"
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            ids = runner.run(burst(f"{gateway.base_url}/hooks/vtex", tag, pairs))
        expected = len(ids) * len(SUBSCRIPTION_IDS)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while sink_count(sink) - first < expected and time.monotonic() < deadline:
            time.sleep(0.1)
    rows = receipts(sink, first)
    times = sorted(at for at, _, _ in rows)
    out_of_order = 0
    last: dict[tuple[str, int], int] = {}
    seen: dict[tuple[str, int], list[tuple[float, int]]] = defaultdict(list)
    for at, path, webhook_id in sorted(rows):
        order, state = ids.get(webhook_id, (-1, -1))
        seen[(path, order)].append((at, state))
        if last.get((path, order), -1) > state:
            out_of_order += 1
            if out_of_order <= 3:
                print(f"  out of order: {path} order {order}: {seen[(path, order)]}")
        last[(path, order)] = max(state, last.get((path, order), -1))
    duplicates = len(rows) - len({(path, webhook_id) for _, path, webhook_id in rows})
    if duplicates:
        print(f"  duplicates: {duplicates}")
    seconds = times[-1] - times[0] if len(times) > 1 else 0.0
    return Run(mode, rnd, len(rows), expected, seconds, out_of_order)


def run(args: argparse.Namespace, workdir: Path) -> int:
    runs: list[Run] = []
    with contextlib.ExitStack() as stack:
        redis_port, redis_process = start_redis(args.redis_server, workdir)
        stack.callback(stop, redis_process)
        wait_until_redis_answers(redis_port, redis_process)
        sink = start_sink(workdir)
        stack.callback(stop, sink.process)
        wait_until_healthy(sink)
        redis_url = f"redis://{HOST}:{redis_port}/0"
        client = redis.Redis(host=HOST, port=redis_port)
        for rnd in range(1, args.rounds + 1):
            for mode in MODES:
                client.flushall()
                r = one_run(args, workdir, sink, redis_url, mode, rnd)
                runs.append(r)
                print(
                    f"round {rnd} {mode:<9} {r.deliveries}/{r.expected} deliveries in "
                    f"{r.seconds:.2f} s = {r.rate:,.0f}/s, out of order {r.out_of_order}",
                    flush=True,
                )
        client.close()
    return report(args, workdir, runs)


def report(args: argparse.Namespace, workdir: Path, runs: list[Run]) -> int:
    print_machine(args.redis_server, workdir)
    print(
        f"setup: {args.orders} orders x {args.states} states = {args.orders * args.states} "
        f"notifications, 3 subscriptions (max_in_flight 32), serve + {args.workers} worker(s), "
        f"{CONCURRENCY} senders"
    )
    medians: dict[str, float] = {}
    for mode in MODES:
        rates = [r.rate for r in runs if r.mode == mode]
        medians[mode] = statistics.median(rates)
        shown = ", ".join(f"{rate:,.0f}" for rate in rates)
        print(f"  {mode:<9} deliveries/s: median {medians[mode]:,.0f}  ({shown})")
    ratio = medians["per-order"] / medians["none"] if medians["none"] else 0.0
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    print(f"ratio per-order / none: {ratio:.1%}  (target >= {TARGET_RATIO:.0%}): {verdict}")
    complete = all(r.deliveries == r.expected for r in runs)
    in_order = all(r.out_of_order == 0 for r in runs if r.mode == "per-order")
    print(f"every delivery arrived: {complete}; per-order runs in order: {in_order}")
    return 0 if complete and in_order else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--states", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="orderhook worker processes")
    parser.add_argument("--redis-server", default="redis-server")
    parser.add_argument("--keep-temp", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_in_workdir(run, parse_args(argv), "orderhook-ordering-")


if __name__ == "__main__":
    raise SystemExit(main())

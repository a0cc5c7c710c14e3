"""`orderhook subscriptions ...`: `apply` against a real Redis; the commands that go through the
admin API against a loopback server answering per issue 15's contract (FakeApi, until the
gateway serves those endpoints), and their error paths."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.cli_subscriptions import bar
from app.config import Settings
from app.runtime import open_runtime
from app.signing import new_secret
from app.store.catalog import Record
from app.store.client import text
from app.store.schema import Keys
from app.subscriptions.apply import audit_entry, new_record
from app.subscriptions.secrets import StoredSecrets
from app.subscriptions.spec import SubscriptionSpec
from tests.conftest import free_port

TOKEN = "admin-token"


def orderhook(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    every = {**os.environ, "ORDERHOOK_ADMIN_TOKEN": TOKEN, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        env=every,
        timeout=60,
    )


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


# --- the commands through the admin API, against FakeApi -----------------------------------------


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)


class FakeApi:
    """The admin API for subscriptions as issue 15's contract gives it, in memory, on a
    loopback port; `requests` is what it was sent (method, path, JSON body)."""

    def __init__(self) -> None:
        self.subs: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        routes = [
            Route("/admin/subscriptions", self.listing, methods=["GET"]),
            Route("/admin/subscriptions", self.create, methods=["POST"]),
            Route("/admin/subscriptions/{id}", self.one, methods=["GET", "PATCH", "DELETE"]),
            Route("/admin/subscriptions/{id}/{action}", self.act, methods=["POST"]),
            Route("/admin/jobs/{id}", self.job, methods=["GET"]),
        ]
        self.port = free_port()
        config = uvicorn.Config(
            Starlette(routes=routes), port=self.port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _seen(self, request: Request) -> Any:
        body = await request.json() if await request.body() else None
        self.requests.append((request.method, request.url.path, body))
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return error(401, "wrong admin token")
        return body

    async def listing(self, request: Request) -> JSONResponse:
        refused = await self._seen(request)
        if isinstance(refused, JSONResponse):
            return refused
        return JSONResponse({"subscriptions": list(self.subs.values())})

    async def create(self, request: Request) -> JSONResponse:
        body = await self._seen(request)
        if isinstance(body, JSONResponse):
            return body
        if body["id"] in self.subs:
            return error(409, f"subscription {body['id']!r} exists")
        if "url" not in body:
            return error(400, "`url` expected: a push subscription needs one")
        made = {**body, "origin": "api", "version": 1, "state": "enabled", "queued": 0}
        made |= {"inFlight": 0, "deadLetters": 0, "secret": "***"}
        self.subs[body["id"]] = made
        return JSONResponse({**made, "secret": body.get("secret") and "***" or "whsec_made"}, 201)

    async def one(self, request: Request) -> JSONResponse:
        body = await self._seen(request)
        if isinstance(body, JSONResponse):
            return body
        sub = request.path_params["id"]
        if sub not in self.subs:
            return error(404, f"no subscription {sub!r}")
        if request.method == "PATCH":
            self.subs[sub] |= {**body, "version": self.subs[sub]["version"] + 1}
        if request.method == "DELETE":
            del self.subs[sub]
            return JSONResponse({"deleted": sub, "dropped": 7})
        return JSONResponse(self.subs[sub])

    async def act(self, request: Request) -> JSONResponse:
        body = await self._seen(request)
        if isinstance(body, JSONResponse):
            return body
        sub, action = request.path_params["id"], request.path_params["action"]
        if sub not in self.subs:
            return error(404, f"no subscription {sub!r}")
        if action in ("pause", "resume"):
            self.subs[sub]["state"] = "paused" if action == "pause" else "enabled"
            return JSONResponse({"id": sub, "state": self.subs[sub]["state"]})
        if action == "rotate-secret":
            return JSONResponse({"secret": "whsec_new", "grace_until": "2026-11-28T04:00:00Z"})
        job = f"job-{len(self.jobs) + 1}"
        self.jobs[job] = {"state": "running", "total": 10000, "done": 0, "sub": sub}
        return JSONResponse({"job": job}, 202)

    async def job(self, request: Request) -> JSONResponse:
        await self._seen(request)
        job = self.jobs[request.path_params["id"]]
        job["done"] = min(job["done"] + 2500, job["total"])
        if job["sub"] == "broken" and job["done"] >= 5000:
            job |= {"state": "failed", "error": "Redis went away"}
        elif job["done"] == job["total"]:
            job["state"] = "done"
        return JSONResponse({k: v for k, v in job.items() if k != "sub"})

    def __enter__(self) -> FakeApi:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with FakeApi() as fake:
        yield fake


def test_create_list_show_update_pause_resume_rotate_delete(api: FakeApi, tmp_path: Path) -> None:
    url = ("--url", api.url)
    sub = tmp_path / "sub.json"
    sub.write_text('{"id": "erp", "url": "https://erp.example.com/vtex", "timeout": 5}')
    made = orderhook("subscriptions", "create", "--file", str(sub), *url)
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines()[:2] == ["created erp (version 1)", "secret: whsec_made"]
    one_line_error(
        orderhook("subscriptions", "create", "--file", str(sub), *url),
        "HTTP 409: subscription 'erp' exists",
    )
    listing = orderhook("subscriptions", "list", *url)
    assert listing.returncode == 0, listing.stderr
    header, rule, row = listing.stdout.splitlines()
    assert header.split() == ["id", "origin", "version", "state", "queued", "in", "flight"] + [
        "dead",
        "url",
    ]
    assert row.split() == [
        "erp",
        "api",
        "1",
        "enabled",
        "0",
        "0",
        "0",
        "https://erp.example.com/vtex",
    ]
    shown = orderhook("subscriptions", "show", "erp", *url)
    assert (
        shown.returncode == 0
        and '"timeout": 5' in shown.stdout
        and '"secret": "***"' in shown.stdout
    )
    patch = tmp_path / "patch.json"
    patch.write_text('{"timeout": 9}')
    updated = orderhook("subscriptions", "update", "erp", "--file", str(patch), *url)
    assert updated.stdout == "updated erp (version 2)\n"
    assert ("PATCH", "/admin/subscriptions/erp", {"timeout": 9}) in api.requests
    paused = orderhook("subscriptions", "pause", "erp", *url)
    assert paused.stdout.startswith("erp: paused")
    assert orderhook("subscriptions", "resume", "erp", *url).stdout == "erp: enabled\n"
    rotated = orderhook("subscriptions", "rotate-secret", "erp", "--grace-s", "3600", *url)
    assert rotated.stdout.splitlines()[0] == "new secret: whsec_new"
    assert "the old secret signs too until 2026-11-28T04:00:00Z" in rotated.stdout
    assert ("POST", "/admin/subscriptions/erp/rotate-secret", {"grace_s": 3600}) in api.requests
    deleted = orderhook("subscriptions", "delete", "erp", *url)
    assert deleted.stdout.startswith("deleted erp: 7 pending deliveries")
    one_line_error(
        orderhook("subscriptions", "show", "erp", *url), "HTTP 404: no subscription 'erp'"
    )
    assert orderhook("subscriptions", "list", *url).stdout == "no subscriptions\n"


def test_a_file_that_is_no_json_object_is_one_line_and_nothing_is_sent(
    api: FakeApi, tmp_path: Path
) -> None:
    url = ("--url", api.url)
    cases = {"missing.json": None, "bad.json": "{nope", "list.json": "[1, 2]"}
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_text(content)
    one_line_error(
        orderhook("subscriptions", "create", "--file", str(tmp_path / "missing.json"), *url),
        "cannot read",
    )
    one_line_error(
        orderhook("subscriptions", "create", "--file", str(tmp_path / "bad.json"), *url),
        "is not JSON",
    )
    one_line_error(
        orderhook("subscriptions", "update", "x", "--file", str(tmp_path / "list.json"), *url),
        "holds no JSON object",
    )
    assert api.requests == []


def test_replay_follows_the_job_with_plain_lines_when_not_a_terminal(api: FakeApi) -> None:
    api.subs["erp"] = {"id": "erp"}
    since = "2026-11-27T05:00:00+01:00"
    done = orderhook("subscriptions", "replay", "erp", "--since", since, "--url", api.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "replayed 10000 events to erp\n"
    lines = done.stderr.splitlines()
    assert "\r" not in done.stderr and len(lines) >= 2
    assert lines[0] == "replay erp: 2500/10000 [=====>              ] 25%"
    assert lines[-1] == "replay erp: 10000/10000 [====================] 100%"
    body = {"since": "2026-11-27T04:00:00Z"}
    assert ("POST", "/admin/subscriptions/erp/replay", body) in api.requests


def test_replay_redraws_one_line_on_a_terminal(api: FakeApi) -> None:
    api.subs["erp"] = {"id": "erp"}
    command = [sys.executable, "-m", "app.cli", "subscriptions", "replay", "erp"]
    command += ["--since", "2026-11-27T04:00:00Z", "--until", "2026-11-28T04:00:00Z"]
    leader, follower = pty.openpty()
    env = {**os.environ, "ORDERHOOK_ADMIN_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [*command, "--url", api.url], stdout=subprocess.PIPE, stderr=follower, env=env
    )
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
    assert proc.wait(30) == 0
    assert proc.stdout is not None
    with proc.stdout:
        assert proc.stdout.read() == b"replayed 10000 events to erp\n"
    text = shown.decode()
    assert text.startswith("\rreplay erp: 2500/10000 [=====>              ] 25%\x1b[K\r")
    assert text.endswith("\rreplay erp: 10000/10000 [====================] 100%\x1b[K\r\n")
    assert text.count("\n") == 1  # one line, redrawn


def test_a_failed_replay_ends_with_its_error_and_exit_1(api: FakeApi) -> None:
    api.subs["broken"] = {"id": "broken"}
    failed = orderhook(
        "subscriptions", "replay", "broken", "--since", "2026-11-27T04:00:00Z", "--url", api.url
    )
    assert failed.returncode == 1 and failed.stdout == ""
    last = failed.stderr.splitlines()[-1]
    assert last == "orderhook: replay of broken failed after 5000/10000 events: Redis went away"


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


def test_a_wrong_token_is_one_line_and_exit_1(api: FakeApi) -> None:
    refused = orderhook(
        "subscriptions", "list", "--url", api.url, env={"ORDERHOOK_ADMIN_TOKEN": "x"}
    )
    one_line_error(refused, "refused the token (HTTP 401): wrong admin token")


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

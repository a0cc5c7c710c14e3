"""`orderhook status | dlq | events` against a running gateway, and their error paths."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psutil
import pytest
import standardwebhooks

from app.config import load_settings
from app.dev.fake_vtex import APP_KEY, APP_TOKEN
from app.signing import signature_headers
from app.store.schema import Keys
from tests.conftest import AUTH, Gateway, free_port, notification
from tests.subscribers import Reply, Sink
from tests.test_dashboard_browser import config


def orderhook(
    *args: str, url: str, token: str | None = "admin-token"
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ORDERHOOK_ADMIN_TOKEN"}
    if token is not None:
        env["ORDERHOOK_ADMIN_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args, "--url", url],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


@pytest.fixture
def running(redis_url: str, keys: Keys, tmp_path: Path) -> Iterator[tuple[Gateway, Sink, str]]:
    """A gateway with one delivered event (erp) and one dead letter (wms)."""
    with Sink() as sink:
        sink.script("/wms", Reply(500), Reply(500), Reply(500))
        env = {**os.environ, "REDIS_URL": redis_url, "ORDERHOOK_ADMIN_TOKEN": "admin-token"}
        gateway = Gateway(config(tmp_path, keys.prefix, sink), env, tmp_path / "gw.log").start()
        try:
            r = httpx.post(gateway.url + "/hooks/vtex", json=notification(), headers=AUTH)
            sink.wait_for_sync(
                lambda: len(sink.at("/wms")) >= 3 and len(sink.at("/erp")) >= 1, 10, "deliveries"
            )
            yield gateway, sink, r.json()["id"]
        finally:
            gateway.stop()


def wait_dead(gateway: Gateway) -> None:
    for _ in range(100):
        if "wms" in orderhook("dlq", "list", url=gateway.url).stdout:
            return
    raise AssertionError("no dead letter")


def test_status_dlq_events_and_replay(running: tuple[Gateway, Sink, str]) -> None:
    gateway, sink, event_id = running
    wait_dead(gateway)
    status = orderhook("status", url=gateway.url)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].startswith("ingest: received 1, accepted 1")
    assert any(line.startswith("erp ") and " enabled " in line for line in lines)
    assert any(line.startswith("wms ") and "HTTP 500" in line for line in lines)

    listing = orderhook("dlq", "list", "--subscription", "wms", url=gateway.url)
    assert listing.returncode == 0
    assert f"{event_id}.wms" in listing.stdout and "1 of 1 dead letters" in listing.stdout

    shown = orderhook("events", "show", event_id, url=gateway.url)
    assert shown.returncode == 0
    assert "order v52277740atmc-01 window-to-cancel -> ready-for-handling" in shown.stdout
    assert shown.stdout.count(" retry ") == 2 and " dead " in shown.stdout

    replay = orderhook("dlq", "replay", "--subscription", "wms", url=gateway.url)
    assert replay.returncode == 0, replay.stderr
    assert "[##############################] 1/1" in replay.stderr  # the progress bar
    assert "replayed 1 dead letters of wms" in replay.stdout
    sink.wait_for_sync(lambda: len(sink.at("/wms")) >= 4, 10, "the replayed delivery")


def test_errors_are_one_line_and_exit_1(running: tuple[Gateway, Sink, str]) -> None:
    gateway, _, _ = running
    cases = [
        (orderhook("events", "show", "nope", url=gateway.url), "HTTP 404: no event 'nope'"),
        (orderhook("dlq", "replay", "--id", "nope", url=gateway.url), "replayed 0 of 1"),
        (orderhook("status", url=gateway.url, token="wrong"), "refused the token (HTTP 401)"),
        (orderhook("status", url=gateway.url, token=None), "set ORDERHOOK_ADMIN_TOKEN"),
        (orderhook("status", url=f"http://127.0.0.1:{free_port()}"), "cannot reach the gateway"),
    ]
    for result, message in cases:
        assert result.returncode == 1, result
        assert result.stderr.startswith("orderhook: ") and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def _python_children(gateway: Gateway) -> list[psutil.Process]:
    assert gateway.proc is not None
    children = psutil.Process(gateway.proc.pid).children()
    return [c for c in children if "spawn_main" in " ".join(c.cmdline())]


@pytest.mark.parametrize("store", ["redis-url", "embedded"])
def test_serve_workers_runs_n_processes_on_one_redis(
    redis_url: str, keys: Keys, tmp_path: Path, store: str
) -> None:
    with Sink() as sink:
        env = {**os.environ, "ORDERHOOK_DATA_DIR": str(tmp_path / "data")}
        env.pop("REDIS_URL", None)
        if store == "redis-url":
            env["REDIS_URL"] = redis_url
        gateway = Gateway(config(tmp_path, keys.prefix, sink), env, tmp_path / "gw.log")
        gateway.args = ["--workers", "2"]
        gateway.start()
        try:
            workers = _python_children(gateway)
            with httpx.Client(base_url=gateway.url) as http:
                ids = {
                    http.post(
                        "/hooks/vtex", json=notification(OrderId=f"w-{i}"), headers=AUTH
                    ).json()["id"]
                    for i in range(40)
                }
            sink.wait_for_sync(lambda: len(sink.at("/erp")) >= 40, 20, "40 deliveries")
        finally:
            status = gateway.stop()
    assert len(workers) == 2
    assert status == 0
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    delivered = [orjson.loads(r.body)["id"] for r in sink.at("/erp")]
    assert sorted(delivered) == sorted(ids)  # each once, whichever process took it


def test_check_loads_the_config_and_pings_redis(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[sources]]\naccount = "*"\nauth_header = "X-T"\nauth_token = "t"\n')

    def check(url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", "check", "--config", str(path)],
            capture_output=True,
            text=True,
            env={**os.environ, "REDIS_URL": url},
            timeout=30,
        )

    ok = check(redis_url)
    assert ok.returncode == 0 and "Redis answers" in ok.stdout
    down = check(f"redis://127.0.0.1:{free_port()}/0")
    assert down.returncode == 2 and "Redis does not answer" in down.stderr
    path.write_text("[[sources]]\naccount = 1\n")
    assert check(redis_url).returncode == 2


ROOT = Path(__file__).resolve().parent.parent
# `python -m app.cli`, as a plain install runs it: neither pytest nor the tests importable
PLAIN = (
    "import sys; sys.modules['pytest'] = sys.modules['tests'] = None; "
    "from app.cli import main; sys.exit(main())"
)


def plain(*args: str) -> list[str]:
    return [sys.executable, "-c", PLAIN, *args]


def test_secret_new_prints_a_secret_the_config_takes_and_standardwebhooks_verifies(
    tmp_path: Path,
) -> None:
    made = [subprocess.run(plain("secret", "new"), capture_output=True, text=True, timeout=30)]
    made.append(subprocess.run(plain("secret", "new"), capture_output=True, text=True, timeout=30))
    assert [m.returncode for m in made] == [0, 0] and not any(m.stderr for m in made)
    secrets = [m.stdout.removesuffix("\n") for m in made]
    assert all(s.startswith("whsec_") and "\n" not in s for s in secrets)
    assert secrets[0] != secrets[1]
    path = tmp_path / "c.toml"
    path.write_text(
        f'[[subscriptions]]\nid = "erp"\nurl = "https://erp.example.com/vtex"\n'
        f'secret = "{secrets[0]}"\n'
    )
    (subscription,) = load_settings(path, {}).subscriptions
    body = b'{"specversion": "1.0"}'
    headers = signature_headers(subscription.signing_keys(), "msg_1", int(time.time()), body)
    assert standardwebhooks.Webhook(secrets[0]).verify(body, headers) == {"specversion": "1.0"}
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secrets[1]).verify(body, headers)


def test_fake_vtex_runs_from_the_plain_install_and_takes_the_readme_registration(
    redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """README, "Trying it without VTEX": `orderhook dev fake-vtex`, the gateway on
    examples/fake-vtex.toml (its ports changed to free ones), `vtex hook register`."""
    vtex_port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "VTEX_HOOK_TOKEN": "change-me"}
    env.update(VTEX_APP_KEY=APP_KEY, VTEX_APP_TOKEN=APP_TOKEN)
    log = tmp_path / "fake.log"
    with log.open("wb") as out:
        fake = subprocess.Popen(
            plain("dev", "fake-vtex", "--port", str(vtex_port)),
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    gateway = Gateway(tmp_path / "fake-vtex.toml", env, tmp_path / "gw.log")
    example = ROOT.joinpath("examples", "fake-vtex.toml").read_text()
    example = example.replace(":9000/", f":{vtex_port}/").replace(":8000", f":{gateway.port}")
    gateway.config.write_text(f'{example}\n[store]\nkey_prefix = "{keys.prefix}"\n')
    try:
        gateway.start()

        def hook(action: str) -> subprocess.CompletedProcess[str]:
            command = ["vtex", "hook", action, "--account", "mystore"]
            command += ["--config", str(gateway.config)]
            return subprocess.run(
                plain(*command), capture_output=True, text=True, env=env, timeout=30
            )

        registered = hook("register")
        assert registered.returncode == 0, registered.stderr + log.read_text()
        assert f"{gateway.url}/hooks/vtex" in hook("show").stdout
        fake.send_signal(signal.SIGTERM)
        assert fake.wait(15) == 0
        printed = log.read_text()
        assert f"fake VTEX on http://127.0.0.1:{vtex_port}/{{account}}" in printed
        assert APP_KEY in printed and "hook of mystore saved" in printed
        assert "Traceback" not in printed
    finally:
        gateway.stop()
        if fake.poll() is None:
            fake.kill()
            fake.wait()

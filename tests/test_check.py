"""Mistakes caught before traffic: `orderhook check` and start-up (`serve`, `worker`) name each
subscription URL the SSRF guard would refuse, and a Redis that does not answer, by its address
(never its password) and why. Real subprocesses; Redis on loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeout

from app.store.client import why_unreachable
from app.store.embedded import redis_executable
from tests.conftest import AUTH, HEADER, TOKEN, Gateway, free_port, notification
from tests.relaying import SECRET

PASSWORD = "hunter2-redis-pw"
URL_SECRETS = ("hook-user", "s3cret-pw", "T0SECRETPATH", "tok3n-value")
SOURCE = f'[[sources]]\naccount = "mystore"\nauth_header = "{HEADER}"\nauth_token = "{TOKEN}"\n'


def subscription(sub_id: str, url: str) -> str:
    return f'\n[[subscriptions]]\nid = "{sub_id}"\nurl = "{url}"\nsecret = "{SECRET}"\n'


def orderhook(
    command: str, config: Path, redis_url: str | None, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, "-m", "app.cli", command, "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def with_password(url: str) -> str:
    """`url` with a user and PASSWORD (the test Redis has no such user: auth fails)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://nobody:{PASSWORD}@{rest}"


# -- subscription URLs the SSRF guard refuses -------------------------------------------------

LOOPBACK_SUBSCRIPTIONS = subscription(
    "erp", "http://hook-user:s3cret-pw@127.0.0.1:9/hooks/T0SECRETPATH?token=tok3n-value"
) + subscription("wms", "http://localhost:9/wms")


def test_check_names_each_subscription_the_guard_refuses_and_why(
    redis_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(SOURCE + LOOPBACK_SUBSCRIPTIONS)
    refused = orderhook("check", config, redis_url)
    assert refused.returncode == 2, refused
    lines = refused.stderr.splitlines()
    assert (
        "orderhook: subscription `erp` (http://127.0.0.1:9) cannot be delivered to: refused by "
        "the SSRF guard: 127.0.0.1 is 127.0.0.1, not a globally reachable address (allow it "
        "with allow_networks)"
    ) in lines
    [wms] = [line for line in lines if "`wms`" in line]
    assert "(http://localhost:9) cannot be delivered to" in wms and "127.0.0.1" in wms
    assert "config ok" not in refused.stdout + refused.stderr
    assert "2 subscription URL(s) refused" in refused.stderr
    for secret in URL_SECRETS:
        assert secret not in refused.stdout + refused.stderr

    config.write_text('allow_networks = ["127.0.0.0/8", "::1/128"]\n' + config.read_text())
    allowed = orderhook("check", config, redis_url)
    assert (allowed.returncode, allowed.stderr) == (0, "")
    assert "config ok, 2 subscription(s), Redis answers" in allowed.stdout


def test_serve_and_worker_refuse_to_start_one_line_per_refused_url(
    redis_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(SOURCE + LOOPBACK_SUBSCRIPTIONS)
    serve = orderhook("serve", config, None, "--port", str(free_port()))
    worker = orderhook("worker", config, redis_url)
    for ran in (serve, worker):
        refusals = [line for line in ran.stderr.splitlines() if "refusing to start" in line]
        assert ran.returncode == 2 and len(refusals) == 2, ran.stderr
        assert "subscription `erp` (http://127.0.0.1:9)" in refusals[0]
        assert "refused by the SSRF guard" in refusals[1]
        assert not any(secret in ran.stderr for secret in URL_SECRETS)


def test_a_host_that_does_not_resolve_is_a_warning_not_a_refusal(
    redis_url: str, tmp_path: Path
) -> None:
    """DNS may answer later: a warning naming the subscription, exit 0. (A label over 63
    characters fails to resolve without a DNS query leaving this machine.)"""
    config = tmp_path / "c.toml"
    config.write_text(SOURCE + subscription("erp", f"https://{'a' * 64}.example/hook"))
    checked = orderhook("check", config, redis_url)
    assert checked.returncode == 0, checked
    assert "orderhook: warning: subscription `erp` (https://aaa" in checked.stderr
    assert "its host does not resolve now" in checked.stderr
    assert "config ok, 1 subscription(s)" in checked.stdout


# -- Redis: its address, never its password, and why ----------------------------------------


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def test_check_names_the_redis_address_and_why_never_the_password(
    redis_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(SOURCE + "[store]\ntimeout_s = 0.5\n")
    closed = free_port()
    refused = orderhook("check", config, f"redis://nobody:{PASSWORD}@127.0.0.1:{closed}/3")
    assert refused.returncode == 2
    assert (
        f"Redis does not answer: redis at 127.0.0.1:{closed}/3 is unreachable: connection refused"
    ) in refused.stderr
    auth = orderhook("check", config, with_password(redis_url))
    assert auth.returncode == 2 and "is unreachable: authentication failed" in auth.stderr
    with silent_server() as port:
        hung = orderhook("check", config, f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
    assert hung.returncode == 2
    assert f"redis at 127.0.0.1:{port}/0 is unreachable: no answer within 0.5 s" in hung.stderr
    for ran in (refused, auth, hung):
        assert PASSWORD not in ran.stdout + ran.stderr


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RedisConnectionError("Error 32 ..."), "ConnectionError: Error 32 ..."),
        (AuthenticationError("invalid username-password pair"), "authentication failed"),
        (RedisTimeout("Timeout reading from socket"), "no answer within 2 s (timeout)"),
        (TimeoutError(), "no answer within 2 s (timeout)"),
        (ConnectionRefusedError(111, "Connect call failed"), "connection refused"),
        (socket.gaierror(-2, "Name or service not known"), "DNS lookup failed: Name or service"),
        (socket.gaierror(-3, "Temporary failure in name resolution"), "DNS lookup failed: Temp"),
        (FileNotFoundError(2, "No such file or directory"), "No such file or directory"),
    ],
)
def test_why_redis_is_unreachable(error: Exception, reason: str) -> None:
    assert why_unreachable(error, 2.0).startswith(reason)
    if isinstance(error, OSError):  # as redis-py raises it: wrapped in its ConnectionError
        try:
            raise RedisConnectionError("Error connecting") from error
        except RedisConnectionError as wrapped:
            assert why_unreachable(wrapped, 2.0).startswith(reason)


def test_an_auth_failure_wrapped_in_a_connection_error_is_an_auth_failure() -> None:
    """redis-py on a unix socket raises its ConnectionError from the AuthenticationError."""
    try:
        try:
            raise AuthenticationError("invalid username-password pair or user is disabled.")
        except AuthenticationError as exc:
            raise RedisConnectionError(str(exc)) from exc
    except RedisConnectionError as wrapped:
        assert why_unreachable(wrapped, 2.0) == (
            "authentication failed: invalid username-password pair or user is disabled."
        )


def wait_for_line(log: Path, text: str, count: int = 1, within_s: float = 15) -> list[str]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        found = [line for line in log.read_text().splitlines() if text in line]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{count} x {text!r} not in the log: {log.read_text()}")


def test_serve_warns_while_redis_is_down_and_once_when_it_answers(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "c.toml"
    config.write_text(SOURCE + "[store]\nunreachable_warning_s = 0.2\n")
    log = tmp_path / "gw.log"
    env = {**os.environ, "REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{port}/0"}
    gateway = Gateway(config, env, log).start()  # it starts: VTEX retries on 503
    redis_server = None
    try:
        down = f"redis at 127.0.0.1:{port}/0 is unreachable: connection refused"
        wait_for_line(log, f"WARNING orderhook.server {down}; hooks are answered 503", count=3)
        hook = httpx.post(gateway.url + "/hooks/vtex", json=notification(), headers=AUTH)
        assert hook.status_code == 503
        wait_for_line(log, f"store unavailable: {down}")  # the 503's own line
        ready = httpx.get(gateway.url + "/readyz")
        assert ready.json() == {  # anybody may read /readyz: no address there
            "status": "unavailable",
            "error": "redis is unreachable: connection refused",
        }
        redis_server = subprocess.Popen(
            [redis_executable(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no", "--requirepass", PASSWORD],
            stdout=subprocess.DEVNULL,
        )
        wait_for_line(log, f"redis at 127.0.0.1:{port}/0 answers now: hooks are accepted")
        hook = httpx.post(gateway.url + "/hooks/vtex", json=notification(), headers=AUTH)
        assert hook.status_code == 200
        time.sleep(0.5)  # several more intervals: no more warnings, no second "answers now"
        text = log.read_text()
        assert text.count("answers now") == 1
        assert "unreachable" not in text.split("answers now")[1]
    finally:
        gateway.stop()
        if redis_server is not None:
            redis_server.terminate()
            redis_server.wait(10)
    assert PASSWORD not in log.read_text()


def test_worker_names_the_redis_address_and_why_at_start_up(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "c.toml"
    config.write_text(
        'allow_networks = ["127.0.0.0/8"]\n' + subscription("erp", "http://127.0.0.1:9/")
    )
    log = tmp_path / "worker.log"
    env = {**os.environ, "REDIS_URL": f"redis://nobody:{PASSWORD}@127.0.0.1:{port}/0"}
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--config", str(config)],
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        wait_for_line(log, f"redis at 127.0.0.1:{port}/0 is unreachable: connection refused")
    finally:
        worker.terminate()
        worker.wait(30)
    assert PASSWORD not in log.read_text()

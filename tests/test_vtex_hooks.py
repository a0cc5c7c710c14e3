"""Hook registration from the CLI against the fake VTEX, which pings the real gateway."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.dev.fake_vtex import APP_KEY, APP_TOKEN, FakeVtex
from app.store.schema import Keys
from tests.conftest import HEADER, TOKEN, Gateway


def write_config(tmp_path: Path, prefix: str, vtex: FakeVtex, public_url: str) -> Path:
    path = tmp_path / "vtex.toml"
    path.write_text(f"""
[[sources]]
account = "mystore"
auth_header = "{HEADER}"
auth_token = "{TOKEN}"
app_key_env = "VTEX_APP_KEY"
app_token_env = "VTEX_APP_TOKEN"

[store]
key_prefix = "{prefix}"

[vtex]
base_url = "{vtex.base_url}"
public_url = "{public_url}"
""")
    return path


def test_register_show_ensure_delete(redis_url: str, keys: Keys, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "VTEX_APP_KEY": APP_KEY,
        "VTEX_APP_TOKEN": APP_TOKEN,
    }
    with FakeVtex() as vtex:
        placeholder = write_config(tmp_path, keys.prefix, vtex, "http://unused")
        gateway = Gateway(placeholder, env, tmp_path / "gw.log")
        config = write_config(tmp_path, keys.prefix, vtex, gateway.url)
        gateway.config = config
        gateway.start()

        def hook(
            action: str, *more: str, environ: dict[str, str] = env
        ) -> subprocess.CompletedProcess[str]:
            command = [
                sys.executable,
                "-m",
                "app.cli",
                "vtex",
                "hook",
                action,
                "--account",
                "mystore",
                "--config",
                str(config),
                *more,
            ]
            return subprocess.run(command, capture_output=True, text=True, env=environ, timeout=30)

        try:
            assert hook("show").stdout.strip() == "no hook on mystore"
            registered = hook("register", "--status", "invoiced", "--status", "canceled")
            assert registered.returncode == 0, registered.stderr
            saved = vtex.hooks["mystore"]
            assert saved["hook"]["url"] == gateway.url + "/hooks/vtex"
            assert saved["hook"]["headers"] == {HEADER.lower(): TOKEN}
            assert saved["filter"] == {"type": "FromWorkflow", "status": ["invoiced", "canceled"]}
            assert vtex.pings == [(gateway.url + "/hooks/vtex", 200)]  # our gateway said pong
            assert gateway.url in hook("show").stdout
            assert "is in place" in hook("ensure").stdout
            assert hook("delete").returncode == 0
            assert "mystore" not in vtex.hooks
            again = hook("ensure")  # VTEX removed it: ensure registers it again
            assert again.returncode == 0 and "registered" in again.stdout
            assert vtex.hooks["mystore"]["filter"]["type"] == "FromWorkflow"
            wrong = hook("show", environ={**env, "VTEX_APP_TOKEN": "nope"})
            assert wrong.returncode == 1 and "HTTP 401" in wrong.stderr
        finally:
            gateway.stop()


def cli(config: Path, account: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VTEX_APP_KEY": APP_KEY, "VTEX_APP_TOKEN": APP_TOKEN}
    command = [sys.executable, "-m", "app.cli", "vtex", "hook", *args]
    command += ["--account", account, "--config", str(config)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=30)


def test_hook_cli_never_follows_a_redirect(tmp_path: Path) -> None:
    with FakeVtex() as vtex, FakeVtex() as elsewhere:
        config = write_config(tmp_path, "unused", vtex, "http://unused")
        vtex.redirect_to = elsewhere.url
        shown = cli(config, "mystore", "show")
        assert shown.returncode == 1
        assert shown.stderr == (
            f"orderhook: HTTP 302 from VTEX hook configuration: a redirect to {elsewhere.url}, "
            "not followed\n"
        )
        assert len(vtex.requests) == 1 and elsewhere.requests == []


def test_hook_cli_refuses_account_that_is_a_url(tmp_path: Path) -> None:
    """With a "*" source's credentials, `--account` chooses the host: only account names."""
    with FakeVtex() as vtex, FakeVtex() as elsewhere:
        config = tmp_path / "any.toml"
        config.write_text(f"""
[[sources]]
account = "*"
auth_header = "{HEADER}"
auth_token = "{TOKEN}"
app_key_env = "VTEX_APP_KEY"
app_token_env = "VTEX_APP_TOKEN"

[vtex]
base_url = "http://{{account}}.localhost.invalid:{vtex.port}"
""")
        shown = cli(config, f"127.0.0.1:{elsewhere.port}/x#", "show")
        assert shown.returncode == 1
        assert "orderhook: --account must be a VTEX account name" in shown.stderr
        assert vtex.requests == [] and elsewhere.requests == []

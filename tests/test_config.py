"""Configuration: a valid file loads; each mistake is refused naming file, key and expectation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.config import load_settings
from app.errors import ConfigError

VALID = """
[[sources]]
account = "mystore"
auth_header = "X-Orderhook-Token"
auth_token_env = "HOOK_TOKEN"

[[sources]]
account = "*"
auth_header = "X-Other"
auth_token = "plain-token"

[ingest]
max_body_bytes = 65536
dedupe_window_s = 3600
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "orderhook.toml"
    path.write_text(text)
    return path


def test_valid_file_and_environment_build_the_settings(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    env = {
        "HOOK_TOKEN": "from-env",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "ORDERHOOK_DATA_DIR": "/var/lib/oh",
        "ORDERHOOK_ADMIN_TOKEN": "adm",
    }
    settings = load_settings(path, env)
    mystore, anyone = settings.sources
    assert (mystore.account, mystore.auth_header, str(mystore.auth_token)) == (
        "mystore",
        "x-orderhook-token",
        "from-env",
    )
    assert anyone.allows("whatever") and not mystore.allows("other")
    assert settings.redis_url == "redis://127.0.0.1:1/0"
    assert str(settings.data_dir) == "/var/lib/oh"
    assert (settings.max_body_bytes, settings.dedupe_window_s) == (65536, 3600)
    assert "from-env" not in repr(settings) and "plain-token" not in repr(settings)
    assert "adm" not in repr(settings.admin_token)


def test_defaults_without_a_file(tmp_path: Path) -> None:
    settings = load_settings(None, {})
    assert settings.redis_url is None  # the embedded store
    assert (settings.max_body_bytes, settings.dedupe_window_s) == (256 * 1024, 7 * 24 * 3600)
    assert str(settings.data_dir) == "data"


def test_orderhook_config_environment_variable_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('auth_token_env = "HOOK_TOKEN"', 'auth_token = "t"'))
    assert len(load_settings(None, {"ORDERHOOK_CONFIG": str(path)}).sources) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('colour = "blue"', "unknown field `colour`"),
        (
            '[[sources]]\naccount = "a"\nauth_header = "h"\nauth_token = "t"\nkey = 1',
            "unknown field `key` - at `$.sources[0]`",
        ),
        (
            '[[sources]]\nauth_header = "h"\nauth_token = "t"',
            "missing required field `account` - at `$.sources[0]`",
        ),
        (
            '[[sources]]\naccount = 5\nauth_header = "h"\nauth_token = "t"',
            "Expected `str`, got `int` - at `$.sources[0].account`",
        ),
        (
            '[ingest]\nmax_body_bytes = "big"',
            "Expected `int`, got `str` - at `$.ingest.max_body_bytes`",
        ),
        ("[ingest]\nmax_body_bytes = 10", "`ingest.max_body_bytes` must be an integer >= 1024"),
        ("[ops]\ndashboard_refresh_s = 0", "`ops.dashboard_refresh_s` must be a number of"),
        ('[store]\nkey_prefix = "a b"', "`store.key_prefix` must be"),
        ('[[sources]]\naccount = "a"\nauth_header = "h"', "exactly one of `auth_token` or"),
        (
            '[[sources]]\naccount = "a"\nauth_header = "h"\nauth_token_env = "NOPE_UNSET"',
            "NOPE_UNSET, which is not set",
        ),
        ("[[sources]\n", "not valid TOML"),
    ],
)
def test_invalid_config_is_refused_naming_file_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_settings(tmp_path / "nope.toml", {})


def test_serve_refuses_a_bad_config_with_one_message_and_non_zero_exit(tmp_path: Path) -> None:
    path = write(tmp_path, '[[sources]]\naccount = 5\nauth_header = "h"\nauth_token = "t"')
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--config", str(path), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(path) in lines[0] and "$.sources[0].account" in lines[0]


SUB = """
[[subscriptions]]
id = "erp"
url = "https://erp.example.com/vtex"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"""


def test_subscription_defaults_and_options(tmp_path: Path) -> None:
    text = (
        SUB
        + """
[[subscriptions]]
id = "wms-2"
url = "http://127.0.0.1:9000/in"
secret_env = "WMS_SECRETS"
transform = '{"orderId": orderId, "state": status}'
retry_schedule = [0.5, 10]
timeout = 3
accounts = ["mystore"]
max_in_flight = 2
[subscriptions.filter]
type = "FromOrders"
expression = 'status = "invoiced" and value > 10000'
disableSingleFire = true
"""
    )
    new, old = (
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_dGhpcy1pcy1hbi1vbGQtc2VjcmV0LW9mLTMyLWJ5dA==",
    )
    settings = load_settings(write(tmp_path, text), {"WMS_SECRETS": f"{new} {old}"})
    erp, wms = settings.subscriptions
    assert (erp.timeout_s, erp.max_in_flight, erp.accounts) == (10.0, 8, None)
    assert erp.retry_schedule_s == (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)
    assert [str(s) for s in wms.secrets] == [new, old]
    assert (wms.retry_schedule_s, wms.timeout_s, wms.max_in_flight) == ((0.5, 10.0), 3.0, 2)
    assert wms.wants_account("mystore") and not wms.wants_account("other")
    assert new not in repr(settings)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ('id = "ERP"', "`subscriptions[0].id` must match [a-z0-9-]+"),
        ('url = "ftp://x"', "`subscriptions[0].url` must be an http or https URL"),
        ('secret = "whsec_abc"', "not a valid Standard Webhooks secret"),
        ('secret = "nope"', "must start with 'whsec_'"),
        ("timeout = 0", "`subscriptions[0].timeout` must be positive"),
        ("retry_schedule = [-1]", "`subscriptions[0].retry_schedule` must hold seconds"),
        (
            'filter = { type = "FromOrders", expression = "status = = 1" }',
            "`subscriptions[0].filter.expression` is not valid JSONata: S0211",
        ),
        ('filter = { type = "FromWorkflow", statuses = [] }', "unknown field `statuses`"),
        ('filter = { type = "Sometimes" }', "Invalid value 'Sometimes'"),
        ("transform = '{\"a\": '", "`subscriptions[0].transform` is not valid JSONata"),
        ("extra = 1", "unknown field `extra`"),
    ],
)
def test_invalid_subscriptions_are_refused(tmp_path: Path, change: str, expected: str) -> None:
    key = change.split(" ", 1)[0]
    lines = [line for line in SUB.splitlines() if not line.startswith(key + " ")]
    path = write(tmp_path, "\n".join(lines) + "\n" + change + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://erp:pw-s3cret@127.0.0.1:70000/in/PATH-s3cret?token=q-s3cret", "port from 1 to"),
        ("https://hooks.example.com:0/in/PATH-s3cret?token=q-s3cret", "port from 1 to 65535"),
        ("https://hooks.example.com:x1/in/PATH-s3cret?token=q-s3cret", "port from 1 to 65535"),
        ("https://[::1/in/PATH-s3cret?token=q-s3cret", "brackets around an IPv6"),
        ("https:///in/PATH-s3cret?token=q-s3cret", "must name a host"),
        ("gopher://hooks.example.com/in/PATH-s3cret", "must be an http or https URL"),
        ("https://hooks example.com/in/PATH-s3cret?token=q-s3cret", "spaces or control"),
    ],
)
def test_subscriber_url_secrets_bad_url_refused_without_its_secrets(
    tmp_path: Path, url: str, expected: str
) -> None:
    """Item 10: a bad port was accepted, then its aiohttp error put the whole URL in lastError."""
    lines = [line for line in SUB.splitlines() if not line.startswith("url ")]
    path = write(tmp_path, "\n".join(lines) + f'\nurl = "{url}"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    message = str(info.value)
    assert "`subscriptions[0].url` must" in message and expected in message
    assert "s3cret" not in message and "PATH" not in message and "erp" not in message


def test_jsonata_error_names_the_position(tmp_path: Path) -> None:
    text = SUB + "filter = { type = \"FromOrders\", expression = 'value > 10000 andd status' }\n"
    with pytest.raises(ConfigError, match=r"at character 18"):
        load_settings(write(tmp_path, text), {})


def test_duplicate_subscription_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'erp' is used twice"):
        load_settings(write(tmp_path, SUB + SUB), {})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[subscriptions]]\nid = "p"\nmode = "pull"', "token` is required for a pull"),
        (
            '[[subscriptions]]\nid = "p"\nmode = "pull"\ntoken = "t"\nurl = "http://x"',
            "is not used by a pull subscription",
        ),
        (
            '[[subscriptions]]\nid = "p"\nmode = "pull"\ntoken = "t"\nretention = 2000000',
            "at most 1209600 seconds",
        ),
        ('[[subscriptions]]\nid = "p"\nmode = "poll"\ntoken = "t"', "Invalid enum value 'poll'"),
        (
            '[[sources]]\naccount = "a"\nauth_header = "h"\nauth_token = "t"\nenrich = true',
            "`sources[0].enrich` needs app_key_env and app_token_env",
        ),
        (
            '[[sources]]\naccount = "*"\nauth_header = "h"\nauth_token = "t"\n'
            'app_key_env = "K"\napp_token_env = "T"\nfeed_backup = true',
            "needs a named account",
        ),
        (
            '[[sources]]\naccount = "a"\nauth_header = "h"\nauth_token = "t"\napp_key_env = "NOPE"',
            "names NOPE, which is not set",
        ),
    ],
)
def test_vtex_native_options_are_checked(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), {"K": "k", "T": "t"})
    assert expected in str(info.value)


def test_pull_subscription_defaults(tmp_path: Path) -> None:
    text = '[[subscriptions]]\nid = "p"\nmode = "pull"\ntoken_env = "FEED_TOKEN"'
    [sub] = load_settings(write(tmp_path, text), {"FEED_TOKEN": "f"}).subscriptions
    assert (sub.mode, str(sub.token), sub.visibility_timeout_s, sub.retention_s) == (
        "pull",
        "f",
        240.0,
        345600.0,
    )


@pytest.mark.parametrize(
    ("table", "header"),
    [
        (SUB, "[[subscriptions]]"),
        ("[ingest]\nmax_body_bytes = 4096\n", "[ingest]"),
        ('[[sources]]\naccount = "a"\nauth_header = "h"\nauth_token = "t"\n', "[[sources]]"),
        ('[store]\nkey_prefix = "p"\n', "[store]"),
    ],
)
@pytest.mark.parametrize(
    "key", ['allow_networks = ["127.0.0.0/8"]', "ops = { log_retention_s = 600 }"]
)
def test_a_top_level_key_after_a_table_says_to_move_it_up(
    tmp_path: Path, table: str, header: str, key: str
) -> None:
    """TOML puts a key written after a table's header into that table."""
    name = key.split(" ")[0]
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, f"{table}{key}\n"), {})
    assert str(info.value).endswith(
        f"; `{name}` is a top-level key: write it above the first table, since TOML puts "
        f"every key after a {header} header into that table"
    )
    assert f"unknown field `{name}`" in str(info.value)
    # Above the first table, the same key is fine; a key known nowhere gets no hint.
    assert load_settings(write(tmp_path, f"{key}\n{table}"), {}) is not None
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, f"{table}allow_network = []\n"), {})
    assert "top-level" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("localhost:6379", "REDIS_URL must start with redis://, rediss:// or unix://"),
        ("http://u:hunter2pw@redis:6379", "REDIS_URL must start with redis://"),
        ("redis://u:hunter2pw@redis:63a79/0", "REDIS_URL's port must be a number"),
    ],
)
def test_a_redis_url_the_client_cannot_read_is_refused_without_quoting_it(
    url: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"REDIS_URL": url})
    assert expected in str(info.value) and "hunter2pw" not in str(info.value)


def test_unreachable_warning_interval_is_a_store_setting(tmp_path: Path) -> None:
    assert load_settings(None, {}).unreachable_warning_s == 30.0
    path = write(tmp_path, "[store]\nunreachable_warning_s = 0.5\n")
    assert load_settings(path, {}).unreachable_warning_s == 0.5
    with pytest.raises(ConfigError, match="`store.unreachable_warning_s` must be a number > 0"):
        load_settings(write(tmp_path, "[store]\nunreachable_warning_s = 0\n"), {})

"""`[[alerts]]` in the config file (errors naming file and key), `orderhook check` on an alert
URL, and what the messages say (pure functions; escaping of hostile ids and error texts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from app.alerts import compose
from app.alerts.compose import Notification, slack_text
from app.alerts.config import EVENTS, AlertTarget
from app.alerts.send import RETRY_MAX_S, backoff
from app.config import load_settings
from app.errors import ConfigError
from tests.relaying import SECRET
from tests.test_check import SOURCE, orderhook

SLACK = "https://hooks.slack.com/services/T0/B0/XXXX"


def config_with(tmp_path: Path, alert: str, extra: str = "") -> Path:
    path = tmp_path / "orderhook.toml"
    path.write_text(extra + SOURCE + "\n[[alerts]]\n" + alert + "\n")
    return path


def test_an_alert_target_s_defaults(tmp_path: Path) -> None:
    settings = load_settings(config_with(tmp_path, f'id = "ops"\nurl = "{SLACK}"'), {})
    [target] = settings.alerts
    assert (target.format, target.events, target.backlog_age_s) == ("slack", set(EVENTS), 300)
    assert (target.silent_s, target.repeat_s, settings.alert_check_s) == (1800, 3600, 5)
    assert "XXXX" not in repr(settings)


def test_url_env_and_secret_env_are_read_from_the_environment(tmp_path: Path) -> None:
    alert = 'id = "ce"\nurl_env = "ALERT_URL"\nformat = "cloudevents"\nsecret_env = "ALERT_SECRET"'
    env = {"ALERT_URL": "https://alerts.example.com/in", "ALERT_SECRET": SECRET}
    [target] = load_settings(config_with(tmp_path, alert), env).alerts
    assert target.url == env["ALERT_URL"] and str(target.secret) == SECRET


@pytest.mark.parametrize(
    ("alert", "extra", "says"),
    [
        (f'url = "{SLACK}"', "", "`$.alerts[0]`"),  # no id: msgspec names the table
        ('id = "Ops Team"\nurl = "x"', "", "`alerts[0].id` must be 1 to 63 of a-z"),
        ('id = "ops"', "", "`alerts[0].url` or `url_env` is needed"),
        ('id = "ops"\nurl = "ftp://x/y"', "", "`alerts[0].url` must be an http or https URL"),
        ('id = "ops"\nurl_env = "NOPE"', "", "`alerts[0].url_env` names NOPE, which is not set"),
        (f'id = "ops"\nurl = "{SLACK}"\nformat = "cloudevents"', "", "`alerts[0].secret` or"),
        (f'id = "ops"\nurl = "{SLACK}"\nformat = "teams"', "", "format"),
        (f'id = "ops"\nurl = "{SLACK}"\nsecret = "{SECRET}"', "", 'for format = "cloudevents"'),
        (
            f'id = "ops"\nurl = "{SLACK}"\nformat = "cloudevents"\nsecret = "whsec_short"',
            "",
            "`alerts[0].secret` is not a valid Standard Webhooks secret",
        ),
        (f'id = "ops"\nurl = "{SLACK}"\nevents = ["order.lost"]', "", "`alerts[0].events`"),
        (f'id = "ops"\nurl = "{SLACK}"\nevents = []', "", "`alerts[0].events`"),
        (f'id = "ops"\nurl = "{SLACK}"\nrepeat_s = 0', "", "`alerts[0].repeat_s` must be"),
        (f'id = "ops"\nurl = "{SLACK}"\nsilent_s = 1e12', "", "`alerts[0].silent_s` must be"),
        (f'id = "ops"\nurl = "{SLACK}"\nbacklog_age_s = nan', "", "must be a finite number"),
        (f'id = "ops"\nurl = "{SLACK}"\ncolour = "red"', "", "unknown field `colour`"),
        (
            f'id = "ops"\nurl = "{SLACK}"\n[[alerts]]\nid = "ops"\nurl = "{SLACK}"',
            "",
            "`alerts` use the id 'ops' twice",
        ),
        (
            f'id = "ops"\nurl = "{SLACK}"\n[ops]\nalert_check_s = 0',
            "",
            "`ops.alert_check_s` must be",
        ),
        (
            f'id = "ops"\nurl = "{SLACK}"\n[ops]\npublic_url = "javascript:alert(1)"',
            "",
            "`ops.public_url` must be an http or https URL",
        ),
    ],
)
def test_a_wrong_alert_target_is_refused_naming_the_file_and_key(
    tmp_path: Path, alert: str, extra: str, says: str
) -> None:
    path = config_with(tmp_path, alert, extra)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert str(path) in str(caught.value) and says in str(caught.value)
    assert "XXXX" not in str(caught.value)  # the URL is never quoted


def test_check_refuses_an_alert_url_the_ssrf_guard_refuses(redis_url: str, tmp_path: Path) -> None:
    alert = 'id = "ops"\nurl = "http://169.254.169.254/hooks/T0SECRETPATH"'
    refused = orderhook("check", config_with(tmp_path, alert), redis_url)
    assert refused.returncode == 2, refused
    assert "alert target `ops` (http://169.254.169.254:80) cannot be delivered to" in refused.stderr
    assert "T0SECRETPATH" not in refused.stderr


# ── messages ───────────────────────────────────────────────────────────────────────────────────


def note(event: str, status: str = "firing", **details: Any) -> Notification:
    kind = "account" if event == "ingest.silent" else "subscription"
    return Notification(event, status, "erp", 1_800_000_000_000, 1_800_000_300_000, kind, details)


HOSTILE = "<!channel> *bold* `tick`\n<https://evil.example|click> & \u202eevil"


@pytest.mark.parametrize("event", EVENTS)
def test_every_message_says_what_where_since_and_what_to_do(event: str) -> None:
    text = slack_text(note(event, lastError=HOSTILE, reason=HOSTILE), "https://gw.example")
    assert "since 2027-01-15 08:00:00 UTC" in text and "*What to do:*" in text
    assert "Dashboard: https://gw.example/ops" in text
    assert "<!channel>" not in text and "<https://evil" not in text and "\u202e" not in text
    assert text.count("\n") == 3  # the data's newline made a space: four lines, as written


def test_a_hostile_subject_cannot_break_or_forge_the_message() -> None:
    hostile = Notification("subscription.disabled", "firing", HOSTILE, 1, 2, "subscription")
    text = slack_text(hostile, None)
    assert "&lt;!channel&gt; *bold* 'tick' &lt;https://evil.example|click&gt; &amp;" in text
    assert "/ops/subscriptions/%3C%21channel%3E%20%2Abold%2A" in text  # the link, escaped


def test_the_dead_letter_summary_names_counts_ids_and_the_last_error() -> None:
    details = {"newDeadLetters": 7, "deadLetters": 12, "eventIds": ["e1", "e2"], "lastError": "x"}
    text = slack_text(note("subscription.dead_letter", **details), None)
    assert "7 new since the last alert (e.g. `e1`, `e2`); 12 in its dead-letter queue" in text
    assert "last error: `x`" in text and "Dashboard: /ops/subscriptions/erp" in text
    lua_empty = slack_text(note("subscription.dead_letter", eventIds={}), None)  # cjson's {}
    assert "e.g." not in lua_empty


def test_a_cloudevent_alert_and_a_slack_body() -> None:
    event = compose.cloudevent(note("subscription.backlog", oldestAgeS=400), "m-1", None)
    assert event["type"] == "orderhook.alert.subscription.backlog"
    assert event["source"] == "urn:orderhook" and event["time"] == "2027-01-15T08:05:00Z"
    assert event["data"]["link"] == "/ops/subscriptions/erp"
    assert event["data"]["status"] == "firing" and event["data"]["details"]["oldestAgeS"] == 400
    slack = AlertTarget("ops", SLACK, "slack", frozenset(EVENTS))
    sent = orjson.loads(compose.body(slack, note("ingest.silent"), "m-1", None))
    assert list(sent) == ["text"] and "VTEX account `erp`" in sent["text"]
    assert compose.duration(59) == "59 s" and compose.duration(3 * 3600 + 120) == "3 h 2 min"


@pytest.mark.parametrize(
    ("attempt", "wait"), [(1, 1), (2, 2), (5, 16), (9, 256), (10, RETRY_MAX_S)]
)
def test_failed_sends_back_off_doubling_to_five_minutes(attempt: int, wait: float) -> None:
    assert backoff(attempt) == wait

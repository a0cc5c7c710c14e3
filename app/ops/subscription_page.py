"""`GET /ops/subscriptions/{id}`: one subscription's page, and the pages its forms answer with
(a rotated secret, shown this once; a replay job's progress), rendered here as HTML.

The config is the admin API's view (app/subscriptions/manage.py): secrets are `***` there
already; a URL is shown as every /ops page shows one, its origin only (app/redaction.py).
Everything else goes through `escaped`, as on the dashboard, under the same
Content-Security-Policy (its one stylesheet and refresh script).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from app.durations import NONE
from app.ops.dashboard import STYLE, escaped, refresher
from app.ops.when import moment
from app.redaction import shown_url
from app.subscriptions.manage import SPEC_DEFAULTS
from app.subscriptions.replay import rfc3339

RECENT_CHANGES = 20
DEFAULT_REPLAY_S = 3600  # the replay form's `since`: an hour ago
STATE_ROWS = (
    ("state", "state"),
    ("reason", "reason"),
    ("breaker", "breaker"),
    ("queued", "queued"),
    ("inFlight", "in flight"),
    ("held", "held for their order"),
    ("deadLetters", "dead letters"),
    ("lastError", "last error"),
)


def _head(title: str, refresh_s: float | None) -> str:
    """The page's head; `refresh_s`: it reloads itself that often (never a POST's answer)."""
    refresh = "" if refresh_s is None else refresher(refresh_s, with_fallback=True)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}'
        f"<title>{escaped(title)} — orderhook</title><style>{STYLE}</style></head><body>"
    )


def _back(sub_id: str | None = None) -> str:
    if sub_id is None:
        return '<p><a href="/ops" id="back">← dashboard</a></p>'
    href = f"/ops/subscriptions/{escaped(sub_id)}"
    return f'<p><a href="{href}" id="back">← subscription {escaped(sub_id)}</a></p>'


def _value(name: str, value: Any) -> str:
    """A config value as text: a URL as its origin, structures as JSON, none as a dash."""
    if value is None:
        return f'<span class="muted">{NONE}</span>'
    if name == "url" and isinstance(value, str):
        return f"<code>{escaped(shown_url(value, 'ops'))}</code>"
    if isinstance(value, dict) and isinstance(value.get("token_url"), str):
        value = {**value, "token_url": shown_url(value["token_url"], "ops")}
    if isinstance(value, str):
        return f"<code>{escaped(value)}</code>"
    return f"<code>{escaped(orjson.dumps(value).decode())}</code>"


def config_table(view: dict[str, Any]) -> str:
    """The spec's fields as the admin API shows them (secrets `***`)."""
    rows = "".join(
        f'<tr id="config-{escaped(name)}"><th>{escaped(name)}</th><td>{_value(name, view[name])}'
        "</td></tr>"
        for name in SPEC_DEFAULTS
        if name in view
    )
    return f'<table id="config">{rows}</table>'


def state_table(view: dict[str, Any], now: float) -> str:
    """Its live state, version, origin, and when it was made and last changed."""
    rows = [
        f'<tr><th>{label}</th><td id="{key}">{escaped(view.get(key)) or NONE}</td></tr>'
        for key, label in STATE_ROWS
    ]
    rows += [
        f'<tr><th>version</th><td id="version">{view["version"]}</td></tr>',
        f'<tr><th>origin</th><td id="origin">{escaped(view["origin"])}</td></tr>',
        f"<tr><th>created</th><td>{moment(view['createdAt'], now)}</td></tr>",
        f"<tr><th>changed</th><td>{moment(view['updatedAt'], now)}</td></tr>",
    ]
    return f'<table id="summary">{"".join(rows)}</table>'


def _changes(changes: Any) -> str:
    """An audit entry's changes, field by field; a URL's as its origin."""
    if not isinstance(changes, dict) or not changes:
        return f'<span class="muted">{NONE}</span>'
    lines = []
    for name, change in changes.items():
        if name == "url" and isinstance(change, dict):
            change = {k: _origin(v) for k, v in change.items()}
        shown = change if isinstance(change, str) else orjson.dumps(change).decode()
        lines.append(f"<b>{escaped(name)}</b> <code>{escaped(shown)}</code>")
    return "<br>".join(lines)


def _origin(url: Any) -> Any:
    return shown_url(url, "ops") if isinstance(url, str) else url


def changes_table(entries: list[dict[str, Any]]) -> str:
    """Its recent audit entries, newest first."""
    if not entries:
        return '<p class="muted" id="changes">No changes recorded.</p>'
    rows = "".join(
        f"<tr><td>{escaped(e.get('at'))}</td><td>{escaped(e.get('action'))}</td>"
        f"<td>{escaped(e.get('by'))}{' (' + escaped(e['role']) + ')' if e.get('role') else ''}"
        f"</td><td>{_changes(e.get('changes'))}</td></tr>"
        for e in entries
    )
    head = "<tr><th>at (UTC)</th><th>action</th><th>by</th><th>changes</th></tr>"
    return f'<table id="changes">{head}{rows}</table>'


def _button(sub_id: str, action: str, label: str, fields: str = "") -> str:
    return (
        f'<form class="inline" method="post" action="/ops/subscriptions/{escaped(sub_id)}/'
        f'{action}">{fields}<button type="submit" id="{action}">{label}</button></form>'
    )


def actions(view: dict[str, Any], now: float) -> str:
    """The admin's forms: pause or resume, retry now, rotate the secret, replay a range."""
    sub_id = view["id"]
    toggle = ("resume", "Resume") if view["state"] != "enabled" else ("pause", "Pause")
    parts = [_button(sub_id, *toggle), _button(sub_id, "retry-now", "Retry now")]
    if view.get("mode") == "push":
        grace = '<label>old secret signs for <input name="grace_s" value="86400" size="8"> s'
        parts.append(_button(sub_id, "rotate-secret", "Rotate secret", grace + "</label> "))
    since = rfc3339(int((now - DEFAULT_REPLAY_S) * 1000))
    fields = (
        f'<label>since <input name="since" id="since" value="{since}" size="22"></label> '
        '<label>until <input name="until" id="until" placeholder="now" size="22"></label> '
    )
    parts.append(
        f"<p>Replay the events received in a range (RFC 3339):</p>"
        f"{_button(sub_id, 'replay', 'Replay range', fields)}"
    )
    return '<div id="actions">' + " ".join(parts) + "</div>"


def page(view: dict[str, Any], changes: list[dict[str, Any]], role: str, refresh_s: float) -> str:
    now = time.time()
    can_act = role == "admin"
    return (
        f"{_head(view['id'], refresh_s)}{_back()}"
        f"<h1>Subscription {escaped(view['id'])} "
        f'<span class="muted">— signed in as {escaped(role)}</span></h1>'
        f"{state_table(view, now)}"
        f"{'<h2>Actions</h2>' + actions(view, now) if can_act else ''}"
        f"<h2>Config</h2>{config_table(view)}"
        f"<h2>Recent changes</h2>{changes_table(changes)}</body></html>"
    )


def rotated_page(sub_id: str, rotated: dict[str, Any]) -> str:
    """The answer to a rotation: the new secret, this once (it is in no URL, no cookie, and
    the subscription's page shows `***`); no refresh, which would post the form again."""
    return (
        f"{_head(sub_id, None)}{_back(sub_id)}"
        f"<h1>New signing secret for {escaped(sub_id)}</h1>"
        "<p><b>Copy it now: it is not shown again.</b></p>"
        f'<p><code id="new-secret">{escaped(rotated["secret"])}</code></p>'
        f"<p>The previous secret signs beside it until "
        f'<span id="grace-until">{escaped(rotated["grace_until"])}</span>.</p></body></html>'
    )


def job_page(job_id: str, status: dict[str, Any], refresh_s: float) -> str:
    """A replay job's progress; the page reloads itself until the job ends."""
    running = status["state"] == "running"
    total, done = status["total"], status["done"]
    rows = "".join(
        f'<tr><th>{name}</th><td id="job-{name}">{escaped(status.get(name)) or NONE}</td></tr>'
        for name in ("state", "since", "until", "total", "done", "replayed", "skipped", "error")
    )
    return (
        f"{_head('replay ' + job_id, refresh_s if running else None)}"
        f"{_back(status['subscription'])}"
        f"<h1>Replay to {escaped(status['subscription'])} "
        f'<span class="muted">job {escaped(job_id)}</span></h1>'
        f'<p><progress id="progress" value="{done}" max="{max(total, 1)}"></progress> '
        f"{done} of {total} events looked at</p>"
        f'<table id="job">{rows}</table></body></html>'
    )

"""`GET /ops`: the dashboard, rendered here as one HTML page: no build step, no CDN.

Everything that comes from an event or a subscriber (order ids, errors, response bodies) goes
through `html.escape`. The page refreshes itself every few seconds, but not while someone uses
its forms: one inline script (REFRESH_SCRIPT) reloads it only when no field has the focus or a
value typed into it; without script, a meta refresh does (on the page without search results).
Its Content-Security-Policy allows this page's one stylesheet and that one script, each by its
SHA-256 hash, forms posting to this origin, and nothing else: no other script (an injected
`<script>` or `onclick` does not run; 'unsafe-inline' is never allowed), no frame, no other
resource. The hash rather than a script file under 'self': 'self' would let any script this
origin serves run, a hash only these bytes.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote

from app.config import DEFAULT_DASHBOARD_REFRESH_S
from app.durations import NONE, human_duration, human_ms, with_age
from app.ops.when import moment, relative, utc

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 .5em}h2{font-size:16px;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff}td,th{padding:4px 10px;border:1px solid #ddd;
text-align:left;vertical-align:top}th{background:#f0f0f0}.num{text-align:right}
tr.ok{background:#e8f6e8}tr.warn{background:#fff4d6}tr.bad{background:#fde2e1}
.totals span{display:inline-block;margin-right:1.5em}.muted{color:#777}
form.inline{display:inline}button{cursor:pointer}code{font-size:12px}
.bar{fill:#4a7bd0}.axis{stroke:#bbb}.error{color:#b00}
"""
# Reload every `data-refresh-s` seconds, unless a field has the focus or differs from what the
# page was served with (someone is typing a search, or typed one and clicked elsewhere).
REFRESH_SCRIPT = """
(function () {
  var every = Number(document.currentScript.dataset.refreshS) * 1000;
  function busy() {
    var active = document.activeElement;
    if (active && active.matches("input:not([type=hidden]), textarea, select")) return true;
    return Array.prototype.some.call(document.querySelectorAll("input, textarea"), function (f) {
      return f.value !== f.defaultValue || f.checked !== f.defaultChecked;
    });
  }
  setInterval(function () { if (!busy()) location.reload(); }, every);
})();
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src {_sha256(STYLE)}; script-src {_sha256(REFRESH_SCRIPT)}; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def escaped(value: Any) -> str:
    """`value` as HTML text (None: nothing)."""
    return "" if value is None else escape(str(value))


_e = escaped


@dataclass(frozen=True)
class DeadLetterPage:
    """One page of the dead letters of every subscription, newest first."""

    items: list[dict[str, Any]]
    total: int
    page: int  # from 1
    size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))


RECENT_ERROR_S = 300
BACKLOG_WARN_S = 60


def failing(sub: dict[str, Any], now: float) -> bool:
    """Its latest error is under RECENT_ERROR_S old and no delivery has succeeded since: an
    error that a success followed is history (shown with its age), not a warning."""
    error_at, delivered_at = sub["lastErrorAt"], sub.get("lastDeliveredAt")
    if error_at is None or now - error_at >= RECENT_ERROR_S:
        return False
    return delivered_at is None or error_at > delivered_at


def health_class(sub: dict[str, Any], now: float | None = None) -> str:
    """red: disabled, its breaker not closed, or dead letters waiting; amber: a backlog over a
    minute old, or failing (`failing`); green: fine."""
    if sub["state"] != "enabled" or sub["breaker"] != "closed" or sub["deadLetters"] > 0:
        return "bad"
    now = time.time() if now is None else now
    if (sub["oldestUndeliveredAgeS"] or 0) > BACKLOG_WARN_S or failing(sub, now):
        return "warn"
    return "ok"


def latency_cell(latency: dict[str, Any]) -> str:
    """p50 / p95 / p99 in human units, or "—" when nothing was delivered in the window."""
    if not latency["count"]:
        return f'<span title="no deliveries in the last 5 min">{NONE}</span>'
    return " / ".join(human_ms(latency[key]) for key in ("p50Ms", "p95Ms", "p99Ms"))


def chart(per_minute: list[tuple[int, int]], width: int = 600, height: int = 80) -> str:
    """Ingest over the last hour: one bar a minute, inline SVG."""
    top = max((count for _, count in per_minute), default=0) or 1
    step = width / max(1, len(per_minute))
    bars = []
    for i, (minute, count) in enumerate(per_minute):
        h = count / top * (height - 10)
        label = datetime.fromtimestamp(minute * 60, UTC).strftime("%H:%M")
        bars.append(
            f'<rect class="bar" x="{i * step:.1f}" y="{height - h:.1f}" width="{step * 0.8:.1f}"'
            f' height="{h:.1f}"><title>{label} UTC: {count}</title></rect>'
        )
    total = sum(count for _, count in per_minute)
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="ingest per minute">'
        f'<line class="axis" x1="0" y1="{height}" x2="{width}" y2="{height}"/>{"".join(bars)}'
        f'</svg><div class="muted">{total} events accepted in the last hour; '
        f"peak {top if total else 0} a minute</div>"
    )


def breaker_cell(sub: dict[str, Any], can_act: bool, now: float) -> str:
    """The breaker, its failures in a row, when its next probe goes, and (admin) Retry now."""
    breaker, failures, probe = sub["breaker"], sub["consecutiveFailures"], sub["nextProbeAt"]
    lines = [f"<b>{_e(breaker)}</b>"]
    if failures:
        lines.append(f"{failures} failure{'' if failures == 1 else 's'} in a row")
    if probe is not None:
        what = "probe in flight, next one" if breaker == "half-open" else "next probe"
        lines.append(f'<span class="probe">{what} {moment(probe, now)}</span>')
    if can_act and (breaker != "closed" or failures):
        lines.append(
            f'<form class="inline" method="post" action="/ops/retry-now">'
            f'<input type="hidden" name="subscription" value="{_e(sub["id"])}">'
            f'<button type="submit" id="retry-now-{_e(sub["id"])}">Retry now</button></form>'
        )
    return f'<td id="breaker-{_e(sub["id"])}">{"<br>".join(lines)}</td>'


def subscriptions_table(subs: list[dict[str, Any]], can_replay: bool) -> str:
    rows, now = [], time.time()
    for sub in subs:
        replay = (
            f'<form class="inline" method="post" action="/ops/replay">'
            f'<input type="hidden" name="subscription" value="{_e(sub["id"])}">'
            f'<button type="submit" id="replay-{_e(sub["id"])}">Replay {sub["deadLetters"]}'
            f"</button></form>"
            if can_replay and (sub["deadLetters"] or sub["state"] != "enabled")
            else ""
        )
        rows.append(
            f'<tr class="{health_class(sub)}" id="sub-{_e(sub["id"])}">'
            f'<td><b><a href="/ops/subscriptions/{_e(sub["id"])}">{_e(sub["id"])}</a></b>'
            f"<br><code>{_e(sub['url'])}</code></td>"
            f"<td>{_e(sub['state'])}{'<br>' + _e(sub['reason']) if sub['reason'] else ''}</td>"
            f"{breaker_cell(sub, can_replay, now)}"
            f'<td class="num">{sub["delivered"]}{_aside(sub["stale"], "stale")}</td>'
            f'<td class="num">{sub["retried"]}</td>'
            f'<td class="num">{sub["queued"]}{_aside(sub["held"], "held for their order")}</td>'
            f'<td class="num">{sub["inFlight"]}</td>'
            f'<td class="num">{sub["deadLetters"]}</td>'
            f"<td>{human_duration(sub['oldestUndeliveredAgeS'])}</td>"
            f"<td>{latency_cell(sub['latency'])}</td>"
            f"<td>{_e(with_age(sub['lastError'], sub['lastErrorAt'], now))}</td>"
            f"<td>{replay}</td></tr>"
        )
    head = (
        "<tr><th>subscription</th><th>state</th><th>breaker</th><th>delivered</th><th>retried</th>"
        "<th>queued</th><th>in flight</th><th>dead letters</th><th>oldest waiting</th>"
        "<th>latency p50 / p95 / p99 (5 min)</th><th>last error</th><th></th></tr>"
    )
    return f'<table id="subscriptions">{head}{"".join(rows)}</table>'


def alerts_section(active: list[dict[str, Any]]) -> str:
    """The alert conditions in force (GET /admin/alerts' `active`), one row per condition and
    subject (the targets told listed together); nothing when there is none."""
    if not active:
        return ""
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for alert in active:
        rows.setdefault((alert["event"], alert["subject"]), []).append(alert)
    cells = "".join(
        f'<tr class="bad"><td>{_e(event)}</td><td>{_alert_subject(event, subject)}</td>'
        f"<td>{_e(told[0]['since'])}</td><td>{_e(', '.join(a['target'] for a in told))}</td>"
        f"<td><code>{_e(_alert_details(told[0]['details']))}</code></td></tr>"
        for (event, subject), told in rows.items()
    )
    head = "<tr><th>alert</th><th>where</th><th>since (UTC)</th><th>told</th><th>details</th></tr>"
    return f'<h2>Alerts</h2><table id="alerts">{head}{cells}</table>'


def _alert_subject(event: str, subject: str) -> str:
    if event.startswith("subscription."):
        return f'<a href="/ops/subscriptions/{quote(subject, safe="")}">{_e(subject)}</a>'
    return _e(subject)


def _alert_details(details: dict[str, Any]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in details.items())[:300]


def dead_letters_table(dead: DeadLetterPage, can_act: bool) -> str:
    """A page of dead letters: when each died, with Replay and Delete each (admin), and the
    total with links to the other pages."""
    if not dead.total:
        return '<p class="muted" id="dlq">The dead-letter queue is empty.</p>'
    now = time.time()
    rows = "".join(
        f"<tr><td>{_died(i['deadAt'], now)}</td><td>{_e(i['subscription'])}</td>"
        f"<td>{_e(i['orderId'])}</td><td><code>{_e(i['eventId'])}</code></td>"
        f"<td class='num'>{i['attempts']}</td><td>{_e(i['lastStatus'])}</td>"
        f"<td>{_e(i['lastError'])}</td><td>{_actions(i['id'], dead.page) if can_act else ''}</td>"
        "</tr>"
        for i in dead.items
    )
    head = (
        "<tr><th>died</th><th>subscription</th><th>order</th><th>event</th><th>attempts</th>"
        "<th>last status</th><th>last error</th><th></th></tr>"
    )
    return f'{_pager(dead)}<table id="dlq">{head}{rows}</table>'


def _died(at: float | None, now: float) -> str:
    return NONE if at is None else f"{relative(at, now)}<br><small>{utc(at)}</small>"


def _actions(entry_id: str, page_number: int) -> str:
    fields = (
        f'<input type="hidden" name="id" value="{_e(entry_id)}">'
        f'<input type="hidden" name="page" value="{page_number}">'
    )
    return "".join(
        f'<form class="inline" method="post" action="/ops/dlq/{action}">{fields}'
        f'<button type="submit" id="dlq-{action}-{_e(entry_id)}">{label}</button></form> '
        for action, label in (("replay", "Replay"), ("delete", "Delete"))
    )


def _pager(dead: DeadLetterPage) -> str:
    """ "110 dead letters — 51 to 100, page 2 of 3", with links to the newer and older pages."""
    first = (dead.page - 1) * dead.size + 1
    shown = (
        f"{first} to {first + len(dead.items) - 1}, page {dead.page} of {dead.pages}"
        if dead.items
        else f"page {dead.page} of {dead.pages} is past the end"
    )
    links = [
        f'<a id="dlq-{rel}" href="/ops{"" if n == 1 else f"?page={n}"}">{label}</a>'
        for rel, n, label in (
            ("newer", min(dead.page - 1, dead.pages), "← newer"),
            ("older", dead.page + 1, "older →"),
        )
        if 1 <= n <= dead.pages and n != dead.page
    ]
    return f'<p id="dlq-summary"><b>{dead.total}</b> dead letters — {shown} {" ".join(links)}</p>'


def _aside(count: int, what: str) -> str:
    """A second line under a figure, shown only when there is something to say."""
    return f"<br><small>{count} {what}</small>" if count else ""


def attempts_table(attempts: list[dict[str, Any]], table_id: str = "attempts") -> str:
    if not attempts:
        return f'<p class="muted" id="{table_id}">No delivery attempts yet.</p>'
    rows = "".join(
        f"<tr><td>{_e(a['at'])}</td><td>{_e(a['subscription'])}</td><td>{_e(a['orderId'])}</td>"
        f"<td>{_e(a['outcome'])}</td><td>{_e(a['status'])}</td><td class='num'>"
        f"{human_ms(a['durationMs'])}</td><td>{_e(a['error'])}</td></tr>"
        for a in attempts
    )
    head = (
        "<tr><th>time (UTC)</th><th>subscription</th><th>order</th><th>outcome</th>"
        "<th>status</th><th>took</th><th>error</th></tr>"
    )
    return f'<table id="{table_id}">{head}{rows}</table>'


def search_section(order_id: str | None, found: list[dict[str, Any]]) -> str:
    form = (
        '<form method="get" action="/ops"><input name="orderId" placeholder="order id" '
        f'value="{_e(order_id)}" size="30"> <button type="submit">Find</button></form>'
    )
    if order_id is None:
        return form
    if not found:
        return form + f'<p id="search">No events for order <b>{_e(order_id)}</b>.</p>'
    parts = []
    for item in found:
        event = item["event"]
        parts.append(
            f"<h3>{_e(event['orderId'])} → {_e(event['state'])} "
            f"<span class='muted'>({_e(event['receivedAt'])}, event {_e(event['id'])})</span>"
            f"</h3>{attempts_table(item['attempts'], 'search-attempts')}"
        )
    return form + '<div id="search">' + "".join(parts) + "</div>"


def page(
    stats: dict[str, Any],
    dead_letters: DeadLetterPage,
    attempts: list[dict[str, Any]],
    role: str,
    order_id: str | None = None,
    found: list[dict[str, Any]] | None = None,
    refresh_s: float = DEFAULT_DASHBOARD_REFRESH_S,
    alerts: list[dict[str, Any]] | None = None,
) -> str:
    ingest = stats["ingest"]
    rejected = sum(ingest["rejected"].values())
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
{refresher(refresh_s, with_fallback=order_id is None)}
<title>orderhook</title><style>{STYLE}</style></head><body>
<h1>orderhook <span class="muted">— signed in as {_e(role)}</span>
<form class="inline" method="post" action="/ops/logout"><button>Sign out</button></form></h1>
<div class="totals"><span>received <b>{ingest["received"]}</b></span>
<span>accepted <b>{ingest["accepted"]}</b></span>
<span>duplicates <b>{ingest["duplicates"]}</b></span><span>rejected <b>{rejected}</b></span></div>
{alerts_section(alerts or [])}
<h2>Ingest, last hour</h2>{chart(stats["ingestPerMinute"])}
<h2>Subscriptions</h2>{subscriptions_table(stats["subscriptions"], role == "admin")}
<h2>Dead letters</h2>{dead_letters_table(dead_letters, role == "admin")}
<h2>Find an order</h2>{search_section(order_id, found or [])}
<h2>Last {len(attempts)} delivery attempts</h2>{attempts_table(attempts)}
</body></html>"""


def refresher(refresh_s: float, with_fallback: bool) -> str:
    """The refresh script, and for browsers without script a meta refresh (left out on a page
    of search results: it would wipe the next search as it is typed)."""
    fallback = f'<noscript><meta http-equiv="refresh" content="{refresh_s:g}"></noscript>'
    return (
        f'<script data-refresh-s="{refresh_s:g}">{REFRESH_SCRIPT}</script>'
        f"{fallback if with_fallback else ''}"
    )


def login_page(error: str | None = None) -> str:
    message = f'<p class="error">{_e(error)}</p>' if error else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>orderhook</title>
<style>{STYLE}</style></head><body><h1>orderhook</h1>{message}
<form method="post" action="/ops/login"><label>Admin or ops token
<input type="password" name="token" id="token" size="40" autofocus></label>
<button type="submit" id="login">Sign in</button></form></body></html>"""

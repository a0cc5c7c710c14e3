"""`GET /ops`: the dashboard, rendered here as one HTML page: no build step, no CDN, no script.

Everything that comes from an event or a subscriber (order ids, errors, response bodies) goes
through `html.escape`; the page refreshes itself every few seconds. Its Content-Security-Policy
allows this page's one stylesheet (by its hash), forms posting to this origin, and nothing else:
no script, no frame, no other resource.
"""

from __future__ import annotations

import base64
import hashlib
import time
from datetime import UTC, datetime
from html import escape
from typing import Any

REFRESH_S = 5

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
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def _e(value: Any) -> str:
    return "" if value is None else escape(str(value))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


RECENT_ERROR_S = 300


def health_class(sub: dict[str, Any], now: float | None = None) -> str:
    """red: disabled or dead letters waiting; amber: a backlog over a minute old or an error
    in the last 5 minutes; green: fine."""
    if sub["state"] != "enabled" or sub["deadLetters"] > 0:
        return "bad"
    now = time.time() if now is None else now
    recent_error = sub["lastErrorAt"] is not None and now - sub["lastErrorAt"] < RECENT_ERROR_S
    if (sub["oldestUndeliveredAgeS"] or 0) > 60 or recent_error:
        return "warn"
    return "ok"


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


def subscriptions_table(subs: list[dict[str, Any]], can_replay: bool) -> str:
    rows = []
    for sub in subs:
        latency = sub["latency"]
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
            f"<td><b>{_e(sub['id'])}</b><br><code>{_e(sub['url'])}</code></td>"
            f"<td>{_e(sub['state'])}{'<br>' + _e(sub['reason']) if sub['reason'] else ''}</td>"
            f'<td class="num">{sub["delivered"]}{_aside(sub["stale"], "stale")}</td>'
            f'<td class="num">{sub["retried"]}</td>'
            f'<td class="num">{sub["queued"]}{_aside(sub["held"], "held for their order")}</td>'
            f'<td class="num">{sub["inFlight"]}</td>'
            f'<td class="num">{sub["deadLetters"]}</td>'
            f"<td>{_age(sub['oldestUndeliveredAgeS'])}</td>"
            f"<td>{_e(latency['p50Ms'])} / {_e(latency['p95Ms'])} / {_e(latency['p99Ms'])}</td>"
            f"<td>{_e(sub['lastError'])}</td><td>{replay}</td></tr>"
        )
    head = (
        "<tr><th>subscription</th><th>state</th><th>delivered</th><th>retried</th>"
        "<th>queued</th><th>in flight</th><th>dead letters</th><th>oldest waiting</th>"
        "<th>latency p50/p95/p99 ms (5 min)</th><th>last error</th><th></th></tr>"
    )
    return f'<table id="subscriptions">{head}{"".join(rows)}</table>'


def dead_letters_table(items: list[dict[str, Any]]) -> str:
    if not items:
        return '<p class="muted" id="dlq">The dead-letter queue is empty.</p>'
    rows = "".join(
        f"<tr><td>{_e(i['subscription'])}</td><td>{_e(i['orderId'])}</td>"
        f"<td><code>{_e(i['eventId'])}</code></td><td class='num'>{i['attempts']}</td>"
        f"<td>{_e(i['lastStatus'])}</td><td>{_e(i['lastError'])}</td></tr>"
        for i in items
    )
    head = (
        "<tr><th>subscription</th><th>order</th><th>event</th><th>attempts</th>"
        "<th>last status</th><th>last error</th></tr>"
    )
    return f'<table id="dlq">{head}{rows}</table>'


def _aside(count: int, what: str) -> str:
    """A second line under a figure, shown only when there is something to say."""
    return f"<br><small>{count} {what}</small>" if count else ""


def attempts_table(attempts: list[dict[str, Any]], table_id: str = "attempts") -> str:
    if not attempts:
        return f'<p class="muted" id="{table_id}">No delivery attempts yet.</p>'
    rows = "".join(
        f"<tr><td>{_e(a['at'])}</td><td>{_e(a['subscription'])}</td><td>{_e(a['orderId'])}</td>"
        f"<td>{_e(a['outcome'])}</td><td>{_e(a['status'])}</td><td class='num'>"
        f"{_e(a['durationMs'])}</td><td>{_e(a['error'])}</td></tr>"
        for a in attempts
    )
    head = (
        "<tr><th>time (UTC)</th><th>subscription</th><th>order</th><th>outcome</th>"
        "<th>status</th><th>ms</th><th>error</th></tr>"
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
    dead_letters: list[dict[str, Any]],
    attempts: list[dict[str, Any]],
    role: str,
    order_id: str | None = None,
    found: list[dict[str, Any]] | None = None,
) -> str:
    ingest = stats["ingest"]
    rejected = sum(ingest["rejected"].values())
    refresh = "" if order_id else f'<meta http-equiv="refresh" content="{REFRESH_S}">'
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}
<title>orderhook</title><style>{STYLE}</style></head><body>
<h1>orderhook <span class="muted">— signed in as {_e(role)}</span>
<form class="inline" method="post" action="/ops/logout"><button>Sign out</button></form></h1>
<div class="totals"><span>received <b>{ingest["received"]}</b></span>
<span>accepted <b>{ingest["accepted"]}</b></span>
<span>duplicates <b>{ingest["duplicates"]}</b></span><span>rejected <b>{rejected}</b></span></div>
<h2>Ingest, last hour</h2>{chart(stats["ingestPerMinute"])}
<h2>Subscriptions</h2>{subscriptions_table(stats["subscriptions"], role == "admin")}
<h2>Dead letters</h2>{dead_letters_table(dead_letters)}
<h2>Find an order</h2>{search_section(order_id, found or [])}
<h2>Last {len(attempts)} delivery attempts</h2>{attempts_table(attempts)}
</body></html>"""


def login_page(error: str | None = None) -> str:
    message = f'<p class="error">{_e(error)}</p>' if error else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>orderhook</title>
<style>{STYLE}</style></head><body><h1>orderhook</h1>{message}
<form method="post" action="/ops/login"><label>Admin or ops token
<input type="password" name="token" id="token" size="40" autofocus></label>
<button type="submit" id="login">Sign in</button></form></body></html>"""

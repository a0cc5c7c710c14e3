"""Mistakes found before traffic: what `orderhook check` and start-up (`serve`, `worker`) say
of the subscription URLs (and the alert targets' URLs, by the same rule).

Every push subscription's URL is resolved now and put to the SSRF guard's own connector
(`app.ssrf.foresee`), the rule its deliveries will meet:

- a URL that resolves only to addresses the guard refuses would dead-letter every event: `check`
  fails (exit 2) and start-up refuses (exit 2), one line per URL naming the subscription and why;
- a name that does not resolve now (a DNS outage, a record not created yet) may resolve later,
  and deliveries retry: a warning, not a refusal.

Lines show a URL's origin only (`app.redaction`): its path or query may carry a credential.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass

from app.config import Settings
from app.redaction import scrub, shown_url
from app.ssrf import foresee
from app.subscriptions.spec import Subscription

log = logging.getLogger("orderhook.cli")


@dataclass(frozen=True)
class Findings:
    refused: tuple[str, ...]  # one line per URL the guard would refuse
    unresolved: tuple[str, ...]  # one line per URL whose host does not resolve now


def _named(sub: Subscription) -> str:
    return f"subscription `{sub.id}` ({shown_url(sub.url, 'ops')})"


async def find(settings: Settings) -> Findings:
    """Resolve every push subscription's URL and every alert target's (at once, each within
    a short timeout)."""
    push = [(_named(s), s.url) for s in settings.subscriptions if s.mode == "push"]
    alerts = [
        (f"alert target `{t.id}` ({shown_url(t.url, 'ops')})", t.url) for t in settings.alerts
    ]
    named = push + alerts
    seen = await foresee([url for _, url in named], settings.allow_networks)
    refused = tuple(
        f"{name} cannot be delivered to: {scrub(f.refused, url)}"
        for (name, url), f in zip(named, seen, strict=True)
        if f.refused is not None
    )
    unresolved = tuple(
        f"{name}: its host does not resolve now ({scrub(f.unresolved, url)}); "
        "its deliveries are retried until it does"
        for (name, url), f in zip(named, seen, strict=True)
        if f.unresolved is not None
    )
    return Findings(refused, unresolved)


def check_urls(settings: Settings) -> int:
    """`orderhook check`: say what `find` found, on stderr; the number of URLs refused."""
    found = asyncio.run(find(settings))
    for line in found.unresolved:
        print(f"orderhook: warning: {line}", file=sys.stderr)
    for line in found.refused:
        print(f"orderhook: {line}", file=sys.stderr)
    return len(found.refused)


def refuses_start(settings: Settings) -> bool:
    """Start-up: True, after one line per refused URL on stderr, when any URL would be refused;
    an unresolved one is logged as a warning."""
    found = asyncio.run(find(settings))
    for line in found.unresolved:
        log.warning("%s", line)
    for line in found.refused:
        print(f"orderhook: refusing to start: {line}", file=sys.stderr)
    return bool(found.refused)

"""Evaluating the alert conditions: every process, every `alert_check_s`, runs alerts.lua for
the targets it knows and the accounts of its `[[sources]]`; the script queues each start, end
and reminder once, whichever process sees it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from app.alerts.config import UNAVAILABLE, AlertTarget
from app.config import Settings
from app.errors import StoreUnavailable
from app.lifecycle import sleep_unless
from app.store.alerts import AlertStore, Evaluated, Rule
from app.store.schema import ALERTS_OUTBOX_MAX

log = logging.getLogger("orderhook.alerts")


def rules(targets: Sequence[AlertTarget]) -> list[Rule]:
    """What the script evaluates per target (store.unavailable is this process's, in memory)."""
    return [
        Rule(
            t.id,
            sorted(t.events - {UNAVAILABLE}),
            int(t.backlog_age_s * 1000),
            int(t.silent_s * 1000),
            int(t.repeat_s * 1000),
        )
        for t in targets
        if t.events - {UNAVAILABLE}
    ]


def accounts(settings: Settings) -> list[str]:
    return sorted(settings.watched_accounts)


async def evaluate_periodically(
    settings: Settings, alerts: AlertStore, stopping: asyncio.Event
) -> None:
    plan, watched = rules(settings.alerts), accounts(settings)
    every_ms = int(settings.alert_check_s * 1000)
    while plan and not stopping.is_set():
        try:
            report(await alerts.evaluate(plan, watched, every_ms=every_ms))
        except StoreUnavailable:
            pass  # store.unavailable tells; evaluated again once Redis answers
        except Exception:  # a script error: said, and tried again (never stops the process)
            log.exception("alert evaluation failed")
        await sleep_unless(stopping, settings.alert_check_s)


def report(run: Evaluated) -> None:
    """Log what went wrong in a run: unreadable subjects, notifications the outbox cap lost."""
    if run.failed:
        log.error("alert evaluation: the data of %d subject(s) could not be read", run.failed)
    if run.trimmed:
        log.warning(
            "alert evaluation: the outbox is full (%d entries): %d notification(s) were lost "
            "before any process sent them (is every alert target down?)",
            ALERTS_OUTBOX_MAX,
            run.trimmed,
        )

"""Evaluating the alert conditions: every process, every `alert_check_s`, runs alerts.lua for
the targets it knows and the accounts of its `[[sources]]`; the script queues each start, end
and reminder once, whichever process sees it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from app.alerts.config import UNAVAILABLE, AlertTarget
from app.config import ANY_ACCOUNT, Settings
from app.errors import StoreUnavailable
from app.lifecycle import sleep_unless
from app.store.alerts import AlertStore, Rule

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
    return sorted({s.account for s in settings.sources if s.account != ANY_ACCOUNT})


async def evaluate_periodically(
    settings: Settings, alerts: AlertStore, stopping: asyncio.Event
) -> None:
    plan, watched = rules(settings.alerts), accounts(settings)
    every_ms = int(settings.alert_check_s * 1000)
    while plan and not stopping.is_set():
        try:
            _, failed = await alerts.evaluate(plan, watched, every_ms=every_ms)
        except StoreUnavailable:
            pass  # store.unavailable tells; evaluated again once Redis answers
        except Exception:  # a script error: said, and tried again (never stops the process)
            log.exception("alert evaluation failed")
        else:
            if failed:
                log.error("alert evaluation: the data of %d subject(s) could not be read", failed)
        await sleep_unless(stopping, settings.alert_check_s)

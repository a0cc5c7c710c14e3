"""Feed v3 as a backup source: what the hook missed (the gateway down, VTEX giving up) is still
in the account's feed. For a source with `feed_backup = true` the relay polls
`GET /api/orders/feed?maxlot=10`, appends each item through the same atomic dedupe as the hook
(so an event that came both ways is relayed once: the same fields make the same event id), and
commits the handles with `POST /api/orders/feed` only after the events are in Redis. An item
not committed (a crash, Redis down) comes back after VTEX's visibility timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from app.config import Settings, Source
from app.errors import StoreUnavailable
from app.events import Notification, normalize, utc_now_iso
from app.lifecycle import sleep_unless
from app.logs import log_event
from app.retry import parse_retry_after
from app.store.client import Store

log = logging.getLogger("orderhook.feed")

FEED_PATH = "/api/orders/feed"
MAX_LOT = 10
TIMEOUT = aiohttp.ClientTimeout(total=15)
ERROR_PAUSE_S = 10.0


def notification(item: dict[str, Any], account: str) -> Notification:
    """A feed item as the hook would have sent it (same fields, so the same dedupe key)."""
    raw = {k: v for k, v in item.items() if k != "handle"}
    return Notification(
        account=account,
        domain=item.get("domain"),
        order_id=str(item["orderId"]),
        state=item.get("state"),
        last_state=item.get("lastState"),
        last_change=item.get("lastChange"),
        current_change=item.get("currentChange"),
        raw={"via": "feed", **raw},
    )


class FeedPoller:
    def __init__(
        self, settings: Settings, source: Source, store: Store, session: aiohttp.ClientSession
    ) -> None:
        self.settings = settings
        self.source = source
        self.store = store
        self.session = session
        base = settings.vtex_base_url.format(account=source.account).rstrip("/")
        self.url = base + FEED_PATH
        self.headers = {
            "X-VTEX-API-AppKey": str(source.app_key),
            "X-VTEX-API-AppToken": str(source.app_token),
            "Accept": "application/json",
        }

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                pause = await self.poll_once()
            except StoreUnavailable as exc:
                log.warning("feed of %s: %s", self.source.account, exc)
                pause = ERROR_PAUSE_S
            except Exception:  # never let the backup die
                log.exception("feed of %s failed", self.source.account)
                pause = ERROR_PAUSE_S
            if pause:
                await sleep_unless(stopping, pause)

    async def poll_once(self) -> float:
        """Take, append and commit one lot; returns how long to wait before the next."""
        items, pause = await self._take()
        if not items:
            return pause
        events = [
            normalize(notification(item, self.source.account), utc_now_iso())
            for item in items
            if isinstance(item, dict) and item.get("orderId")
        ]
        results = await self.store.append(events)  # durable before anything is committed
        for event, result in zip(events, results, strict=True):
            log_event(
                "ingest",
                outcome="accepted" if result.created else "duplicate",
                via="feed",
                eventId=event["id"],
                orderId=event["orderId"],
                account=event["account"],
            )
        await self._commit([str(item["handle"]) for item in items if "handle" in item])
        return 0.0 if len(items) >= MAX_LOT else self.settings.feed_poll_s

    async def _take(self) -> tuple[list[Any], float]:
        try:
            async with self.session.get(
                self.url, params={"maxlot": str(MAX_LOT)}, headers=self.headers, timeout=TIMEOUT
            ) as response:
                if response.status == 200:
                    items = await response.json(content_type=None)
                    return (items if isinstance(items, list) else []), self.settings.feed_poll_s
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                log.warning("feed of %s: HTTP %s", self.source.account, response.status)
                return [], retry_after or ERROR_PAUSE_S
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            log.warning("feed of %s: %s", self.source.account, type(exc).__name__)
            return [], ERROR_PAUSE_S

    async def _commit(self, handles: list[str]) -> None:
        if not handles:
            return
        try:
            async with self.session.post(
                self.url, json={"handles": handles}, headers=self.headers, timeout=TIMEOUT
            ) as response:
                if response.status >= 300:
                    log.warning(
                        "feed of %s: commit answered HTTP %s (the items come back)",
                        self.source.account,
                        response.status,
                    )
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("feed of %s: commit failed: %s", self.source.account, type(exc).__name__)

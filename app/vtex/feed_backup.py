"""Feed v3 as a backup source: what the hook missed (the gateway down, VTEX giving up) is still
in the account's feed. For a source with `feed_backup = true` the relay polls
`GET /api/orders/feed?maxlot=10`, appends each item through the same atomic dedupe as the hook
(so an event that came both ways is relayed once: the same fields make the same event id), and
commits the handles with `POST /api/orders/feed` only after the events are in Redis. An item
not committed (a crash, Redis down) comes back after VTEX's visibility timeout. An item is
checked as a hook's body is (account, order id, change times); one refused is logged and
committed, so it does not come back for ever.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson

from app.config import Settings, Source
from app.errors import BadRequest, StoreUnavailable
from app.events import Notification, normalize, parse_body, utc_now_iso
from app.lifecycle import sleep_unless
from app.logs import log_event
from app.retry import parse_retry_after
from app.store.client import Store
from app.vtex.api import FEED, Answer, VtexApi, VtexError

log = logging.getLogger("orderhook.feed")

MAX_LOT = 10
ERROR_PAUSE_S = 10.0
_HOOK_FIELDS = {  # a feed item's field: the hook's name for it
    "domain": "Domain",
    "orderId": "OrderId",
    "state": "State",
    "lastState": "LastState",
    "lastChange": "LastChange",
    "currentChange": "CurrentChange",
}


def notification(item: dict[str, Any], account: str) -> Notification:
    """A feed item as the hook would have sent it (same fields, so the same dedupe key),
    checked as the hook's body is: BadRequest saying what is wrong."""
    raw = {"via": "feed", **{k: v for k, v in item.items() if k != "handle"}}
    doc = {hook: item.get(name) for name, hook in _HOOK_FIELDS.items()}
    parsed = parse_body(orjson.dumps({**raw, **doc, "Origin": {"Account": account}}))
    if not isinstance(parsed, Notification):
        raise BadRequest("a feed item must be an order notification")
    return parsed._replace(raw=raw)


class FeedPoller:
    def __init__(
        self, settings: Settings, source: Source, store: Store, session: aiohttp.ClientSession
    ) -> None:
        self.settings = settings
        self.source = source
        self.store = store
        self.api = VtexApi.of(settings, session)

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
        events = [e for e in (self._event(item) for item in items) if e is not None]
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

    def _event(self, item: dict[str, Any]) -> dict[str, Any] | None:
        """The event of a feed item, or None (logged) for one the hook would have refused: it
        is committed all the same, or VTEX would hand it out again and again."""
        try:
            return normalize(notification(item, self.source.account), utc_now_iso())
        except BadRequest as exc:
            log.warning("feed of %s: item refused: %s", self.source.account, exc.message)
            return None

    async def _take(self) -> tuple[list[dict[str, Any]], float]:
        try:
            answer = await self._call("GET", query={"maxlot": str(MAX_LOT)})
            items = answer.json() if answer.status == 200 else None
        except (VtexError, ValueError) as exc:
            log.warning("feed of %s: %s", self.source.account, _reason(exc))
            return [], ERROR_PAUSE_S
        if items is None:
            log.warning("feed of %s: HTTP %s", self.source.account, answer.status)
            return [], parse_retry_after(answer.headers.get("Retry-After")) or ERROR_PAUSE_S
        lot = [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
        return lot, self.settings.feed_poll_s

    async def _commit(self, handles: list[str]) -> None:
        if not handles:
            return
        try:
            answer = await self._call("POST", json={"handles": handles})
        except VtexError as exc:
            log.warning("feed of %s: commit failed: %s", self.source.account, exc)
            return
        if answer.status >= 300:
            log.warning(
                "feed of %s: commit answered HTTP %s (the items come back)",
                self.source.account,
                answer.status,
            )

    async def _call(self, method: str, **kwargs: Any) -> Answer:
        return await self.api.request(FEED, method, self.source, self.source.account, **kwargs)


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, VtexError) else "the answer is not valid JSON"

"""Order enrichment: the full VTEX order (Get Order) in the event, before filtering.

For an event of a source with `enrich = true`, the router fetches
`GET {base}/api/oms/pvt/orders/{orderId}` once and puts the order in the event (`order`), so
FromOrders expressions such as `value > 10000` see what VTEX's own filters see, and
subscribers get it in `data.order`.

- VTEX's limit, 6,000 requests a minute per account, is counted in Redis across processes.
- 429 holds the account for its Retry-After (a minute if absent), in Redis, for every process.
- 5xx, timeouts and the limit leave the entry unrouted: the router takes it again later (the
  consumer group's idle reclaim). Nothing is dropped: after `enrich_give_up_s` the event is
  routed without the order, with `orderUnavailable` saying why. A redirect is never followed
  (the credentials would go along) and counts as a 5xx.
- What asking again would not change marks it at once: 404 (VTEX keeps two years of orders), an
  answer over `MAX_ORDER_BYTES` (app/vtex/api.py; read no further), an account or order id no
  URL is safely built from.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import orjson

from app.config import Settings, Source, source_for
from app.errors import StoreUnavailable
from app.retry import parse_retry_after
from app.store.client import Store
from app.store.routing import StreamEntry
from app.vtex.api import GET_ORDER, Answer, VtexApi, VtexError, VtexRefused, VtexTooLarge

log = logging.getLogger("orderhook.enrich")

DEFAULT_HOLD_S = 60.0  # VTEX advises a minute after a 429
CONCURRENCY = 16


@dataclass(frozen=True)
class Unavailable:
    """Why an event has no order yet; `final`: asking again would not change it."""

    reason: str
    final: bool = False


class Enricher:
    def __init__(self, settings: Settings, store: Store, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.store = store
        self.api = VtexApi.of(settings, session)
        self.sources = [s for s in settings.sources if s.enrich]
        self._limit = asyncio.Semaphore(CONCURRENCY)

    async def ready(self, entries: Sequence[StreamEntry]) -> list[StreamEntry]:
        """The entries to route now, enriched; the others stay pending for a later try."""
        results = await asyncio.gather(*(self._one(entry.raw) for entry in entries))
        return [
            entry._replace(raw=raw)
            for entry, raw in zip(entries, results, strict=True)
            if raw is not None
        ]

    async def _one(self, raw: bytes) -> bytes | None:
        event = orjson.loads(raw)
        source = source_for(self.sources, event["account"])
        if source is None:
            return raw
        async with self._limit:
            outcome = await self._fetch(source, event)
        if isinstance(outcome, dict):
            return orjson.dumps({**event, "order": outcome})
        if outcome.final or self._too_old(event):
            log.warning("event %s routed without its order: %s", event["id"], outcome.reason)
            return orjson.dumps({**event, "orderUnavailable": outcome.reason})
        return None

    def _too_old(self, event: dict[str, Any]) -> bool:
        received = datetime.fromisoformat(event["receivedAt"].replace("Z", "+00:00"))
        return time.time() - received.timestamp() >= self.settings.enrich_give_up_s

    async def _fetch(self, source: Source, event: dict[str, Any]) -> dict[str, Any] | Unavailable:
        """The order, or why not."""
        account = event["account"]
        try:
            if not await self._may_call(account):
                return Unavailable("VTEX rate limit or Retry-After in force")
        except StoreUnavailable as exc:
            return Unavailable(str(exc))
        try:
            answer = await self.api.request(GET_ORDER, "GET", source, account, event["orderId"])
        except (VtexRefused, VtexTooLarge) as exc:  # the same again next time
            return Unavailable(str(exc), final=True)
        except VtexError as exc:  # unreachable, redirected: as a 5xx
            return Unavailable(str(exc))
        return await self._order(account, answer)

    async def _order(self, account: str, answer: Answer) -> dict[str, Any] | Unavailable:
        if answer.status == 200:
            try:
                order = answer.json()
            except ValueError:
                return Unavailable("VTEX Get Order answered with invalid JSON")
            return order if isinstance(order, dict) else Unavailable("VTEX sent no order object")
        if answer.status == 429:
            hold = parse_retry_after(answer.headers.get("Retry-After"))
            await self._hold(account, hold or DEFAULT_HOLD_S)
        return Unavailable(f"HTTP {answer.status} from VTEX Get Order", final=answer.status == 404)

    async def _may_call(self, account: str) -> bool:
        keys = self.store.keys
        minute = int(time.time() // 60)
        client = self.store.client

        async def check() -> bool:
            if await client.exists(keys.vtex_hold(account)):
                return False
            async with client.pipeline(transaction=True) as pipe:
                pipe.incr(keys.vtex_rate(account, minute))
                pipe.expire(keys.vtex_rate(account, minute), 120)
                count, _ = await pipe.execute()
            return int(count) <= self.settings.vtex_max_requests_per_minute

        return await self.store.guard(check)

    async def _hold(self, account: str, seconds: float) -> None:
        key = self.store.keys.vtex_hold(account)
        ms = max(1, int(seconds * 1000))
        try:
            await self.store.guard(lambda: self.store.client.set(key, "1", px=ms))
        except StoreUnavailable:
            pass

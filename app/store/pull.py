"""Pull subscriptions in Redis, as VTEX's Feed v3: take items hidden for a visibility
timeout, commit them by handle."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from app.store.client import Store, now_ms, text
from app.store.schema import Keys
from app.store.scripts import register


class PullQueue:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.keys: Keys = store.keys
        self._feed_take = register(store.client, self.keys, "feed_take.lua", rules=False)
        self._feed_commit = register(store.client, self.keys, "feed_commit.lua", rules=False)

    async def feed_take(
        self, sub: str, maxlot: int, visibility_s: float, retention_s: float
    ) -> tuple[list[tuple[str, bytes]], int]:
        """Up to `maxlot` items, hidden until the returned time (ms)."""
        now = now_ms()
        hidden_until = now + int(visibility_s * 1000)
        args = {
            "sub": sub,
            "now": now,
            "hiddenUntil": hidden_until,
            "maxlot": maxlot,
            "retentionMs": int(retention_s * 1000),
        }
        items = await self.store.script(self._feed_take, [], [orjson.dumps(args)])
        return [(text(i), e) for i, e in items], hidden_until

    async def feed_commit(self, sub: str, receipts: Sequence[str]) -> int:
        """Commit items by "<delivery id>~<hidden until>" receipts."""
        return int(await self.store.script(self._feed_commit, [], [sub, *receipts]))

"""Subscriptions put in the catalog by hand, for tests that route with the store directly
(route.lua makes deliveries only for subscriptions in the catalog)."""

from __future__ import annotations

from app.store.catalog import Catalog, Record
from app.store.client import Store
from app.subscriptions.secrets import StoredSecrets
from app.subscriptions.spec import SubscriptionSpec


async def catalogue(store: Store, *sub_ids: str) -> None:
    """Put a push subscription of each id in the catalog (it is never delivered to here)."""
    for sub_id in sub_ids:
        spec = SubscriptionSpec(id=sub_id, url="http://127.0.0.1:9/")
        record = Record(spec, StoredSecrets(), 1, "api", 0, 0)
        await Catalog(store).put(record, 0, None)

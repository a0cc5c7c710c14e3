"""The store and its sides, made once per process from the settings and one open Store."""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.store.client import Store
from app.store.deliveries import Deliveries
from app.store.pull import PullQueue
from app.store.queries import Queries
from app.store.routing import Routing


@dataclass(frozen=True)
class Runtime:
    """What the endpoints, the router and the deliverer reach Redis through: the routing side
    (the ingest stream into deliveries), the deliveries (claim, settle, an operator's
    actions), the pull queues and the queries people read."""

    settings: Settings
    store: Store
    routing: Routing
    deliveries: Deliveries
    pull: PullQueue
    queries: Queries

    @classmethod
    def on(cls, settings: Settings, store: Store) -> Runtime:
        breakers = {s.id: s.breaker() for s in settings.subscriptions}
        retention_s = settings.log_retention_s
        return cls(
            settings,
            store,
            Routing(store, retention_s),
            Deliveries(store, retention_s, breakers),
            PullQueue(store),
            Queries(store),
        )

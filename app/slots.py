"""Slots of this process's delivery workers, promised to the router while it routes.

A delivery the router creates with a lease goes straight in flight to this process's worker,
without a round trip to claim it: the worker's free slots are reserved first (`Grant`), used by
the deliveries route.lua admitted, and every reserved slot is given back when the routing is
over — whatever happened, as the reservation is a context manager (`Dispatch.reserve`).
Whether a delivery may go in flight at all is admission's (app/store/admission.lua); these are
only this process's capacity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.store.deliveries import Claimed


@dataclass
class Grant:
    """Slots of one subscription's worker: how many are left to take, and their lease."""

    count: int
    lease_until_ms: int


class Slots:
    """The slots reserved for one routing run."""

    def __init__(self, grants: dict[str, Grant], start: Callable[[str, Claimed], None]) -> None:
        self.grants = grants
        self.reserved = {sub: grant.count for sub, grant in grants.items()}
        self._start = start

    def take(self, sub: str) -> int:
        """A slot of `sub`'s worker: its lease expiry (ms), or 0 when none is left."""
        grant = self.grants.get(sub)
        if grant is None or grant.count <= 0:
            return 0
        grant.count -= 1
        return grant.lease_until_ms

    def start(self, sub: str, item: Claimed) -> None:
        """Start a delivery route.lua put in flight for this process."""
        self._start(sub, item)

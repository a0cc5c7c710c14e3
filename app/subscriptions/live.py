"""Each process's copy of the catalog (app/store/catalog.py), refreshed on change.

Routing and delivery read subscriptions from this copy, never from Redis per event. The copy
asks Redis every REFRESH_S whether the catalog's revision moved (one GET), and when it did,
reads the catalog again, resolves what changed (compiling filters and transforms) and tells
whoever listens (the deliverer, the transforms): a change made through any process is applied
by every process within about a second, without a restart.

Until the catalog is first read (Redis not answering at start-up), the copy is the config
file's subscriptions. A record this process cannot read (a newer orderhook's, a filter this
jsonatapy cannot compile) is left out and logged; one whose secret values this process cannot
find (an environment variable it lacks) is routed, but not delivered here (`secrets_problem`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType

from app.config import Settings
from app.errors import StoreUnavailable
from app.lifecycle import sleep_unless
from app.store.catalog import Catalog, Record, decode_record
from app.subscriptions.secrets import Sealer, from_file, keyring, stand_ins
from app.subscriptions.spec import Keyring, Subscription, resolve

log = logging.getLogger("orderhook.subscriptions")

REFRESH_S = 0.25

Listener = Callable[[Mapping[str, Subscription]], None]


class Subscriptions:
    """The subscriptions as this process knows them: `current` (by id, in the catalog's
    order), `revision` (the catalog's, -1 before it was read)."""

    def __init__(self, subscriptions: Sequence[Subscription] = ()) -> None:
        self.current: Mapping[str, Subscription] = MappingProxyType(
            {s.id: s for s in subscriptions}
        )
        self.revision = -1
        self._listeners: list[Listener] = []

    @property
    def routable(self) -> bool:
        """Whether events may be routed now: there are subscriptions, and every one of the
        catalog's is in this copy (else an event would be acknowledged without a delivery
        it should have had)."""
        return bool(self.current)

    def all(self) -> tuple[Subscription, ...]:
        return tuple(self.current.values())

    def get(self, sub_id: str) -> Subscription | None:
        return self.current.get(sub_id)

    def listen(self, listener: Listener) -> None:
        """Call `listener` with the new subscriptions after every change."""
        self._listeners.append(listener)

    def _replace(self, found: Mapping[str, Subscription], revision: int) -> None:
        self.current, self.revision = MappingProxyType(dict(found)), revision
        for listener in self._listeners:
            try:
                listener(self.current)
            except Exception:  # one listener's bug must not keep the others from the change
                log.exception("applying a subscription change failed")


class LiveSubscriptions(Subscriptions):
    """The catalog's copy, kept fresh by `run`."""

    def __init__(
        self,
        catalog: Catalog,
        settings: Settings,
        sealer: Sealer,
    ) -> None:
        super().__init__(settings.subscriptions)
        self.catalog = catalog
        env = settings.env
        # this process's config file's values (`file` refs)
        self.local = {spec.id: from_file(spec, env) for spec in settings.subscription_specs}
        self._rank = {spec.id: n for n, spec in enumerate(settings.subscription_specs)}
        self.sealer = sealer
        self.env = env
        self.limits = settings.jsonata_limits
        self._resolved: dict[str, tuple[bytes, Subscription | None]] = {}
        self.unusable: set[str] = set()  # records this process cannot read, with no older one

    @property
    def routable(self) -> bool:
        return self.revision >= 0 and bool(self.current) and not self.unusable

    async def refresh(self) -> bool:
        """Read the catalog again if its revision moved; whether it had."""
        if await self.catalog.revision() == self.revision:
            return False
        revision, records = await self.catalog.load()
        found, unusable = {}, set()
        for sub_id, raw in sorted(records.items(), key=self._order):
            if (sub := self._resolve(sub_id, raw)) is not None:
                found[sub_id] = sub
            else:
                unusable.add(sub_id)
        self.unusable = unusable
        self._resolved = {k: v for k, v in self._resolved.items() if k in records}
        self._replace(found, revision)
        return True

    def _order(self, item: tuple[str, bytes]) -> tuple[int, str]:
        """The config file's subscriptions in its order, then the others by id."""
        return (self._rank.get(item[0], len(self._rank)), item[0])

    def _resolve(self, sub_id: str, raw: bytes) -> Subscription | None:
        """The subscription of a record, resolved again only when the record changed."""
        known = self._resolved.get(sub_id)
        if known is not None and known[0] == raw:
            return known[1]
        try:
            sub: Subscription | None = self._subscription(decode_record(raw))
        except Exception as exc:  # a newer orderhook's record, a filter this one cannot compile
            sub = self.current.get(sub_id)  # its version before, if this process had one
            log.error(
                "subscription %s in the catalog cannot be used here (%s): %s",
                sub_id,
                exc,
                "its previous version goes on" if sub else "no event is routed meanwhile",
            )
        self._resolved[sub_id] = (raw, sub)
        return sub

    def _subscription(self, record: Record) -> Subscription:
        problem: list[str] = []

        def keys() -> Keyring:
            try:
                return keyring(
                    record.secrets, self.sealer, self.env, self.local.get(record.spec.id)
                )
            except Exception as exc:  # SpecError, or a sealed value this key cannot open
                problem.append(str(exc))
                return stand_ins(record.secrets.headers, record.secrets.auth is not None)

        sub = resolve(record.spec, keys, self.limits, record.version)
        if problem:
            log.error(
                "subscription %s: its secrets cannot be found here (%s): this process routes "
                "its events but does not deliver them",
                sub.id,
                problem[0],
            )
            return replace(sub, secrets_problem=problem[0])
        return sub

    async def run(self, stopping: asyncio.Event) -> None:
        """Refresh every REFRESH_S until `stopping` is set."""
        while not stopping.is_set():
            try:
                await self.refresh()
            except StoreUnavailable:
                pass  # said by the server's reachability warning; the copy stays as it is
            except Exception:
                log.exception("reading the subscription catalog failed")
            await sleep_unless(stopping, REFRESH_S)

"""The config file's subscriptions, applied to the catalog (`serve` and `worker` at start-up,
`orderhook subscriptions apply`).

Each one is created, or updated when the file's spec changed since it was last applied (the
record keeps the digest of what was applied: a start-up with the same file changes nothing,
not even what the admin API changed since). Subscriptions created through the API are never
touched. With `prune`, config subscriptions the file no longer has are deleted. Two processes
starting with different files do not fight over a subscription: each change raises its
version, and every process follows the newest (app/subscriptions/live.py).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import msgspec

from app.config import Settings
from app.events import utc_now_iso
from app.store.catalog import Catalog, Conflict, Origin, Record, decode_record
from app.store.client import now_ms
from app.subscriptions.secrets import Sealer, StoredSecrets, stored_from_file
from app.subscriptions.spec import SECRET_FIELDS, SubscriptionSpec

log = logging.getLogger("orderhook.subscriptions")

ATTEMPTS = 5  # a change that keeps meeting another one gives up after this many tries


@dataclass
class Applied:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # the API's, of the same id
    pruned: list[str] = field(default_factory=list)


def digest(spec: SubscriptionSpec, secrets: StoredSecrets) -> str:
    """What a config spec is, secrets by reference or fingerprint (never their values)."""
    body = msgspec.json.encode([spec.public(), secrets.same()])
    return hashlib.sha256(body).hexdigest()


def audit_entry(
    action: str, sub: str, by: str, before: Record | None, after: Record | None
) -> dict[str, Any]:
    """An audit entry: what changed, field by field; secrets only as `changed`."""
    return {
        "at": utc_now_iso(),
        "action": action,
        "subscription": sub,
        "by": by,
        "changes": changes(before, after),
    }


def changes(before: Record | None, after: Record | None) -> dict[str, Any]:
    old = _fields(before)
    new = _fields(after)
    found: dict[str, Any] = {
        name: {"from": old.get(name), "to": new.get(name)}
        for name in sorted(old.keys() | new.keys())
        if old.get(name) != new.get(name)
    }
    if before is not None and after is not None and before.secrets.same() != after.secrets.same():
        found["secret"] = "changed"
    return found


def _fields(record: Record | None) -> dict[str, Any]:
    if record is None:
        return {}
    fields: dict[str, Any] = msgspec.to_builtins(record.spec.public())
    return {k: v for k, v in fields.items() if k not in SECRET_FIELDS}


async def apply_config(
    catalog: Catalog, settings: Settings, sealer: Sealer, *, prune: bool = False
) -> Applied:
    """Apply the settings' subscriptions to the catalog (see the module's docstring)."""
    applied = Applied()
    for spec in settings.subscription_specs:
        for attempt in range(ATTEMPTS):
            try:
                await _apply_one(catalog, spec, sealer, applied)
                break
            except Conflict:
                if attempt == ATTEMPTS - 1:
                    raise
    if prune:
        await _prune(catalog, settings, applied)
    return applied


async def _apply_one(
    catalog: Catalog, spec: SubscriptionSpec, sealer: Sealer, applied: Applied
) -> None:
    secrets = stored_from_file(spec, sealer)
    wanted = digest(spec, secrets)
    before = await catalog.get(spec.id)
    if before is not None and before.origin != "config":
        log.warning(
            "subscription %s of the config file is in the catalog as one made through the "
            "API: left as it is (delete it through the API to let the file's apply)",
            spec.id,
        )
        applied.skipped.append(spec.id)
        return
    if before is not None and before.applied == wanted:
        applied.unchanged.append(spec.id)
        return
    record = new_record(spec.public(), secrets, before, "config", applied=wanted)
    action = "create" if before is None else "update"
    await catalog.put(
        record,
        before.version if before else 0,
        audit_entry(action, spec.id, "config", before, record),
    )
    (applied.created if before is None else applied.updated).append(spec.id)


def new_record(
    spec: SubscriptionSpec,
    secrets: StoredSecrets,
    before: Record | None,
    origin: Origin,
    applied: str = "",
) -> Record:
    """The record that follows `before` (None: a new subscription)."""
    now = now_ms()
    return Record(
        spec=spec,
        secrets=secrets,
        version=before.version + 1 if before else 1,
        origin=origin,
        created_ms=before.created_ms if before else now,
        updated_ms=now,
        applied=applied,
    )


async def _prune(catalog: Catalog, settings: Settings, applied: Applied) -> None:
    wanted = {spec.id for spec in settings.subscription_specs}
    _, records = await catalog.load()
    for sub_id, raw in records.items():
        if sub_id in wanted:
            continue
        record = decode_record(raw)
        if record.origin == "config":
            entry = audit_entry("delete", sub_id, "config", record, None)
            if await catalog.delete(sub_id, entry) is not None:
                applied.pruned.append(sub_id)

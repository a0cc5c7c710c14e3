"""Subscriptions changed at run time: what the admin API (app/ops/subscriptions.py) and the
dashboard do, one function each.

Each change is written to the catalog (app/store/catalog.py) only if the subscription's version
is still the one it was made from, with an audit entry naming who made it (`Actor`); then this
process's live copy is refreshed, so the answer (and the next request here) sees it; the other
processes follow within a second (app/subscriptions/live.py).

A spec is checked as the config loader checks it (`resolve`: the same messages, without the
file's name), and its URL is put to the SSRF guard as start-up does (app/preflight.py). Secret
values are sealed (app/subscriptions/secrets.py) and never shown again: every answer says
`"***"`, except the one that creates a secret (a new subscription's, a rotation's).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from msgspec import UNSET, Struct

from app.errors import BadRequest, Conflict, NotFound, SecretsUnavailable
from app.redaction import HIDDEN, scrub, shown_url
from app.runtime import Runtime
from app.signing import new_secret
from app.ssrf import foresee
from app.store.catalog import DROPPING, Record, decode_record
from app.store.catalog import Conflict as VersionMoved
from app.store.client import now_ms
from app.store.reads import gather
from app.store.schema import Enablement
from app.subscriptions.apply import ATTEMPTS, audit_entry, new_record
from app.subscriptions.auth import AuthSpec, OAuth2Spec, secret_of
from app.subscriptions.secrets import (
    SecretRef,
    StoredSecrets,
    seal,
    stand_ins,
    stored_from_api,
)
from app.subscriptions.spec import (
    SECRET_FIELDS,
    Keyring,
    SpecError,
    Subscription,
    SubscriptionSpec,
    resolve,
)

SPEC_DEFAULTS = {field.name: field.default for field in msgspec.structs.fields(SubscriptionSpec)}
SHOWN_FIELDS = tuple(name for name in SPEC_DEFAULTS if name not in SECRET_FIELDS)


@dataclass(frozen=True)
class Actor:
    """Who makes a change, for the audit: through what (`api`, `dashboard`, `cli`) and, when
    known, with which role."""

    by: str
    role: str | None = None


Change = Callable[[Record], Awaitable[tuple[SubscriptionSpec, StoredSecrets]]]


# ── reading ─────────────────────────────────────────────────────────────────────────────────


async def listing(runtime: Runtime) -> list[dict[str, Any]]:
    """Every subscription in the catalog, with its live state (one round trip for them all)."""
    _, raw = await runtime.catalog.load()
    shown = [s.id for s in runtime.subscriptions.all()]  # the live copy's order
    order = shown + sorted(set(raw) - set(shown))
    records = [decode_record(raw[sub_id]) for sub_id in order if sub_id in raw]
    return await _views(runtime, records)


async def show(runtime: Runtime, sub_id: str) -> dict[str, Any]:
    return (await _views(runtime, [await _record(runtime, sub_id)]))[0]


async def audit(runtime: Runtime, offset: int, limit: int) -> dict[str, Any]:
    """A page of the audit, newest first; URLs in it shown as the admin role sees them."""
    found = await runtime.catalog.audit(offset, limit + 1)
    items = [_shown_entry(entry) for entry in found[:limit]]
    return {"items": items, "next": offset + limit if len(found) > limit else None}


# ── changing ────────────────────────────────────────────────────────────────────────────────


async def create(runtime: Runtime, spec: SubscriptionSpec, actor: Actor) -> dict[str, Any]:
    """A new subscription (origin "api", version 1); Conflict if the id is taken. The answer
    holds the signing secret made for it, if it gave none."""
    auth_given = spec.auth is not None and any(secret_of(spec.auth))
    await _check(runtime, spec, stand_ins(spec.headers or {}, auth_given))
    secrets, made = _stored(runtime, spec)
    if await runtime.catalog.get(spec.id) is not None:
        raise Conflict(f"subscription {spec.id!r} exists: change it with PATCH")
    record = new_record(spec.public(), secrets, None, "api")
    try:
        await runtime.catalog.put(record, 0, _entry("create", spec.id, actor, None, record))
    except VersionMoved as exc:
        if exc.found == DROPPING:
            raise Conflict(
                f"subscription {spec.id!r} was deleted and what it had queued is still being "
                "removed: try again in a moment"
            ) from None
        raise Conflict(f"subscription {spec.id!r} exists: change it with PATCH") from None
    await runtime.subscriptions.refresh()
    shown = await show(runtime, spec.id)
    return {**shown, "secret": made} if made is not None else shown


async def update(runtime: Runtime, sub_id: str, patch: Struct, actor: Actor) -> dict[str, Any]:
    """The subscription with the patch's fields over its spec (null: the default again)."""

    async def change(before: Record) -> tuple[SubscriptionSpec, StoredSecrets]:
        spec = _patched(before.spec, patch)
        _no_secret_moves(before, spec, patch)
        secrets = _secrets_patched(runtime, before, spec, patch)
        shape = stand_ins(secrets.headers, secrets.auth is not None)
        await _check(runtime, spec, shape, url_changed=spec.url != before.spec.url)
        return spec.public(), secrets

    await _change(runtime, sub_id, "update", actor, change)
    return await show(runtime, sub_id)


async def delete(runtime: Runtime, sub_id: str, actor: Actor) -> dict[str, Any]:
    """Delete it, and every delivery it had (waiting, in flight, dead): how many."""
    before = await _record(runtime, sub_id)
    dropped = await runtime.catalog.delete(sub_id, _entry("delete", sub_id, actor, before, None))
    if dropped is None:
        raise NotFound(f"no subscription {sub_id!r}")
    await runtime.subscriptions.refresh()
    return {"deleted": sub_id, "dropped": dropped}


async def pause(runtime: Runtime, sub_id: str, actor: Actor) -> dict[str, Any]:
    """Queue its events, send none until resumed (in every process at once)."""
    return await _set_state(runtime, sub_id, Enablement.PAUSED, "pause", actor)


async def resume(runtime: Runtime, sub_id: str, actor: Actor) -> dict[str, Any]:
    """Send again, the backlog first (a disabled one is enabled too)."""
    return await _set_state(runtime, sub_id, Enablement.ENABLED, "resume", actor)


async def rotate_secret(
    runtime: Runtime, sub_id: str, grace_s: float, actor: Actor
) -> dict[str, Any]:
    """A new signing secret; the current ones keep signing for `grace_s` (both signatures go
    on every delivery meanwhile)."""
    made = new_secret()
    until_ms = now_ms() + int(grace_s * 1000)

    async def change(before: Record) -> tuple[SubscriptionSpec, StoredSecrets]:
        if before.spec.mode != "push":
            raise BadRequest(
                "rotate-secret is for push subscriptions: give a pull subscription's new "
                'token with PATCH {"token": ...}'
            )
        if not runtime.sealer.available:
            raise SecretsUnavailable()
        kept = _retiring(runtime, before, until_ms)
        fresh = seal(runtime.sealer, made)
        return before.spec, msgspec.structs.replace(before.secrets, secret=[fresh, *kept])

    await _change(runtime, sub_id, "rotate-secret", actor, change)
    return {"secret": made, "grace_until": _rfc3339(until_ms)}


# ── the parts ───────────────────────────────────────────────────────────────────────────────


async def _record(runtime: Runtime, sub_id: str) -> Record:
    record = await runtime.catalog.get(sub_id)
    if record is None:
        raise NotFound(f"no subscription {sub_id!r}")
    return record


async def _change(runtime: Runtime, sub_id: str, action: str, actor: Actor, make: Change) -> None:
    """Write what `make` makes of the stored record, as its next version; made again from the
    newer record when another change got in first (Conflict after ATTEMPTS)."""
    for _ in range(ATTEMPTS):
        before = await _record(runtime, sub_id)
        spec, secrets = await make(before)
        record = new_record(spec, secrets, before, before.origin, applied=before.applied)
        try:
            entry = _entry(action, sub_id, actor, before, record)
            await runtime.catalog.put(record, before.version, entry)
        except VersionMoved:
            continue
        await runtime.subscriptions.refresh()
        return
    raise Conflict(f"subscription {sub_id!r} kept changing meanwhile: try again")


async def _set_state(
    runtime: Runtime, sub_id: str, state: Enablement, action: str, actor: Actor
) -> dict[str, Any]:
    await _record(runtime, sub_id)
    was = await runtime.deliveries.set_state(sub_id, state)
    entry = _entry(action, sub_id, actor, None, None)
    entry["changes"] = {"state": {"from": was.value, "to": state.value}} if was != state else {}
    await runtime.catalog.note(entry)
    return {"id": sub_id, "state": state.value}


def _entry(
    action: str, sub_id: str, actor: Actor, before: Record | None, after: Record | None
) -> dict[str, Any]:
    entry = audit_entry(action, sub_id, actor.by, before, after)
    return entry | {"role": actor.role} if actor.role is not None else entry


async def _check(
    runtime: Runtime, spec: SubscriptionSpec, shape: Keyring, url_changed: bool = True
) -> None:
    """BadRequest naming the field for a spec the config loader would refuse, or whose URL
    the SSRF guard would refuse; `shape` stands for its secret values (see `stand_ins`)."""
    settings = runtime.settings
    try:
        resolve(spec, lambda: shape, settings.jsonata_limits)
    except SpecError as exc:
        raise BadRequest(str(exc)) from None
    if isinstance(spec.auth, OAuth2Spec):  # the token request goes through the same guard
        (seen,) = await foresee([spec.auth.token_url], settings.allow_networks)
        if seen.refused is not None:
            refused = scrub(seen.refused, spec.auth.token_url)
            raise BadRequest(f"`auth.token_url` cannot be reached: {refused}")
    if spec.mode != "push" or not spec.url or not url_changed:
        return
    (seen,) = await foresee([spec.url], settings.allow_networks)
    if seen.refused is not None:
        raise BadRequest(f"`url` cannot be delivered to: {scrub(seen.refused, spec.url)}")


def _no_secret_moves(before: Record, after: SubscriptionSpec, patch: Struct) -> None:
    """A kept secret (not given again, or given as `"***"`) goes on to where it went: a patch
    that sends the deliveries to another host must give the headers' values and the auth's
    secret again, and one that changes the auth's type or token URL its secret; else an admin
    could send an environment variable's value, or a sealed secret, to a host of their own."""
    old_origin = before.spec.url
    moved = after.url is not None and shown_url(after.url, "ops") != old_origin
    headers = getattr(patch, "headers", UNSET)
    if moved and before.secrets.headers and not _given_all(headers):
        raise BadRequest(
            "`headers` must be given again, every value: the deliveries go to another host, "
            "and the old values are not sent to it"
        )
    if before.secrets.auth is None or after.auth is None:
        return
    old, new = before.spec.auth, after.auth
    auth_given = getattr(patch, "auth", UNSET)
    secret_given = auth_given not in (UNSET, None) and secret_of(after.auth)[0] not in (
        None,
        HIDDEN,
    )
    if secret_given:
        return
    same_target = type(old) is type(new) and getattr(old, "token_url", None) == getattr(
        new, "token_url", None
    )
    to_host = not isinstance(new, OAuth2Spec)  # Basic and Bearer go with each delivery
    if not same_target or (moved and to_host):
        raise BadRequest(
            f"`auth.{new.SECRET}` must be given again: the auth's type, token URL or host "
            "changes, and the old secret is not sent to the new one"
        )


def _given_all(headers: Any) -> bool:
    return isinstance(headers, dict) and all(value != HIDDEN for value in headers.values())


def _stored(runtime: Runtime, spec: SubscriptionSpec) -> tuple[StoredSecrets, str | None]:
    """stored_from_api's, its refusals of a field as BadRequest (SecretsUnavailable as is)."""
    try:
        return stored_from_api(spec, runtime.sealer)
    except SpecError as exc:
        raise BadRequest(str(exc)) from None


def _patched(spec: SubscriptionSpec, patch: Struct) -> SubscriptionSpec:
    """The public spec with the patch's fields (null: the default); BadRequest for an id or a
    mode other than the spec's."""
    changes = {}
    for name in SHOWN_FIELDS:
        value = getattr(patch, name)
        if value is not UNSET:
            changes[name] = SPEC_DEFAULTS[name] if value is None else value
    for name in ("id", "mode"):
        if name in changes and changes[name] != getattr(spec, name):
            raise BadRequest(f"`{name}` cannot change: delete the subscription and create it anew")
    return msgspec.structs.replace(spec, **changes)


def _sealed(runtime: Runtime, value: str) -> SecretRef:
    try:
        return seal(runtime.sealer, value)
    except SpecError as exc:
        raise BadRequest(str(exc)) from None


def _secrets_patched(
    runtime: Runtime, before: Record, spec: SubscriptionSpec, patch: Struct
) -> StoredSecrets:
    """The stored secrets, with those the patch gives (sealed) in place of the old ones; a
    value given as `"***"` (as shown) is the old one."""
    if any(getattr(patch, name) is None for name in ("secret", "token")):
        raise BadRequest("a secret cannot be removed: give a new one, or rotate it")
    given = {name: getattr(patch, name) for name in SECRET_FIELDS}
    given = {name: v for name, v in given.items() if v not in (UNSET, HIDDEN, None)}
    outbound = [name for name in ("headers", "auth") if getattr(patch, name) is not UNSET]
    url = getattr(patch, "url", UNSET)
    if url is not UNSET and url is not None and spec.mode == "push":
        # the whole URL is a secret (its path or query may hold a token); the spec its origin
        before = msgspec.structs.replace(
            before, secrets=msgspec.structs.replace(before.secrets, url=_sealed(runtime, url))
        )
    if not given and not outbound:
        return before.secrets
    filler = {"token": "kept"} if spec.mode == "pull" and "token" not in given else {}
    stored, _ = _stored(runtime, msgspec.structs.replace(spec, **filler, **given))
    parts: dict[str, Any] = {n: getattr(stored, n) for n in ("secret", "token") if n in given}
    if "headers" in outbound:
        shown = {name for name, value in (spec.headers or {}).items() if value == HIDDEN}
        old = before.secrets.headers
        parts["headers"] = {
            n: old[n] if n in shown and n in old else r for n, r in stored.headers.items()
        }
    if "auth" in outbound:
        kept = spec.auth is not None and secret_of(spec.auth)[0] == HIDDEN
        parts["auth"] = before.secrets.auth if kept else stored.auth
    return msgspec.structs.replace(before.secrets, **parts)


def _retiring(runtime: Runtime, before: Record, until_ms: int) -> list[SecretRef]:
    """The current secrets, signing until `until_ms` (none when that is now), and those already
    retiring that have not ended; a secret of the config file sealed (it must outlive it)."""
    now = now_ms()
    kept = [ref for ref in before.secrets.secret if ref.until_ms and ref.until_ms > now]
    if until_ms <= now:
        return kept
    current = [ref for ref in before.secrets.secret if ref.until_ms is None]
    local = runtime.subscriptions.local.get(before.spec.id)
    from_file = local.secrets if local is not None and any(r.file for r in current) else ()
    retired = [msgspec.structs.replace(ref, until_ms=until_ms) for ref in current if not ref.file]
    retired += [seal(runtime.sealer, str(value), until_ms) for value in from_file]
    return retired + kept


async def _views(runtime: Runtime, records: list[Record]) -> list[dict[str, Any]]:
    queries = runtime.queries
    ids = [record.spec.id for record in records]
    counts = gather([queries.subscription_counts(sub_id) for sub_id in ids])
    health = gather([queries.health(sub_id) for sub_id in ids])
    every = await queries.read(gather([counts, health]))
    live = runtime.subscriptions
    return [
        _view(record, live.get(record.spec.id), *found)
        for record, *found in zip(records, every[0], every[1], strict=True)
    ]


def _view(
    record: Record, live: Subscription | None, counts: dict[str, Any], health: dict[str, Any]
) -> dict[str, Any]:
    """What the admin sees of a subscription. Its URL as admins see it (the path: it tells two
    subscriptions on one host apart) comes from the live copy, which holds it whole; the
    catalog keeps only its origin in clear."""
    spec = record.spec
    fields: dict[str, Any] = msgspec.to_builtins({n: getattr(spec, n) for n in SHOWN_FIELDS})
    url = live.url if live is not None and live.version == record.version else spec.url
    return {
        **fields,
        "url": shown_url(url, "admin") if url else None,
        "secret": HIDDEN if record.secrets.secret else None,
        "token": HIDDEN if record.secrets.token else None,
        "headers": dict.fromkeys(record.secrets.headers, HIDDEN) or None,
        "auth": _masked_auth(spec.auth, record.secrets.auth is not None),
        "origin": record.origin,
        "version": record.version,
        "createdAt": record.created_ms / 1000,
        "updatedAt": record.updated_ms / 1000,
        **counts,
        "lastError": health["lastError"],
        "lastErrorAt": _seconds(health["lastErrorMs"]),
        "lastDeliveredAt": _seconds(health["lastDeliveredMs"]),
    }


def _masked_auth(auth: AuthSpec | None, has_secret: bool) -> dict[str, Any] | None:
    if auth is None:
        return None
    shown: dict[str, Any] = msgspec.to_builtins(auth)
    return shown | {auth.SECRET: HIDDEN} if has_secret else shown


def _seconds(ms: int | None) -> float | None:
    return ms / 1000 if ms is not None else None


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _shown_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """An audit entry with a changed URL shown without its credentials."""
    url = entry.get("changes", {}).get("url")
    if isinstance(url, dict):
        shown = {k: shown_url(v, "admin") if isinstance(v, str) else v for k, v in url.items()}
        entry = {**entry, "changes": {**entry["changes"], "url": shown}}
    return entry

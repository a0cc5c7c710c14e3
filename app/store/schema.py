"""The data model in Redis: every key family, hash field and stored value, defined once.

Python builds keys with `Keys`; the Lua scripts read the same definitions from `lua_prelude`,
made from this module when a script is registered (`K.ready(sub)`, `D.attempts`,
`S.breaker`, `stat(sub, C.delivered)`), so no script spells a key or a field itself
(tests/test_schema.py fails if one does).

All keys carry the configurable prefix inside a hash tag (`{orderhook}:...`), so every Lua
script touches a single cluster slot. The layout is a contract with running deployments: it
carries SCHEMA_VERSION in `Keys.schema_version` (app/store/version.py checks it at start-up).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from types import MappingProxyType

# The layout's version. Raise it with any change in a key family, a field or a stored value,
# and teach app/store/version.py to migrate data of the version before.
SCHEMA_VERSION = 2


class Keys:
    """Every key name. A method's body is its family's template: lua_prelude calls each with
    placeholders to make the Lua side's K.<name>(...) (so each returns one f-string)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.tag = "{" + prefix + "}"

    @property
    def schema_version(self) -> str:
        """The layout version of the data under this prefix (SCHEMA_VERSION)."""
        return f"{self.tag}:schema"

    @property
    def ingest_stream(self) -> str:
        """The stream of accepted events, in the order they were accepted (Entry fields)."""
        return f"{self.tag}:ingest"

    def seen(self, event_id: str) -> str:
        """Marks an event id as seen for the dedupe window; its value is the stream entry id."""
        return f"{self.tag}:seen:{event_id}"

    ROUTER_GROUP = "router"

    @property
    def ready_probe(self) -> str:
        """Written by the readiness check: does Redis take a write now (not out of memory)?"""
        return f"{self.tag}:ready"

    @property
    def stats(self) -> str:
        """Counters (Counter; per subscription `stat_field`), kept in Redis so they are true
        across restarts and processes."""
        return f"{self.tag}:stats"

    @property
    def subscriptions(self) -> str:
        """A hash: every subscription's catalog record (app/store/catalog.py's Record, JSON)
        by id; the one source of truth every process reads."""
        return f"{self.tag}:subs"

    @property
    def subscriptions_revision(self) -> str:
        """A counter raised by every change of the catalog: processes poll it to notice."""
        return f"{self.tag}:subs:rev"

    @property
    def subscriptions_dropping(self) -> str:
        """A set of the ids of deleted subscriptions whose deliveries and keys are still being
        removed (a delete cut short by a crash is finished before the id is used again)."""
        return f"{self.tag}:subs:dropping"

    @property
    def audit(self) -> str:
        """A list of the catalog's changes, newest first (JSON `{at, action, subscription,
        changes}`), the latest AUDIT_KEPT."""
        return f"{self.tag}:audit"

    @property
    def received(self) -> str:
        """A sorted set of routed event ids by when they were received (ms), kept for the
        delivery log's retention: what a replay of a time range reads."""
        return f"{self.tag}:received"

    def job(self, job_id: str) -> str:
        """A hash: a background job's progress (a replay), kept a day after it ends."""
        return f"{self.tag}:job:{job_id}"

    def ingest_minute(self, minute: int) -> str:
        """Events accepted in one minute (Unix minutes), kept two hours."""
        return f"{self.tag}:m:{minute}"

    def order_sequence(self, order: str) -> str:
        """The number of the order's latest appended entry (Entry.seq), kept for the dedupe
        window; `order` is app/events.py's order_key."""
        return f"{self.tag}:oseq:{order}"

    def order_routed(self, order: str) -> str:
        """The number of the order's latest routed entry: its next one waits for it."""
        return f"{self.tag}:orouted:{order}"

    def event(self, event_id: str) -> str:
        """An event as routed, kept for the retention (the delivery log)."""
        return f"{self.tag}:ev:{event_id}"

    def event_log(self, event_id: str) -> str:
        """A list of an event's delivery attempts, newest first, kept for the retention."""
        return f"{self.tag}:log:{event_id}"

    def order(self, order_id: str) -> str:
        """A set of an order's event ids, kept for the retention."""
        return f"{self.tag}:order:{order_id}"

    @property
    def recent_attempts(self) -> str:
        """A list of the latest delivery attempts of every subscription (the dashboard's)."""
        return f"{self.tag}:attempts"

    def delivery(self, delivery_id: str) -> str:
        """A hash (Delivery fields): one event on its way to one subscription."""
        return f"{self.tag}:d:{delivery_id}"

    def state(self, sub: str) -> str:
        """A hash (State fields): the subscription's state, breaker and token bucket."""
        return f"{self.tag}:s:{sub}:state"

    def ready(self, sub: str) -> str:
        """A sorted set of the subscription's deliveries waiting, scored by due time (ms); a
        pull subscription's, by creation time."""
        return f"{self.tag}:s:{sub}:ready"

    def inflight(self, sub: str) -> str:
        """A sorted set of deliveries being attempted, scored by lease expiry (ms); a pull
        subscription's hidden items, by when they become visible again."""
        return f"{self.tag}:s:{sub}:inflight"

    def dlq(self, sub: str) -> str:
        """A sorted set of dead-lettered deliveries, scored by when they died (ms)."""
        return f"{self.tag}:s:{sub}:dlq"

    def pending_age(self, sub: str) -> str:
        """A sorted set of a subscription's undelivered deliveries by creation time (ms)."""
        return f"{self.tag}:s:{sub}:age"

    def latencies(self, sub: str) -> str:
        """A list of "<ms>:<latency ms>" of the latest deliveries, newest first (replayed
        dead letters left out)."""
        return f"{self.tag}:s:{sub}:lat"

    def latency_histogram(self, sub: str) -> str:
        """A hash: cumulative counts of delivery latencies per bucket (app/store/latency.py)."""
        return f"{self.tag}:s:{sub}:lath"

    def fired(self, sub: str, order: str) -> str:
        """Single fire: the id of the event with which an order (app/events.py's order_key)
        first matched the subscription's filter; its later matches make no delivery. Expires
        after the filter's single-fire retention, counted again from each later match."""
        return f"{self.tag}:s:{sub}:fired:{order}"

    def order_waiting(self, sub: str, order: str) -> str:
        """Per-order: a sorted set (every score 0, sorted as text) of the order's deliveries
        waiting their turn, by position (app/ordering/position.py)."""
        return f"{self.tag}:s:{sub}:o:{order}"

    def order_head(self, sub: str, order: str) -> str:
        """Per-order: the one delivery of the order released (ready, in flight or waiting for
        a retry); no other delivery of the order goes until it is delivered or dead."""
        return f"{self.tag}:s:{sub}:oh:{order}"

    def order_last(self, sub: str, order: str) -> str:
        """Per-order: the change ticks of the order's last delivered position (drop_stale)."""
        return f"{self.tag}:s:{sub}:ol:{order}"

    def order_dead(self, sub: str, order: str) -> str:
        """Per-order: a set of the order's dead-lettered deliveries, to note which events
        overtook them."""
        return f"{self.tag}:s:{sub}:od:{order}"

    def order_hold(self, sub: str) -> str:
        """Per-order: a sorted set of orders by when their first waiting delivery's reorder
        window ends."""
        return f"{self.tag}:s:{sub}:hold"

    def vtex_rate(self, account: str, minute: int) -> str:
        """Get Order requests to one account in one minute, counted across processes."""
        return f"{self.tag}:vtex:rate:{account}:{minute}"

    def vtex_hold(self, account: str) -> str:
        """Set while VTEX asked (429 + Retry-After) to leave an account alone."""
        return f"{self.tag}:vtex:hold:{account}"

    def session(self, digest: str) -> str:
        """A dashboard session by the SHA-256 (hex) of its id: the browser's cookie holds the id,
        Redis only its digest. JSON `{"role", "proof"}`, expiring with the session."""
        return f"{self.tag}:session:{digest}"

    def sign_in_failures(self, client: str) -> str:
        """Failed sign-ins from one client address (its IP) in the current throttle window,
        which starts with the first and ends with this key's expiry."""
        return f"{self.tag}:signin:{client}"

    @property
    def sign_in_failures_total(self) -> str:
        """Failed sign-ins from every address together, in its own window."""
        return f"{self.tag}:signin"

    @property
    def accepted_at(self) -> str:
        """A hash: each account's last accepted notification (ms), written by ingest.lua; an
        account never seen is set when the alert evaluator first looks (ingest.silent)."""
        return f"{self.tag}:alerts:accepted"

    @property
    def alerts_active(self) -> str:
        """A hash of the alert conditions in force, by `<target>|<event>|<subject>`: JSON
        `{event, subject, target, since, lastSentMs, details, config}` (app/store/alerts.lua;
        `config`: the digest of the config whose run raised it, absent in older records)."""
        return f"{self.tag}:alerts:active"

    @property
    def alerts_resolved(self) -> str:
        """A list of the latest ALERTS_RESOLVED_KEPT conditions that ended, newest first (the
        active entry's JSON, with `resolvedMs`)."""
        return f"{self.tag}:alerts:resolved"

    @property
    def alerts_marks(self) -> str:
        """A hash: per `<target>|<sub>`, the subscription's dead-letter counter when the target
        was last told (subscription.dead_letter counts from it); per `@config:<digest>`, a
        config's last evaluation, JSON `{at, everyMs, wants: {<target>: {<event>: true}},
        accounts: {<account>: true}}` (once per interval per config is enough; what the live
        configs want decides which conditions still stand)."""
        return f"{self.tag}:alerts:marks"

    @property
    def alerts_outbox(self) -> str:
        """A stream of alert notifications to send (AlertEntry fields), read by every process
        in the consumer group ALERTS_GROUP; capped at ALERTS_OUTBOX_MAX entries."""
        return f"{self.tag}:alerts:outbox"

    ALERTS_GROUP = "alerts"

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key of this prefix."""
        return self.tag.replace("{", "\\{").replace("}", "\\}") + ":*"


@functools.cache  # Keys does not change while the process runs
def families() -> Mapping[str, tuple[str, ...]]:
    """Every key family by name, as parts: text at even places, parameter names at odd ones;
    the tag is the parameter "TAG". E.g. "ready": ("", "TAG", ":s:", "sub", ":ready")."""
    probe = Keys("\0prefix\0")
    found = {}
    for name, member in inspect.getmembers(Keys):
        if name.startswith("_") or name == "pattern":
            continue
        if isinstance(member, property):
            built = getattr(probe, name)
        elif inspect.isfunction(member):
            params = list(inspect.signature(member).parameters)[1:]
            built = member(probe, *(f"\0{p}\0" for p in params))
        else:
            continue
        found[name] = tuple(built.replace(probe.tag, "\0TAG\0").split("\0"))
    return MappingProxyType(found)


def subscription_pattern(keys: Keys, sub: str) -> str:
    """A SCAN pattern matching every key of one subscription: the families under
    `<tag>:s:<sub>:` (an id is [a-z0-9-]: nothing in it is a pattern's)."""
    return keys.pattern.removesuffix("*") + f"s:{sub}:*"


def family_pattern(parts: Sequence[str]) -> str:
    """A regex matching the family's keys under any prefix (for tests that scan Redis)."""
    return "".join(
        re.escape(p) if i % 2 == 0 else (r"\{[^}]*\}" if p == "TAG" else ".+")
        for i, p in enumerate(parts)
    )


def known_key(key: str) -> bool:
    """Whether `key` (under any prefix) belongs to a family of the schema."""
    return any(pattern.fullmatch(key) for pattern in _patterns())


@functools.cache
def _patterns() -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(family_pattern(parts)) for parts in families().values())


class Entry(StrEnum):
    """The fields of an ingest stream entry."""

    ID = "id"
    EVENT = "event"  # the event's JSON
    SEQ = "seq"  # the order's sequence number (Keys.order_sequence)
    ORDER = "ord"  # the order key (app/events.py's order_key)
    TRACE = "tp"  # optional: the hook span's W3C traceparent (app/tracing.py)


class AlertEntry(StrEnum):
    """The fields of an alert outbox entry (Keys.alerts_outbox)."""

    TARGET = "target"  # the [[alerts]] id to send it to
    ALERT = "alert"  # the notification's JSON (app/alerts/compose.py's Notification)


ALERTS_RESOLVED_KEPT = 100
ALERTS_CONFIG_MARK = "@config:"  # alerts_marks: `@config:<digest>`, a config's last evaluation
ALERTS_OUTBOX_MAX = 10_000


class Delivery(StrEnum):
    """The fields of a delivery's hash (Keys.delivery)."""

    ID = "id"
    SUB = "sub"
    EVENT_ID = "eventId"
    ORDER_ID = "orderId"
    EVENT = "event"  # the event's JSON
    ATTEMPTS = "attempts"
    CREATED_MS = "createdMs"
    LAST_STATUS = "lastStatus"
    LAST_ERROR = "lastError"
    LAST_ATTEMPT_MS = "lastAttemptMs"
    DEAD_MS = "deadMs"
    REPLAYED = "replayed"  # "1" once replayed by hand out of the dead-letter queue
    OVERTAKEN_BY = "overtakenBy"  # per-order, dead: ids of the order's events delivered since
    ORDER = "ord"  # per-order: the order key
    POSITION = "pos"  # per-order: its position (app/ordering/position.py)
    WINDOW_MS = "win"  # per-order: its reorder window
    STALE = "stale"  # per-order: "1" to drop it when older than the order's last delivered
    TRACE = "tp"  # optional: the W3C traceparent its attempts' spans are children of


class State(StrEnum):
    """The fields of a subscription's state hash (Keys.state)."""

    STATE = "state"  # Enablement
    REASON = "reason"
    CHANGED_MS = "changedMs"
    BREAKER = "breaker"  # Breaker
    FAILURES = "failures"  # consecutive failures
    OPENS = "opens"  # breaker opens in a row
    OPEN_UNTIL = "openUntil"  # ms: the open breaker's cooldown
    PROBE_UNTIL = "probeUntil"  # ms: the half-open probe's lease
    FAILING_SINCE_MS = "failingSinceMs"  # the first failure since the last success
    LAST_ERROR = "lastError"
    LAST_ERROR_MS = "lastErrorMs"
    LAST_DELIVERED_MS = "lastDeliveredMs"
    TOKENS = "tokens"  # the max_per_second token bucket
    TOKENS_AT_MS = "tokensAtMs"


class LatencyField(StrEnum):
    """The latency histogram's (Keys.latency_histogram) fixed fields; the others are its
    buckets (app/store/latency.py's bucket_field)."""

    SUM_MS = "sumMs"  # the total latency of the deliveries counted


class Job(StrEnum):
    """The fields of a background job's hash (Keys.job): a replay of a time range
    (app/subscriptions/replay.py); replay_range.lua counts its progress."""

    STATE = "state"  # JobState
    SUBSCRIPTION = "subscription"
    SINCE_MS = "sinceMs"  # the range, [since, until)
    UNTIL_MS = "untilMs"
    TOTAL = "total"  # events received in the range when the job started (done, once it ends)
    DONE = "done"  # events looked at
    REPLAYED = "replayed"  # deliveries made
    SKIPPED = "skipped"  # matching events whose delivery still exists (pending or dead)
    ERROR = "error"
    HEARTBEAT_MS = "heartbeatMs"  # renewed while the process running it lives
    STARTED_MS = "startedMs"
    ENDED_MS = "endedMs"


class JobState(StrEnum):
    """Job.STATE's values."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Enablement(StrEnum):
    """State.STATE's values."""

    ENABLED = "enabled"
    DISABLED = "disabled"
    PAUSED = "paused"  # by an operator: deliveries queue, none is sent until resumed


class Breaker(StrEnum):
    """State.BREAKER's values."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class Outcome(StrEnum):
    """An attempt's outcome, as settle.lua records it."""

    DELIVERED = "delivered"
    RETRY = "retry"  # due again at its due time
    DEAD = "dead"  # dead-lettered
    GONE = "gone"  # 410: kept queued, the subscription disabled


class Counter(StrEnum):
    """The stats hash's counters: a subscription's are `stat_field(sub, counter)`; ACCEPTED and
    DUPLICATES are the gateway's, REJECTED a prefix (`rejected:<reason>`)."""

    ACCEPTED = "accepted"
    DUPLICATES = "duplicates"
    REJECTED = "rejected"
    DELIVERED = "delivered"
    RETRIED = "retried"
    DEAD = "dead"
    STALE = "stale"
    EXPIRED = "expired"  # pull: older than the retention, dropped
    BREAKER_OPENED = "breaker_opened"
    SINGLE_FIRE_SUPPRESSED = "single_fire_suppressed"
    FILTER_ERRORS = "filter_errors"
    ALERTS_SENT = "alerts_sent"  # an alert target's (stat_field(target, ...))
    ALERTS_FAILED = "alerts_failed"  # attempts that failed (retried)
    ALERTS_DROPPED = "alerts_dropped"  # given up after ALERT_GIVE_UP_S


def stat_field(owner: str, counter: Counter) -> str:
    """A counter's field in the stats hash: a subscription's, or `rejected:<reason>`."""
    return f"{owner}:{counter}"


# Owners a stat_field must not have (an alert target's id): their counters would read as the
# gateway's own (`rejected:<reason>`: an ingest rejection).
RESERVED_STAT_OWNERS = frozenset({Counter.REJECTED.value})


def rejected_field(reason: str) -> str:
    return f"{Counter.REJECTED}:{reason}"


# The tables lua_prelude gives the scripts: name -> the StrEnum behind it.
LUA_TABLES: dict[str, type[StrEnum]] = {
    "E": Entry,
    "D": Delivery,
    "S": State,
    "H": LatencyField,
    "ENABLEMENT": Enablement,
    "BREAKER": Breaker,
    "C": Counter,
    "OUTCOME": Outcome,
    "J": Job,
    "A": AlertEntry,
}


def lua_prelude(keys: Keys) -> str:
    """The Lua side of this module, prepended to every script: K (key builders, with this
    prefix's tag), the field and value tables, and `stat(owner, counter)`. Every table raises
    on a name it does not have, so a misspelt field fails the script instead of writing
    another field. Made once per prefix (every script of a store starts with it)."""
    return _prelude(keys.prefix)


@functools.cache
def _prelude(prefix: str) -> str:
    keys = Keys(prefix)
    lines = [
        "local function strict(name, t)",
        "    return setmetatable(t, {__index = function(_, k)",
        "        error('orderhook schema: ' .. name .. ' has no ' .. tostring(k), 2) end})",
        "end",
        f"local TAG = {lua_string(keys.tag)}",
        "local K = {}",
    ]
    for name, parts in families().items():
        lines.append(_lua_key(name, parts))
    lines.append("K = strict('K', K)")
    for table, enum in LUA_TABLES.items():
        pairs = ", ".join(f"{m.value.replace('-', '_')} = {lua_string(m.value)}" for m in enum)
        lines.append(f"local {table} = strict({lua_string(table)}, {{{pairs}}})")
    lines.append(
        "local function stat(owner, counter) return owner .. "
        f"{lua_string(stat_field('', Counter.DELIVERED).removesuffix(Counter.DELIVERED))}"
        " .. counter end"
    )
    return "\n".join(lines) + "\n"


def _lua_key(name: str, parts: Sequence[str]) -> str:
    """`K.ready = function(sub) return TAG .. ':s:' .. sub .. ':ready' end`; a key without
    parameters is a string, `K.stats`."""
    params = [p for i, p in enumerate(parts) if i % 2 == 1 and p != "TAG"]
    body = " .. ".join(p if i % 2 == 1 else lua_string(p) for i, p in enumerate(parts) if p)
    if not params:
        return f"K.{name} = {body}"
    return f"K.{name} = function({', '.join(params)}) return {body} end"


def lua_string(text: str) -> str:
    """A Lua string literal of `text`: bytes other than letters, digits and a few marks as
    decimal escapes (Lua 5.1 has no others that are safe for every byte)."""
    safe = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _:.-{}|")
    return "'" + "".join(chr(b) if b in safe else f"\\{b}" for b in text.encode()) + "'"

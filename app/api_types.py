"""The JSON bodies of the API as types: requests are decoded with them, `/openapi.json`'s schemas
are generated from them (app/openapi.py), so the two cannot differ.

`decode(body, Type)` is the one reader of a typed request body: a BadRequest naming the field and
saying what the route takes (`Type.usage`) for any body the type refuses. The answers' types
forbid unknown fields, so their generated schemas say `additionalProperties: false` and
tests/test_openapi.py (schemathesis) fails on an answer that carries anything undocumented.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from app.errors import BadRequest
from app.store.schema import Breaker, Enablement, JobState
from app.subscriptions.auth import AuthSpec
from app.subscriptions.spec import FromOrdersSpec, FromWorkflowSpec, SubscriptionSpec

REF_TEMPLATE = "#/components/schemas/{name}"

Count = Annotated[int, Meta(ge=0)]
UnixSeconds = Annotated[float | None, Meta(description="Unix time, seconds")]


class Error(Struct):
    """Every error the gateway answers (app/errors.py); some routes add fields."""

    error: Annotated[str, Meta(description="what is wrong")]


# ── requests ──────────────────────────────────────────────────────────────────────────────────


class Replay(Struct, forbid_unknown_fields=True):
    """`POST /admin/dlq/replay`: a subscription's dead letters, or entries by id (one of two)."""

    usage: ClassVar[str] = 'give either {"subscription": ID} or {"ids": [...]}'

    subscription: str | UnsetType = UNSET
    ids: Annotated[list[str], Meta(description="dead-letter entry ids")] | UnsetType = UNSET


# The request body: exactly one of the two fields (the handler says so when it is not).
ReplayBody = Annotated[
    Replay,
    Meta(extra_json_schema={"oneOf": [{"required": ["subscription"]}, {"required": ["ids"]}]}),
]


class JsonataTest(Struct):
    """`POST /api/orders/expressions/jsonata`: the expression and the order, as VTEX takes them."""

    usage: ClassVar[str] = (
        'give {"Expression": "<JSONata>", "Document": "<the order as a JSON string, as in VTEX>"}'
    )

    Expression: Annotated[str, Meta(min_length=1)]
    Document: Annotated[
        str,
        Meta(
            min_length=1,
            description="the order, as JSON text (400 when it is not)",
            extra_json_schema={"contentMediaType": "application/json"},
        ),
    ]


# ── answers ───────────────────────────────────────────────────────────────────────────────────


class Answer(Struct, rename="camel", forbid_unknown_fields=True):
    """An answer's type: camelCase names, nothing undocumented."""


class SubscriptionState(Answer):
    """A subscription's enablement, breaker and queues (app.store.queries.subscription_counts)."""

    id: str
    url: str | None
    state: Enablement
    reason: str | None
    breaker: Breaker
    consecutive_failures: Count
    breaker_open_until: UnixSeconds
    next_probe_at: Annotated[
        float | None,
        Meta(
            description="Unix time, seconds: when the breaker lets its next probe go (open: its "
            "cooldown's end; half-open: the probe in flight's lease end); null when closed"
        ),
    ]
    queued: Count
    in_flight: Count
    dead_letters: Count
    held: Annotated[
        int, Meta(ge=0, description="per-order: waiting for their order's turn or reorder window")
    ]


# ── subscriptions managed through the API (app/ops/subscriptions.py) ─────────────────────────

MASK = "***"
MAX_GRACE_S = 30 * 24 * 3600
DEFAULT_GRACE_S = 24 * 3600
SPEC_FIELDS = msgspec.structs.fields(SubscriptionSpec)


class NewSubscription(
    SubscriptionSpec, frozen=True, forbid_unknown_fields=True, omit_defaults=True
):
    """`POST /admin/subscriptions`: a SubscriptionSpec (the config file's table, as JSON), and
    perhaps `backfill_since`: the retained events received since then that match it are
    delivered to it at once, as a replay job (the answer's `backfill.job`)."""

    backfill_since: Annotated[str, Meta(description="RFC 3339")] | None = None

    def spec(self) -> SubscriptionSpec:
        return SubscriptionSpec(**{f.name: getattr(self, f.name) for f in SPEC_FIELDS})


# `PATCH /admin/subscriptions/{id}`: any of the spec's fields; null resets one to its default.
SubscriptionPatch = msgspec.defstruct(
    "SubscriptionPatch",
    [(field.name, field.type | None | UnsetType, UNSET) for field in SPEC_FIELDS],
    forbid_unknown_fields=True,
    namespace={
        "__doc__": "`PATCH /admin/subscriptions/{id}`: the fields to change, as in the config "
        'file; null resets a field to its default; `"secret"` or `"token"` replace the stored '
        'ones (`"***"`: unchanged)',
        "usage": "give the fields to change, as in the config file (see /openapi.json)",
    },
)


class RotateSecret(Struct, forbid_unknown_fields=True):
    """`POST /admin/subscriptions/{id}/rotate-secret`: how long the current secrets still sign."""

    usage: ClassVar[str] = f'give {{"grace_s": 0 to {MAX_GRACE_S}}} (or no body)'

    grace_s: Annotated[
        float,
        Meta(ge=0, le=MAX_GRACE_S, description="seconds the current secrets keep signing"),
    ] = float(DEFAULT_GRACE_S)


def _view_name(name: str) -> str | None:
    """A view's field: the spec's by its TOML name (None: as it is), the rest in camelCase."""
    if name in SubscriptionSpec.__struct_fields__:
        return None
    first, *rest = name.split("_")
    return first + "".join(word.title() for word in rest)


class SubscriptionView(SubscriptionState, rename=_view_name):
    """A subscription: its spec (the config file's names; secrets `"***"`, the URL without its
    credentials), where it came from, its version, and its live state."""

    origin: Literal["config", "api"]
    version: Annotated[int, Meta(ge=1, description="raised by every change")]
    created_at: UnixSeconds
    updated_at: UnixSeconds
    last_error: str | None
    last_error_at: UnixSeconds
    last_delivered_at: UnixSeconds
    mode: Literal["push", "pull"]
    secret: Annotated[
        str | None,
        Meta(description='"***" (the new secret itself once, in the answer to its creation)'),
    ]
    token: Annotated[Literal["***"] | None, Meta(description="a pull subscription's: masked")]
    filter: FromWorkflowSpec | FromOrdersSpec | None
    transform: str | None
    retry_schedule: list[float] | None
    timeout: float
    accounts: list[str] | None
    max_in_flight: int
    max_per_second: float
    breaker_threshold: int
    breaker_cooldown: float
    breaker_cooldown_max: float
    disable_after: float
    ordering: Literal["none", "per-order"]
    reorder_window: float
    drop_stale: bool
    visibility_timeout: float
    retention: float
    headers: Annotated[
        dict[str, Literal["***"]] | None, Meta(description="static headers: values masked")
    ]
    auth: Annotated[AuthSpec | None, Meta(description="outbound auth: its secret masked")]


class Subscriptions(Answer):
    """`GET /admin/subscriptions`: every subscription."""

    subscriptions: list[SubscriptionView]


class Deleted(Struct, forbid_unknown_fields=True):
    """A deleted subscription, and how many of its deliveries (waiting or dead) were dropped."""

    deleted: str
    dropped: Count


class StateChanged(Struct, forbid_unknown_fields=True):
    """A paused or resumed subscription."""

    id: str
    state: Literal["paused", "enabled"]


class Rotated(Struct, forbid_unknown_fields=True):
    """The new signing secret (shown this once), and when the ones before stop signing."""

    secret: str
    grace_until: Annotated[str, Meta(description="RFC 3339")]


class AuditEntry(Struct, forbid_unknown_fields=True):
    """One change: what, to which subscription, by whom, and its fields' old and new values
    (a secret only as `"changed"`)."""

    at: Annotated[str, Meta(description="RFC 3339")]
    action: str
    subscription: str
    by: Annotated[str, Meta(description="api, config, dashboard, cli")]
    changes: dict[str, Any]
    role: Literal["admin"] | UnsetType = UNSET


class AuditPage(Struct, forbid_unknown_fields=True):
    """`GET /admin/audit`: newest first; `next` is the offset of the next page."""

    items: list[AuditEntry]
    next: int | None


# ── (end of subscriptions) ────────────────────────────────────────────────────────────────────


class Latency(Answer):
    """Delivery latency percentiles (ms) over the last 5 minutes; null when none."""

    count: Count
    p50_ms: int | None
    p95_ms: int | None
    p99_ms: int | None


class SubscriptionStats(SubscriptionState):
    """A subscription's state and its delivery figures (app.ops.stats.collect)."""

    delivered: Count
    retried: Count
    dead_lettered: Count
    stale: Count
    filter_errors: Count
    single_fire_suppressed: Count
    oldest_undelivered_age_s: float | None
    latency: Latency
    last_error: str | None
    last_error_at: UnixSeconds
    last_delivered_at: UnixSeconds


class IngestTotals(Answer):
    received: int
    accepted: int
    duplicates: int
    rejected: Annotated[
        dict[str, int], Meta(description="by reason: invalid, unauthorized, too_large, ...")
    ]


class Stats(Answer):
    """`GET /ops/stats`: ingest and delivery figures."""

    ingest: IngestTotals
    ingest_per_minute: list[Annotated[tuple[int, int], Meta(description="[Unix minute, accepted]")]]
    subscriptions: list[SubscriptionStats]


class DeadLetter(Answer):
    """A dead-lettered delivery (app.store.queries._delivery_view)."""

    id: Annotated[str, Meta(description="the entry id, for replay and delete")]
    event_id: str
    order_id: str | None
    subscription: str
    attempts: Count
    last_status: int | None
    last_error: str | None
    dead_at: UnixSeconds
    overtaken_by: Annotated[
        list[str],
        Meta(
            description='ordering = "per-order": the event ids of this order delivered after '
            "this one was dead-lettered (at most 100)"
        ),
    ]


class DlqPage(Answer):
    """`GET /admin/dlq`: a page; `next` is the offset of the next page."""

    items: list[DeadLetter]
    total: Count
    next: int | None


MAX_HANDLES = 1000  # handles in one feed commit


class Commit(Struct):
    """`POST /feed/{subscription}/commit`: the handles of taken items to remove."""

    usage: ClassVar[str] = 'give {"handles": ["...", ...]}'

    handles: Annotated[
        list[str],
        Meta(max_length=MAX_HANDLES, description="handles from GET /feed/{subscription}"),
    ]


class Committed(Answer):
    """How many of the handles' items were still held, and are now removed."""

    committed: Count


class Replayed(Answer):
    """How many dead letters were queued again."""

    replayed: Count


class RetryNow(Answer):
    """What Retry now did: the breaker closed, waiting deliveries made due."""

    subscription: str
    breaker: Literal["closed"]
    breaker_was: Breaker
    made_due: Annotated[
        int,
        Meta(ge=0, description="waiting deliveries made due now (held per-order ones stay held)"),
    ]
    state: Annotated[
        Enablement, Meta(description="a disabled subscription stays disabled: a replay enables it")
    ]


# What stops an expression (app.filters, app.sandbox): a 422's `limit`.
JSONATA_LIMITS = ("expression length", "time", "call depth", "sequence length", "memory")


class JsonataFailed(Error):
    """400 from the JSONata tester: a bad body, or an expression that does not compile or fails
    on the document (`message` and `position`: the compiler's)."""

    message: str | UnsetType = UNSET
    position: int | None | UnsetType = UNSET
    limit: None | UnsetType = UNSET


class JsonataStopped(Error):
    """422 from the JSONata tester: a limit stopped the expression; `limit` says which."""

    limit: Annotated[str, Meta(extra_json_schema={"enum": list(JSONATA_LIMITS)})]
    message: str | UnsetType = UNSET
    position: int | None | UnsetType = UNSET


# ── replay of a time range (app/ops/jobs.py) ──────────────────────────────────────────────────

RFC3339 = Meta(extra_json_schema={"format": "date-time"})


class ReplayRange(Struct, forbid_unknown_fields=True):
    """`POST /admin/subscriptions/{id}/replay`: the events received in [since, until) again."""

    usage: ClassVar[str] = (
        'give {"since": "<RFC 3339 date-time>", "until": "<RFC 3339 date-time, default now>"}'
    )

    since: Annotated[str, RFC3339, Meta(description="the range's start (included)")]
    until: (
        Annotated[str, RFC3339, Meta(description="the range's end (excluded); default now")]
        | UnsetType
    ) = UNSET


class JobStarted(Answer):
    """202: the replay runs in the background; `GET /admin/jobs/{job}` says how it goes."""

    job: str


class JobStatus(Answer):
    """A background job (a replay of a time range), as it goes. A job whose process stopped
    reads as failed."""

    state: JobState
    subscription: str
    since: str
    until: str
    total: Annotated[int, Meta(ge=0, description="events received in the range")]
    done: Annotated[int, Meta(ge=0, description="events looked at so far")]
    replayed: Annotated[int, Meta(ge=0, description="deliveries made again")]
    skipped: Annotated[
        int, Meta(ge=0, description="matching events whose delivery is still pending or dead")
    ]
    error: str | UnsetType = UNSET


# ── decoding ──────────────────────────────────────────────────────────────────────────────────

T = TypeVar("T", bound=Struct)
_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `(.*)`")


def decode(body: bytes, kind: type[T]) -> T:
    """`body` as a `kind`; BadRequest naming the field it refuses and saying what it takes."""
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"{_said(exc)}: {_usage(kind)}") from exc
    except msgspec.DecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from exc


def _said(exc: msgspec.ValidationError) -> str:
    """msgspec's message (it names the field: `$.ids[0]`), lowercased; an unknown field as the
    gateway has always said it (`unknown field 'x'`)."""
    text = str(exc)
    unknown = _UNKNOWN_FIELD.fullmatch(text)
    return f"unknown field {unknown[1]!a}" if unknown else text[:1].lower() + text[1:]


def _usage(kind: type[Struct]) -> str:
    usage: str = getattr(kind, "usage", "see /openapi.json")
    return usage

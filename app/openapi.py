"""`GET /openapi.json`: an OpenAPI 3.1 description of every endpoint the gateway serves.

The schemas of the typed bodies (app/api_types.py: the requests the handlers decode with them,
the answers built from them) are generated from those types by msgspec, so they cannot differ.
The rest is written out here: the paths and their operations, and the bodies still read by hand
(the hook's notification, parsed by app.events to give VTEX's own error texts; the feed's
commit). tests/test_openapi.py keeps it honest: every route the app serves must be described here
and nothing else, every typed body is the generated schema of its type, and schemathesis checks
the live gateway's answers against these schemas.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from app import __version__
from app.api_types import (
    MAX_GRACE_S,
    REF_TEMPLATE,
    AuditPage,
    Commit,
    Committed,
    Deleted,
    DlqPage,
    Error,
    JobStarted,
    JobStatus,
    JsonataFailed,
    JsonataStopped,
    JsonataTest,
    NewSubscription,
    ReplayBody,
    Replayed,
    ReplayRange,
    RetryNow,
    Rotated,
    RotateSecret,
    StateChanged,
    Stats,
    SubscriptionPatch,
    Subscriptions,
    SubscriptionView,
)
from app.config import Settings
from app.events import (
    ACCOUNT_LABEL,
    MAX_BODY_DEPTH,
    MAX_ORDER_ID_CHARS,
    MAX_SAFE_NUMBER,
    ORDER_ID_REFUSED_CHARS,
)
from app.http import json_response
from app.ops.admin import MAX_OFFSET, MAX_PAGE
from app.ops.forms import MAX_FIELD_CHARS, MAX_FORM_FIELDS
from app.ops.routes import MAX_DLQ_PAGE
from app.ops.subscriptions import MAX_AUDIT_OFFSET, MAX_AUDIT_PAGE
from app.pull import MAX_LOT
from app.store.schema import ALERTS_RESOLVED_KEPT

Schema = dict[str, Any]

NULLABLE_TEXT: Schema = {"type": ["string", "null"]}

# The patterns below are read by ECMA-262 (JSON Schema) and Python's `re` alike.
_YEAR = r"(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_DAY = (
    r"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"
    r"|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
)
_HOUR_MINUTE = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]"
_TIME = rf"[Tt]{_HOUR_MINUTE}:[0-5][0-9](?:\.[0-9]+)?(?:[Zz]|[+-]{_HOUR_MINUTE})"
CHANGE_TIME: Schema = {
    "type": ["string", "null"],
    "pattern": f"^(?:{_YEAR}-{_DAY}|{_LEAP_YEAR}-02-29){_TIME}$",
    "description": "an RFC 3339 date-time (app.events.iso_ticks), at most 24 h ahead of the "
    "gateway's clock (a rule of time, not of form: the pattern cannot say it)",
}
# I-JSON (RFC 7493): every number anywhere in a notification within ±(2^53 - 1), as ingest checks
# (app.events._check_numbers); nested at most MAX_BODY_DEPTH levels, which no schema here counts.
I_JSON: Schema = {
    "description": f"any JSON value; numbers within ±{MAX_SAFE_NUMBER}, nesting at most "
    f"{MAX_BODY_DEPTH} levels",
    "minimum": -MAX_SAFE_NUMBER,
    "maximum": MAX_SAFE_NUMBER,
    "items": {"$ref": "#/components/schemas/IJson"},
    "additionalProperties": {"$ref": "#/components/schemas/IJson"},
}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error(description: str) -> Schema:
    return json_body(ref("Error"), description)


UNAVAILABLE: Schema = {
    **error("Redis does not answer in time, is out of memory or may evict events; try again later"),
    "headers": {"Retry-After": {"schema": {"type": "string", "pattern": r"^\d+$"}}},
}

THROTTLED: Schema = {
    **error("too many failed sign-ins from this address, or from all of them; try again later"),
    "headers": {"Retry-After": {"schema": {"type": "string", "pattern": r"^\d+$"}}},
}
CROSS_ORIGIN = error("from another origin, or signed in by cookie without an Origin header")
TOO_LARGE = error("the body is over this route's limit (the error says which)")

BEARER_ERRORS: dict[str, Schema] = {
    "401": error("missing or invalid token"),
    "403": error("this endpoint is disabled (no token configured) or needs the admin token"),
    "503": UNAVAILABLE,
}

# Every typed body, request or answer; their components are generated (with the types they use).
TYPED: tuple[Any, ...] = (Error, ReplayBody, JsonataTest, JsonataFailed, JsonataStopped)
TYPED += (Subscriptions, DlqPage, Replayed, RetryNow, Stats, Commit, Committed)
TYPED += (ReplayRange, JobStarted, JobStatus)  # background jobs (app/ops/jobs.py)
TYPED += (NewSubscription, SubscriptionPatch, SubscriptionView, RotateSecret)
TYPED += (Deleted, StateChanged, Rotated, AuditPage)


def typed(kind: Any) -> Schema:
    """The schema of `kind` (a reference to its component), as msgspec generates it."""
    (schema,), _ = msgspec.json.schema_components((kind,), ref_template=REF_TEMPLATE)
    return schema


LITERAL_SCHEMAS: dict[str, Schema] = {
    "IJson": I_JSON,
    "Notification": {
        "description": "VTEX's order hook notification (extra fields are kept as they are)",
        "type": "object",
        "required": ["OrderId", "Origin"],
        "properties": {
            "Domain": NULLABLE_TEXT,
            "OrderId": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_ORDER_ID_CHARS,
                "pattern": f"^(?!\\.\\.?$)[^{ORDER_ID_REFUSED_CHARS}]+$",
                "description": "one path segment: no separators, `%`, whitespace, control or "
                "format characters; not `.` or `..`",
            },
            "State": NULLABLE_TEXT,
            "LastState": NULLABLE_TEXT,
            "LastChange": CHANGE_TIME,
            "CurrentChange": CHANGE_TIME,
            "Origin": {
                "type": "object",
                "required": ["Account"],
                "properties": {
                    "Account": {
                        "type": "string",
                        "pattern": f"^{ACCOUNT_LABEL}$",
                        "description": "a VTEX account name: a host name label",
                    },
                    "Key": NULLABLE_TEXT,
                },
                "additionalProperties": ref("IJson"),
            },
        },
        "additionalProperties": ref("IJson"),
    },
    "Ping": {
        "description": "sent by VTEX when a hook is saved",
        "type": "object",
        "required": ["hookConfig"],
        "properties": {"hookConfig": {"const": "ping"}},
        "additionalProperties": ref("IJson"),
    },
    "Event": {
        "description": "an accepted notification as the gateway keeps it",
        "type": "object",
        "required": ["id", "account", "orderId", "receivedAt", "raw"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "account": {"type": "string"},
            "domain": NULLABLE_TEXT,
            "orderId": {"type": "string"},
            "state": NULLABLE_TEXT,
            "lastState": NULLABLE_TEXT,
            "lastChange": NULLABLE_TEXT,
            "currentChange": NULLABLE_TEXT,
            "receivedAt": {"type": "string", "format": "date-time"},
            "raw": {"type": "object", "description": "the notification as received"},
        },
    },
    "Attempt": {
        "description": "one delivery attempt, as the delivery log records it",
        "type": "object",
        "required": ["at", "subscription", "eventId", "outcome"],
        "properties": {
            "at": {"type": "string", "format": "date-time"},
            "subscription": {"type": "string"},
            "deliveryId": {"type": "string"},
            "eventId": {"type": "string"},
            "orderId": {"type": "string"},
            "attempt": {"type": "integer", "minimum": 0, "description": "0: not attempted"},
            "outcome": {"enum": ["delivered", "retry", "dead", "gone", "stale"]},
            "status": {"type": ["integer", "null"]},
            "error": NULLABLE_TEXT,
            "durationMs": {"type": "number"},
            "response": {"type": "string", "description": "the head of the response body"},
        },
    },
    "FeedItem": {
        "description": "a VTEX Feed v3 item, plus the CloudEvent a push would have carried",
        "type": "object",
        "required": ["eventId", "handle", "orderId", "event"],
        "properties": {
            "eventId": {"type": "string"},
            "handle": {"type": "string", "description": "give it back to commit the item"},
            "domain": NULLABLE_TEXT,
            "state": NULLABLE_TEXT,
            "lastState": NULLABLE_TEXT,
            "orderId": {"type": "string"},
            "lastChange": NULLABLE_TEXT,
            "currentChange": NULLABLE_TEXT,
            "event": {"type": "object", "required": ["specversion", "id", "source", "type"]},
        },
    },
}

SCHEMAS: dict[str, Schema] = (
    LITERAL_SCHEMAS | (msgspec.json.schema_components(TYPED, ref_template=REF_TEMPLATE)[1])
)


def operation(
    summary: str,
    responses: dict[str, Schema],
    *,
    security: str | None = None,
    parameters: list[Schema] | None = None,
    body: Schema | None = None,
) -> Schema:
    op: Schema = {"summary": summary, "responses": responses}
    if security is not None:
        op["security"] = [{security: []}]
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
        # every body must be in within [ingest] body_timeout_s (app/connections.py)
        responses.setdefault("408", error("the body did not arrive in time"))
    return op


def param(name: str, where: str, schema: Schema, required: bool = False) -> Schema:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema}


def form(
    properties: dict[str, Schema], required: tuple[str, ...] = (), exact: bool = False
) -> Schema:
    """A dashboard form: text fields, at most MAX_FORM_FIELDS of them (app.ops.forms.read_form);
    `exact`: the listed fields only (app.ops.forms.form_fields refuses any other)."""
    schema = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False if exact else {"type": "string"},
        "maxProperties": MAX_FORM_FIELDS,
        "required": list(required),
    }
    return {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": schema}}}


HTML = {"content": {"text/html": {"schema": {"type": "string"}}}}
SEE_OTHER = {"description": "back to the dashboard", "headers": {"Location": {"schema": {}}}}


def paths() -> dict[str, Schema]:
    """Every endpoint; each but the hook may also answer as the guards do (app.ops.guards)."""
    described = _endpoints() | _operator_actions() | _subscriptions() | _jobs()
    described |= _subscription_pages() | _alerts()
    for path, item in described.items():
        for method, op in item.items():
            if path != "/hooks/vtex":
                guarded = {"429": THROTTLED, "503": UNAVAILABLE}
                if method in ("post", "put", "patch", "delete"):
                    guarded["403"] = CROSS_ORIGIN
                op["responses"] = guarded | op["responses"]
    return described


SUBSCRIPTION_ID: Schema = {"type": "string", "pattern": "^[a-z0-9-]{1,64}$"}
DLQ_PAGE: Schema = {"type": "integer", "minimum": 1, "maximum": MAX_DLQ_PAGE}
DLQ_PAGE_PARAM = param("page", "query", DLQ_PAGE | {"description": "the dead letters' page"})


def _dashboard_form(summary: str, body: Schema, extra: dict[str, Schema]) -> Schema:
    """A dashboard action for the admin role: a form, then back to the dashboard."""
    return {
        "post": operation(
            summary,
            {
                "303": SEE_OTHER,
                "400": error("a field missing, unknown, too long or out of range"),
                "413": error("the form is too large"),
                **BEARER_ERRORS,
                **extra,
            },
            security="adminToken",
            body=body,
        )
    }


def _operator_actions() -> dict[str, Schema]:
    """The breaker's Retry now and single dead letters, as API and dashboard actions."""
    entry = {"type": "string", "minLength": 1, "maxLength": MAX_FIELD_CHARS}
    dlq_form = form({"id": entry, "page": DLQ_PAGE}, ("id",), exact=True)
    return {
        "/admin/subscriptions/{id}/retry-now": {
            "post": operation(
                "Close the subscription's circuit breaker and make its waiting deliveries due now",
                {
                    "200": json_body(typed(RetryNow), "what it did"),
                    "404": error("no such subscription"),
                    "413": TOO_LARGE,
                    **BEARER_ERRORS,
                },
                security="adminToken",
                parameters=[param("id", "path", SUBSCRIPTION_ID)],
            )
        },
        "/ops/retry-now": _dashboard_form(
            "Retry now from the dashboard",
            form({"subscription": {"type": "string", "minLength": 1}}, ("subscription",)),
            {"404": error("no such subscription")},
        ),
        "/ops/dlq/replay": _dashboard_form(
            "Replay one dead letter from the dashboard (one already gone: nothing to do)",
            dlq_form,
            {},
        ),
        "/ops/dlq/delete": _dashboard_form(
            "Delete one dead letter from the dashboard (one already gone: nothing to do)",
            dlq_form,
            {},
        ),
    }


def _subscription_pages() -> dict[str, Schema]:
    """A subscription's dashboard page, its forms, and a replay job's page
    (app/ops/subscription_routes.py)."""
    one, text = "/ops/subscriptions/{id}", {"type": "string", "maxLength": MAX_FIELD_CHARS}
    page: Schema = {
        "200": {"description": "the page", **HTML},
        "401": {"description": "the login form", **HTML},
        "403": error("no admin or ops token is configured"),
    }
    actions = {
        "pause": ("Pause the subscription from the dashboard", form({}, exact=True), {}),
        "resume": ("Resume the subscription from the dashboard", form({}, exact=True), {}),
        "retry-now": ("Retry now from the subscription's page", form({}, exact=True), {}),
        "rotate-secret": (
            "Rotate its signing secret from the dashboard: the new one shown this once",
            form({"grace_s": text}, exact=True),
            {
                "200": {"description": "the new secret", **HTML},
                "409": NO_SECRET_KEY,
                "400": error("`grace_s` out of range, or a pull subscription"),
            },
        ),
        "replay": (
            "Replay a time range from the dashboard (a background job), then its page",
            form({"since": text, "until": text}, ("since",), exact=True),
            {"429": error("this process runs as many jobs as it may; try again later")},
        ),
    }
    described = {
        f"{one}/{name}": _dashboard_form(summary, body, {"404": NO_SUBSCRIPTION, **extra})
        for name, (summary, body, extra) in actions.items()
    }
    for item in described.values():
        item["post"]["parameters"] = [param("id", "path", SUBSCRIPTION_ID)]
    return described | {
        one: {
            "get": operation(
                "A subscription's page: its state, config (secrets masked), version, origin "
                "and recent changes (HTML)",
                {**page, "404": NO_SUBSCRIPTION},
                parameters=[param("id", "path", SUBSCRIPTION_ID)],
            )
        },
        "/ops/jobs/{id}": {
            "get": operation(
                "A replay job's progress (HTML), reloading itself while it runs",
                {**page, "404": error("no such job (or it ended over a day ago)")},
                parameters=[param("id", "path", {"type": "string"})],
            )
        },
    }


def _jobs() -> dict[str, Schema]:
    """Background jobs: the replay of a subscription's time range (app/ops/jobs.py)."""
    return {
        "/admin/subscriptions/{id}/replay": {
            "post": operation(
                "Deliver again every retained event received in a time range that matches the "
                "subscription's filter now (a background job)",
                {
                    "202": json_body(typed(JobStarted), "the job started"),
                    "400": error(
                        "not RFC 3339 date-times, `since` not before `until`, a range longer "
                        "than the delivery log's retention, or another field"
                    ),
                    "404": error("no such subscription"),
                    "413": TOO_LARGE,
                    "429": error("this process runs as many jobs as it may; try again later"),
                    **BEARER_ERRORS,
                },
                security="adminToken",
                parameters=[param("id", "path", SUBSCRIPTION_ID)],
                body=json_body(typed(ReplayRange), "the time range") | {"required": True},
            )
        },
        "/admin/jobs/{id}": {
            "get": operation(
                "A background job's progress (a replay); kept a day after it ends",
                {
                    "200": json_body(typed(JobStatus), "the job"),
                    "404": error("no such job (or it ended over a day ago)"),
                    **BEARER_ERRORS,
                },
                security="adminToken",
                parameters=[param("id", "path", {"type": "string"})],
            )
        },
    }


def _endpoints() -> dict[str, Schema]:
    admin, ops, feed = "adminToken", "adminToken", "feedToken"
    del ops  # the ops token is accepted where the admin token is; one scheme describes both
    dlq_id = param("id", "path", {"type": "string"})
    return {
        "/hooks/vtex": {
            "post": operation(
                "Receive a VTEX order hook notification (or VTEX's ping)",
                {
                    "200": json_body(
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {
                                "status": {"enum": ["accepted", "duplicate", "pong"]},
                                "id": {"type": "string", "format": "uuid"},
                            },
                        },
                        "durable in Redis (or a duplicate of an event that is)",
                    ),
                    "400": error("not JSON, not an object, or a missing or mistyped field"),
                    "401": error("no source's auth header matches, or the account is not allowed"),
                    "408": error("the body did not arrive in time"),
                    "413": error("the body is over the limit"),
                    "415": error("the content type is not JSON"),
                    "503": UNAVAILABLE,
                },
                security="hookAuth",
                body={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"anyOf": [ref("Ping"), ref("Notification")]}
                        }
                    },
                },
            )
        },
        "/healthz": {
            "get": operation(
                "The process is up",
                {"200": json_body({"type": "object", "required": ["status"]}, "up")},
            )
        },
        "/readyz": {
            "get": operation(
                "Redis answers, runs maxmemory-policy noeviction and takes writes: the gateway "
                "can accept events",
                {
                    "200": json_body({"type": "object", "required": ["status"]}, "ready"),
                    "503": error(
                        "Redis does not answer, may evict events (its maxmemory-policy is not "
                        "noeviction) or is out of memory"
                    ),
                },
            )
        },
        "/openapi.json": {
            "get": operation(
                "This description",
                {"200": json_body({"type": "object", "required": ["openapi"]}, "OpenAPI 3.1")},
            )
        },
        "/admin/dlq": {
            "get": operation(
                "Dead-lettered deliveries, newest first",
                {
                    "200": json_body(
                        typed(DlqPage), "a page; `next` is the offset of the next page"
                    ),
                    "400": error("offset or limit out of range"),
                    "404": error("no such subscription"),
                    **BEARER_ERRORS,
                },
                security=admin,
                parameters=[
                    param("subscription", "query", {"type": "string"}),
                    param(
                        "offset", "query", {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}
                    ),
                    param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}),
                ],
            )
        },
        "/admin/dlq/replay": {
            "post": operation(
                "Queue dead-lettered deliveries again, by subscription or by entry ids",
                {
                    "200": json_body(typed(Replayed), "how many were queued again"),
                    "400": error("neither or both of `subscription` and `ids`, or another field"),
                    "404": error("no such subscription"),
                    "413": TOO_LARGE,
                    **BEARER_ERRORS,
                },
                security=admin,
                body=json_body(typed(ReplayBody), "what to replay") | {"required": True},
            )
        },
        "/admin/dlq/{id}": {
            "delete": operation(
                "Drop a dead-letter entry",
                {
                    "200": json_body(
                        {"type": "object", "required": ["deleted"]}, "the entry is gone"
                    ),
                    "404": error("no such entry"),
                    "413": TOO_LARGE,
                    **BEARER_ERRORS,
                },
                security=admin,
                parameters=[dlq_id],
            )
        },
        "/admin/events": {
            "get": operation(
                "An order's events still in the delivery log, oldest first",
                {
                    "200": json_body(
                        {
                            "type": "object",
                            "required": ["orderId", "events"],
                            "properties": {
                                "orderId": {"type": "string"},
                                "events": {"type": "array", "items": ref("Event")},
                            },
                        },
                        "the order's history",
                    ),
                    "400": error("orderId is missing"),
                    **BEARER_ERRORS,
                },
                security=admin,
                parameters=[
                    param("orderId", "query", {"type": "string", "minLength": 1}, required=True)
                ],
            )
        },
        "/admin/events/{id}": {
            "get": operation(
                "One event and its attempts, by subscription",
                {
                    "200": json_body(
                        {
                            "type": "object",
                            "required": ["event", "attempts"],
                            "properties": {
                                "event": ref("Event"),
                                "attempts": {
                                    "type": "object",
                                    "additionalProperties": {
                                        "type": "array",
                                        "items": ref("Attempt"),
                                    },
                                },
                            },
                        },
                        "the event as routed",
                    ),
                    "404": error("not in the delivery log"),
                    **BEARER_ERRORS,
                },
                security=admin,
                parameters=[param("id", "path", {"type": "string"})],
            )
        },
        "/ops": {
            "get": operation(
                "The ops dashboard (HTML); a login form without a token",
                {
                    "200": {"description": "the dashboard", **HTML},
                    "401": {"description": "the login form", **HTML},
                    "400": error("`page` is not an integer in range"),
                    "403": error("no admin or ops token is configured"),
                    "503": UNAVAILABLE,
                },
                parameters=[param("orderId", "query", {"type": "string"}), DLQ_PAGE_PARAM],
            )
        },
        "/ops/login": {
            "post": operation(
                "Sign in to the dashboard with a token (sets a session cookie)",
                {
                    "303": SEE_OTHER,
                    "400": error("the form has too many fields"),
                    "401": {"description": "the login form, with an error", **HTML},
                    "413": error("the form is too large"),
                },
                body=form({"token": {"type": "string"}}),
            )
        },
        "/ops/logout": {
            "post": operation("Sign out of the dashboard", {"303": SEE_OTHER, "413": TOO_LARGE}),
        },
        "/ops/replay": {
            "post": operation(
                "Replay a subscription's dead letters from the dashboard",
                {
                    "303": SEE_OTHER,
                    "400": error("no `subscription` field, or the form has too many fields"),
                    "404": error("no such subscription"),
                    "413": error("the form is too large"),
                    **BEARER_ERRORS,
                },
                security=admin,
                body=form({"subscription": {"type": "string", "minLength": 1}}, ("subscription",)),
            )
        },
        "/ops/stats": {
            "get": operation(
                "Ingest and delivery figures (JSON)",
                {"200": json_body(ref("Stats"), "the figures"), **BEARER_ERRORS},
                security=admin,
            )
        },
        "/metrics": {
            "get": operation(
                "Prometheus metrics",
                {
                    "200": {
                        "description": "text exposition format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **BEARER_ERRORS,
                },
                security=admin,
            )
        },
        "/feed/{subscription}": {
            "get": operation(
                "Take up to `maxlot` items of a pull subscription (VTEX Feed v3 style)",
                {
                    "200": json_body({"type": "array", "items": ref("FeedItem")}, "the items"),
                    "400": error("maxlot out of range"),
                    "401": error("missing or invalid bearer token for this subscription"),
                    "404": error("no such pull subscription"),
                    "503": UNAVAILABLE,
                },
                security=feed,
                parameters=[
                    param("subscription", "path", {"type": "string"}),
                    param("maxlot", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LOT}),
                ],
            )
        },
        "/feed/{subscription}/commit": {
            "post": operation(
                "Commit taken items by their handles",
                {
                    "200": json_body(typed(Committed), "how many were held and are now removed"),
                    "400": error("not {handles: [...]}, or too many handles"),
                    "401": error("missing or invalid bearer token for this subscription"),
                    "404": error("no such pull subscription"),
                    "413": TOO_LARGE,
                    "503": UNAVAILABLE,
                },
                security=feed,
                parameters=[param("subscription", "path", {"type": "string"})],
                body=json_body(typed(Commit), "the handles to commit") | {"required": True},
            )
        },
        "/api/orders/expressions/jsonata": {
            "post": operation(
                "Test a JSONata expression on an order, as VTEX's endpoint of the same path",
                {
                    "200": json_body({"type": "boolean"}, "true when the expression yields true"),
                    "400": json_body(
                        typed(JsonataFailed),
                        "bad body, or the expression does not compile or fails",
                    ),
                    "413": TOO_LARGE,
                    "422": json_body(
                        typed(JsonataStopped), "a limit stopped the expression: `limit` says which"
                    ),
                    **BEARER_ERRORS,
                    "503": {
                        **UNAVAILABLE,
                        **error("every JSONata worker stayed busy; try again later"),
                    },
                },
                security=admin,
                body=json_body(typed(JsonataTest), "the expression and the order")
                | {"required": True},
            )
        },
    }


# ── subscriptions managed through the API (app/ops/subscriptions.py) ─────────────────────────

REFUSED_SPEC = error(
    "the body is not JSON or names a field it should not, or the config loader would refuse "
    "the subscription: the error names the field (a JSONata compile error with its position, "
    "a URL the SSRF guard refuses)"
)
NO_SUBSCRIPTION = error("no such subscription")
NO_SECRET_KEY = error(
    "a secret to store, and ORDERHOOK_SECRET_KEY is not set (the error says how to make one)"
)


def _admin_operation(summary: str, responses: dict[str, Schema], **options: Any) -> Schema:
    """An operation on one subscription (`{id}` in the path), for the admin token."""
    answers = {**responses, "404": NO_SUBSCRIPTION, **BEARER_ERRORS}
    if options.get("body") is not None:
        answers.setdefault("413", TOO_LARGE)
    parameters = [param("id", "path", SUBSCRIPTION_ID)]
    return operation(summary, answers, security="adminToken", parameters=parameters, **options)


def _subscriptions() -> dict[str, Schema]:
    one = "/admin/subscriptions/{id}"
    changed = json_body(typed(SubscriptionView), "the subscription as it is now")
    state = json_body(typed(StateChanged), "its state now")
    return {
        "/admin/subscriptions": {
            "get": operation(
                "Every subscription: its spec (secrets masked), origin, version and live state",
                {"200": json_body(typed(Subscriptions), "every subscription"), **BEARER_ERRORS},
                security="adminToken",
            ),
            "post": operation(
                "Create a subscription (the config file's fields, as JSON); without `secret`, "
                "one is made and shown in this answer only",
                {
                    "201": json_body(typed(SubscriptionView), "created (origin api, version 1)"),
                    "400": REFUSED_SPEC,
                    "409": error("the id is taken, or ORDERHOOK_SECRET_KEY is not set"),
                    "413": TOO_LARGE,
                    **BEARER_ERRORS,
                },
                security="adminToken",
                body=json_body(typed(NewSubscription), "the subscription") | {"required": True},
            ),
        },
        one: {
            "get": _admin_operation("A subscription", {"200": changed}),
            "patch": _admin_operation(
                "Change some of a subscription's fields (null: the default again); the next "
                "delivery uses them",
                {"200": changed, "400": REFUSED_SPEC, "409": NO_SECRET_KEY},
                body=json_body(typed(SubscriptionPatch), "the fields to change")
                | {"required": True},
            ),
            "delete": _admin_operation(
                "Delete a subscription and every delivery it had (waiting or dead)",
                {"200": json_body(typed(Deleted), "deleted; `dropped` deliveries removed")},
            ),
        },
        one + "/pause": {
            "post": _admin_operation(
                "Pause: its events queue, none is sent until it is resumed", {"200": state}
            )
        },
        one + "/resume": {"post": _admin_operation("Resume: its backlog is sent", {"200": state})},
        one + "/rotate-secret": {
            "post": _admin_operation(
                "A new signing secret; the current ones keep signing until the grace ends",
                {
                    "200": json_body(typed(Rotated), "the new secret, shown this once"),
                    "400": error(f"grace_s not from 0 to {MAX_GRACE_S}, or a pull subscription"),
                    "409": NO_SECRET_KEY,
                },
                body=json_body(typed(RotateSecret), "the grace (optional)"),
            )
        },
        "/admin/audit": {
            "get": operation(
                "Changes to subscriptions, newest first (secret values never included)",
                {
                    "200": json_body(typed(AuditPage), "a page; `next`: the next page's offset"),
                    "400": error("offset or limit out of range"),
                    **BEARER_ERRORS,
                },
                security="adminToken",
                parameters=[
                    param(
                        "offset",
                        "query",
                        {"type": "integer", "minimum": 0, "maximum": MAX_AUDIT_OFFSET},
                    ),
                    param(
                        "limit",
                        "query",
                        {"type": "integer", "minimum": 1, "maximum": MAX_AUDIT_PAGE},
                    ),
                ],
            )
        },
    }


ALERT: Schema = {
    "type": "object",
    "required": ["event", "subject", "target", "since", "lastSent", "details"],
    "properties": {
        "event": {"type": "string"},
        "subject": {"type": "string"},
        "target": {"type": "string"},
        "since": NULLABLE_TEXT,
        "lastSent": NULLABLE_TEXT,
        "resolved": NULLABLE_TEXT,
        "details": {"type": "object"},
    },
}


def _alerts() -> dict[str, Schema]:
    listing = {
        "type": "object",
        "required": ["active", "resolved"],
        "properties": {
            "active": {"type": "array", "items": ALERT},
            "resolved": {"type": "array", "items": ALERT, "maxItems": ALERTS_RESOLVED_KEPT},
        },
    }
    return {
        "/admin/alerts": {
            "get": operation(
                "Alert conditions in force, and the latest resolved (newest first)",
                {"200": json_body(listing, "the conditions"), **BEARER_ERRORS},
                security="adminToken",
            )
        }
    }


# ── (end of subscriptions) ────────────────────────────────────────────────────────────────────


def document(settings: Settings) -> Schema:
    hook_header = settings.sources[0].auth_header if settings.sources else "X-Orderhook-Token"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "orderhook",
            "version": __version__,
            "description": "A webhook receiver and relay gateway for VTEX order hooks.",
        },
        "paths": paths(),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "hookAuth": {
                    "type": "apiKey",
                    "in": "header",
                    "name": hook_header,
                    "description": "the static header configured in the VTEX hook",
                },
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "ORDERHOOK_ADMIN_TOKEN; the read-only ORDERHOOK_OPS_TOKEN "
                    "is accepted on /ops, /ops/stats, /metrics and the JSONata endpoint",
                },
                "feedToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the pull subscription's own token",
                },
            },
        },
    }


class OpenApiEndpoint:
    def __init__(self, settings: Settings) -> None:
        self.body = document(settings)

    async def handle(self, request: Request) -> Response:
        return json_response(self.body)

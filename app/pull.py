"""Pull subscriptions in VTEX Feed v3 style, for consumers that cannot take pushes.

`GET /feed/{subscription}?maxlot=N` (1 to 10) returns up to N items shaped like VTEX feed items,
plus `event` (the CloudEvent), and hides them for the subscription's visibility timeout;
`POST /feed/{subscription}/commit` with `{"handles": [...]}` removes them. Uncommitted items
come back; items older than the retention are dropped and counted.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

import msgspec
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.api_types import Commit, Committed, decode
from app.config import Settings
from app.delivery import Transforms
from app.errors import NotFound, Unauthorized
from app.events import cloudevent, cloudevent_text, default_data
from app.filters import EvaluationError
from app.http import RETRY_AFTER_S, json_response
from app.ops.access import bearer_token, matches
from app.params import int_param
from app.sandbox import SandboxBusy
from app.store.pull import PullQueue
from app.subscriptions.spec import Subscription

log = logging.getLogger("orderhook.feed")

MAX_LOT = 10  # as in VTEX
DEFAULT_LOT = 1
# The commit route's body limit (app/bodies.py). A handle is the base64 of
# "<event uuid>.<subscription id>~<ms>", at most 36 + 1 + 64 + 1 + 13 characters: 156 in base64;
# MAX_HANDLES of them, quoted and comma-separated, are ~160 KB; the rest is room for whitespace.
MAX_COMMIT_BYTES = 256 * 1024


def encode_handle(delivery_id: str, hidden_until_ms: int) -> str:
    return base64.urlsafe_b64encode(f"{delivery_id}~{hidden_until_ms}".encode()).decode()


def decode_handle(handle: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(handle.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


async def feed_item(
    transforms: Transforms, sub: Subscription, event_json: bytes, handle: str
) -> dict[str, Any]:
    """One item as VTEX's feed gives it, with the CloudEvent (transformed in the transforms'
    worker pool); SandboxBusy or OSError when the pool cannot run the transform now."""
    event = orjson.loads(event_json)
    try:
        cloud = orjson.loads(await transforms.body(sub, event, event_json))
    except EvaluationError as exc:  # the consumer still gets its event, untransformed
        cloud = {
            **cloudevent(event, default_data(event)),
            "transformerror": cloudevent_text(str(exc)),
        }
    return {
        "eventId": event["id"],
        "handle": handle,
        "domain": event["domain"],
        "state": event["state"],
        "lastState": event["lastState"],
        "orderId": event["orderId"],
        "lastChange": event["lastChange"],
        "currentChange": event["currentChange"],
        "event": cloud,
    }


class Feed:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _authorized(self, request: Request) -> tuple[Subscription, PullQueue]:
        subscriptions = request.app.state.runtime.subscriptions
        sub = subscriptions.get(request.path_params["subscription"])
        if sub is None or sub.mode != "pull":
            raise NotFound(f"no pull subscription {request.path_params['subscription']!r}")
        given = bearer_token(request)
        if given is None or not matches(given, sub.token):
            raise Unauthorized("missing or invalid bearer token for this subscription")
        deliveries: PullQueue = request.app.state.runtime.pull
        return sub, deliveries

    async def take(self, request: Request) -> Response:
        sub, deliveries = self._authorized(request)
        maxlot = int_param(request.query_params, "maxlot", DEFAULT_LOT, 1, MAX_LOT)
        items, hidden_until = await deliveries.feed_take(
            sub.id, maxlot, sub.visibility_timeout_s, sub.retention_s
        )
        transforms: Transforms = request.app.state.relay.transforms
        try:
            taken = [
                await feed_item(transforms, sub, event, encode_handle(delivery_id, hidden_until))
                for delivery_id, event in items
            ]
        except (SandboxBusy, OSError) as exc:  # the items come back after the visibility timeout
            log.warning("feed %s: transforms unavailable: %s", sub.id, exc)
            return json_response(
                {"error": "transforms are busy; try again later"},
                503,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        return json_response(taken)

    async def commit(self, request: Request) -> Response:
        sub, deliveries = self._authorized(request)
        handles = decode(await request.body(), Commit).handles  # within MAX_COMMIT_BYTES
        receipts = [r for r in (decode_handle(h) for h in handles) if r is not None]
        committed = Committed(await deliveries.feed_commit(sub.id, receipts))
        return json_response(msgspec.to_builtins(committed))

    def routes(self) -> list[Route]:
        return [
            Route("/feed/{subscription}", self.take, methods=["GET"]),
            Route("/feed/{subscription}/commit", self.commit, methods=["POST"]),
        ]

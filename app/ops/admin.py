"""The admin API: events, Retry now and the dead-letter queues, behind a bearer token (the
subscriptions themselves: app/ops/subscriptions.py)."""

from __future__ import annotations

from typing import Any

from msgspec import UNSET, to_builtins
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.api_types import Replay, Replayed, RetryNow, decode
from app.config import Settings
from app.errors import BadRequest, NotFound
from app.http import json_response
from app.ops.access import require
from app.params import int_param
from app.runtime import Runtime
from app.store.schema import Breaker, Enablement

DEFAULT_PAGE = 50
MAX_PAGE = 500
MAX_OFFSET = 10**9


class Admin:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _runtime(self, request: Request) -> Runtime:
        require(request, self.settings, "admin")
        runtime: Runtime = request.app.state.runtime
        return runtime

    @staticmethod
    def _known(request: Request, sub_id: Any) -> str:
        runtime: Runtime = request.app.state.runtime
        if not isinstance(sub_id, str) or runtime.subscriptions.get(sub_id) is None:
            raise NotFound(f"no subscription {sub_id!r}")
        return sub_id

    async def retry_now(self, request: Request) -> Response:
        """Close the breaker and make the subscription's waiting deliveries due now."""
        deliveries = self._runtime(request).deliveries
        sub = self._known(request, request.path_params["id"])
        done = await deliveries.retry_now(sub)
        answer = RetryNow(
            sub, "closed", Breaker(done.breaker_was), done.made_due, Enablement(done.state)
        )
        return json_response(to_builtins(answer))  # a disabled one stays so: a replay enables it

    async def dlq(self, request: Request) -> Response:
        queries = self._runtime(request).queries
        offset = int_param(request.query_params, "offset", 0, 0, MAX_OFFSET)
        limit = int_param(request.query_params, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
        wanted = request.query_params.get("subscription")
        everyone = [s.id for s in self._runtime(request).subscriptions.all()]
        subs = [self._known(request, wanted)] if wanted is not None else everyone
        items, total = await queries.dead_letters(subs, offset, limit)
        more = offset + limit < total
        return json_response(
            {
                "items": items,
                "total": total,
                "next": offset + limit if more else None,
            }
        )

    async def replay(self, request: Request) -> Response:
        deliveries = self._runtime(request).deliveries
        body = decode(await request.body(), Replay)
        if body.subscription is not UNSET and body.ids is UNSET:
            replayed = await deliveries.replay_subscription(self._known(request, body.subscription))
        elif body.ids is not UNSET and body.subscription is UNSET:
            replayed = await deliveries.replay(body.ids)
        else:
            raise BadRequest(Replay.usage)
        return json_response(to_builtins(Replayed(replayed)))

    async def delete(self, request: Request) -> Response:
        deliveries = self._runtime(request).deliveries
        entry_id = request.path_params["id"]
        if not await deliveries.delete_dead(entry_id):
            raise NotFound(f"no dead-letter entry {entry_id!r}")
        return json_response({"deleted": entry_id})

    async def event(self, request: Request) -> Response:
        queries = self._runtime(request).queries
        event_id = request.path_params["id"]
        event, attempts = await queries.event(event_id)
        if event is None:
            raise NotFound(f"no event {event_id!r} in the delivery log")
        by_subscription: dict[str, list[dict[str, Any]]] = {}
        for attempt in reversed(attempts):  # oldest first
            by_subscription.setdefault(attempt["subscription"], []).append(attempt)
        return json_response({"event": event, "attempts": by_subscription})

    async def events(self, request: Request) -> Response:
        queries = self._runtime(request).queries
        order_id = request.query_params.get("orderId")
        if not order_id:
            raise BadRequest("give ?orderId=...")
        rows = [
            {**event, "attempts": len(attempts)}
            for event, attempts in await queries.order_history(order_id)
        ]
        return json_response({"orderId": order_id, "events": rows})

    def routes(self) -> list[Route]:
        return [
            Route("/admin/events", self.events, methods=["GET"]),
            Route("/admin/events/{id}", self.event, methods=["GET"]),
            Route("/admin/subscriptions/{id}/retry-now", self.retry_now, methods=["POST"]),
            Route("/admin/dlq", self.dlq, methods=["GET"]),
            Route("/admin/dlq/replay", self.replay, methods=["POST"]),
            Route("/admin/dlq/{id}", self.delete, methods=["DELETE"]),
        ]

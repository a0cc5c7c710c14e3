"""The ops endpoints: /ops (dashboard, login, replay), /ops/stats and /metrics."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from app.config import Settings
from app.errors import BadRequest, Forbidden, PayloadTooLarge
from app.http import json_response
from app.ops import dashboard, metrics, stats
from app.ops.access import COOKIE, presented_token, require, role_of
from app.store.deliveries import DeliveryStore, OpsQueries

MAX_FORM_BYTES = 4096
MAX_FORM_FIELDS = 10
DASHBOARD_ROWS = 50
COOKIE_MAX_AGE_S = 12 * 3600


class Ops:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @staticmethod
    def _deliveries(request: Request) -> DeliveryStore:
        deliveries: DeliveryStore = request.app.state.relay.deliveries
        return deliveries

    async def stats(self, request: Request) -> Response:
        require(request, self.settings, "ops")
        return json_response(await stats.collect(self.settings, self._deliveries(request)))

    async def metrics(self, request: Request) -> Response:
        require(request, self.settings, "ops")
        snapshot = await stats.collect(self.settings, self._deliveries(request))
        return Response(metrics.render(snapshot), media_type="text/plain; version=0.0.4")

    async def dashboard(self, request: Request) -> Response:
        if self.settings.admin_token is None and self.settings.ops_token is None:
            raise Forbidden(
                "ops endpoints are disabled: set ORDERHOOK_ADMIN_TOKEN or ORDERHOOK_OPS_TOKEN"
            )
        role = role_of(presented_token(request), self.settings)
        if role is None:
            return HTMLResponse(dashboard.login_page(), 401)
        deliveries = self._deliveries(request)
        queries = OpsQueries(deliveries)
        snapshot = await stats.collect(self.settings, deliveries)
        dead: list[dict[str, Any]] = []
        for sub in self.settings.subscriptions:
            dead += (await deliveries.dead_letters(sub.id, 0, DASHBOARD_ROWS))[0]
        dead.sort(key=lambda d: d["deadAt"] or 0, reverse=True)
        order_id = request.query_params.get("orderId") or None
        history = await queries.order_history(order_id) if order_id else []
        found = [{"event": event, "attempts": attempts} for event, attempts in history]
        html = dashboard.page(
            snapshot,
            dead[:DASHBOARD_ROWS],
            await queries.recent_attempts(DASHBOARD_ROWS),
            role,
            order_id,
            found,
        )
        return HTMLResponse(html)

    async def login(self, request: Request) -> Response:
        token = (await _form(request)).get("token", "")
        if role_of(token or None, self.settings) is None:
            return HTMLResponse(dashboard.login_page("That token is not valid."), 401)
        response = RedirectResponse("/ops", 303)
        response.set_cookie(
            COOKIE,
            token,
            max_age=COOKIE_MAX_AGE_S,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/ops", 303)
        response.delete_cookie(COOKIE)
        return response

    async def replay(self, request: Request) -> Response:
        require(request, self.settings, "admin")
        sub = (await _form(request)).get("subscription", "")
        if sub in {s.id for s in self.settings.subscriptions}:
            await self._deliveries(request).replay_subscription(sub)
        return RedirectResponse("/ops", 303)

    def routes(self) -> list[Route]:
        return [
            Route("/ops", self.dashboard, methods=["GET"]),
            Route("/ops/login", self.login, methods=["POST"]),
            Route("/ops/logout", self.logout, methods=["POST"]),
            Route("/ops/replay", self.replay, methods=["POST"]),
            Route("/ops/stats", self.stats, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]


async def _form(request: Request) -> dict[str, str]:
    """A small urlencoded form (no multipart): the dashboard's only forms."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise PayloadTooLarge(f"form is over {MAX_FORM_BYTES} bytes")
    try:
        pairs = parse_qsl(body.decode("utf-8", "replace"), max_num_fields=MAX_FORM_FIELDS)
    except ValueError:  # more fields than that
        raise BadRequest(f"form has more than {MAX_FORM_FIELDS} fields") from None
    return dict(pairs)

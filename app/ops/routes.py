"""The ops endpoints: /ops (dashboard, login, replay), /ops/stats and /metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from app.config import Settings
from app.errors import BadRequest, Forbidden, NotFound
from app.http import json_response
from app.ops import alerts, dashboard, metrics, stats
from app.ops.access import (
    COOKIE,
    COOKIE_PATH,
    LEGACY_COOKIE,
    Role,
    allowed,
    bearer_token,
    require,
    role_of,
)
from app.ops.forms import form_fields, read_form
from app.ops.sessions import Sessions
from app.ops.subscription_routes import SubscriptionPages
from app.params import int_param, parse_int
from app.runtime import Runtime
from app.store.alerts import Conditions, conditions
from app.store.client import now_ms
from app.store.queries import Queries, Ranking, history
from app.store.reads import Read, both, constant, record
from app.subscriptions.spec import Subscription

DASHBOARD_ROWS = 50
MAX_DLQ_PAGE = 100_000  # 5 million dead letters, 50 a page


@dataclass(frozen=True)
class _Shown:
    """What the dashboard's first read finds (Ops._shown); the page's dead letters and the
    order's events are its second."""

    figures: stats.Figures
    attempts: list[dict[str, Any]]
    ranking: Ranking
    order_events: list[str]
    alerts: Conditions


class Ops:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @staticmethod
    def _runtime(request: Request) -> Runtime:
        runtime: Runtime = request.app.state.runtime
        return runtime

    def _sessions(self, request: Request) -> Sessions:
        return Sessions(request.app.state.runtime.store, self.settings)

    async def _role(self, request: Request) -> Role | None:
        """The dashboard's caller: the bearer token's role, else its session's."""
        token = bearer_token(request)
        if token is not None:
            return role_of(token, self.settings)
        session_id = request.cookies.get(COOKIE)
        return await self._sessions(request).role(session_id) if session_id else None

    async def stats(self, request: Request) -> Response:
        require(request, self.settings, "ops")
        runtime = self._runtime(request)
        return json_response(await stats.collect(runtime.subscriptions.all(), runtime.queries))

    async def metrics(self, request: Request) -> Response:
        require(request, self.settings, "ops")
        runtime = self._runtime(request)
        body = await metrics.scrape(runtime.subscriptions.all(), runtime.queries, runtime.store)
        return Response(body, media_type=metrics.MEDIA_TYPE)

    async def dashboard(self, request: Request) -> Response:
        if self.settings.admin_token is None and self.settings.ops_token is None:
            raise Forbidden(
                "ops endpoints are disabled: set ORDERHOOK_ADMIN_TOKEN or ORDERHOOK_OPS_TOKEN"
            )
        role = await self._role(request)
        if role is None:
            return _signed_out(request, HTMLResponse(dashboard.login_page(), 401))
        queries = self._runtime(request).queries
        subs = self._runtime(request).subscriptions.all()
        dlq_page = int_param(request.query_params, "page", 1, 1, MAX_DLQ_PAGE)
        order_id = request.query_params.get("orderId") or None
        shown = await queries.read(self._shown(subs, queries, dlq_page, order_id))
        dead, events = await queries.read(
            both(queries.deliveries(shown.ranking.ids), queries.events(shown.order_events))
        )
        found = [{"event": event, "attempts": attempts} for event, attempts in history(events)]
        html = dashboard.page(
            stats.view(subs, shown.figures, now_ms()),
            dashboard.DeadLetterPage(dead, shown.ranking.total, dlq_page, DASHBOARD_ROWS),
            shown.attempts,
            role,
            order_id,
            found,
            self.settings.dashboard_refresh_s,
            alerts.listing(self.settings, shown.alerts)["active"],
        )
        return HTMLResponse(html)

    def _shown(
        self, subs: Sequence[Subscription], queries: Queries, dlq_page: int, order_id: str | None
    ) -> Read[_Shown]:
        """The dashboard's first read, one pipeline: the stats, the recent attempts, which
        dead letters are on its page and which events the order searched for has."""
        offset = (dlq_page - 1) * DASHBOARD_ROWS
        return record(
            _Shown,
            stats.figures(subs, queries),
            queries.recent_attempts(DASHBOARD_ROWS),
            queries.dead_letter_ranking([s.id for s in subs], offset, DASHBOARD_ROWS),
            queries.order_events(order_id) if order_id else constant([]),
            conditions(queries.keys),
        )

    async def login(self, request: Request) -> Response:
        token = (await read_form(request)).get("token", "")
        role = role_of(token or None, self.settings)
        if role is None:
            return HTMLResponse(dashboard.login_page("That token is not valid."), 401)
        response = RedirectResponse("/ops", 303)
        response.set_cookie(
            COOKIE,
            await self._sessions(request).open(role),
            max_age=self.settings.session_max_age_s,
            path=COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",  # behind a trusted proxy: its X-Forwarded-Proto
        )
        if LEGACY_COOKIE in request.cookies:
            response.delete_cookie(LEGACY_COOKIE)
        return response

    async def logout(self, request: Request) -> Response:
        session_id = request.cookies.get(COOKIE)
        if session_id:
            await self._sessions(request).close(session_id)
        return _signed_out(request, RedirectResponse("/ops", 303))

    async def _subscription_of(self, request: Request) -> str:
        """The `subscription` of an admin's form: 400 without one, 404 for one not configured."""
        allowed(await self._role(request), self.settings, "admin")
        sub = (await read_form(request)).get("subscription")
        if not sub:
            raise BadRequest("the form has no `subscription` field")
        if self._runtime(request).subscriptions.get(sub) is None:
            raise NotFound(f"no subscription {sub[:100]!a}")
        return sub

    async def replay(self, request: Request) -> Response:
        sub = await self._subscription_of(request)
        await self._runtime(request).deliveries.replay_subscription(sub)
        return RedirectResponse("/ops", 303)

    async def retry_now(self, request: Request) -> Response:
        """The dashboard's Retry now: close the breaker, make the queue due (Admin.retry_now)."""
        sub = await self._subscription_of(request)
        await self._runtime(request).deliveries.retry_now(sub)
        return RedirectResponse("/ops", 303)

    async def dead_letter_replay(self, request: Request) -> Response:
        """Replay one dead letter; one already gone (replayed or deleted meanwhile) is no error:
        back to the same page of the dashboard, which shows it gone."""
        allowed(await self._role(request), self.settings, "admin")
        fields = await form_fields(request, ("id",), ("page",))
        back = _back_to(fields)
        await self._runtime(request).deliveries.replay([fields["id"]])
        return back

    async def dead_letter_delete(self, request: Request) -> Response:
        """Delete one dead letter; as replay, one already gone is no error."""
        allowed(await self._role(request), self.settings, "admin")
        fields = await form_fields(request, ("id",), ("page",))
        back = _back_to(fields)
        await self._runtime(request).deliveries.delete_dead(fields["id"])
        return back

    def routes(self) -> list[Route]:
        return [
            Route("/ops", self.dashboard, methods=["GET"]),
            Route("/ops/login", self.login, methods=["POST"]),
            Route("/ops/logout", self.logout, methods=["POST"]),
            Route("/ops/replay", self.replay, methods=["POST"]),
            Route("/ops/retry-now", self.retry_now, methods=["POST"]),
            Route("/ops/dlq/replay", self.dead_letter_replay, methods=["POST"]),
            Route("/ops/dlq/delete", self.dead_letter_delete, methods=["POST"]),
            Route("/ops/stats", self.stats, methods=["GET"]),
            Route(metrics.PATH, self.metrics, methods=["GET"]),
            *SubscriptionPages(self.settings, self._role).routes(),
        ]


def _back_to(fields: dict[str, str]) -> Response:
    """To the dashboard's page of dead letters the form was on."""
    page = parse_int(fields["page"], "page", 1, MAX_DLQ_PAGE) if "page" in fields else 1
    return RedirectResponse("/ops" if page == 1 else f"/ops?page={page}", 303)


def _signed_out(request: Request, response: Response) -> Response:
    """`response`, clearing whichever of the dashboard's cookies the browser still sends."""
    if COOKIE in request.cookies:
        response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    if LEGACY_COOKIE in request.cookies:
        response.delete_cookie(LEGACY_COOKIE)
    return response

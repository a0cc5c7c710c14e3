"""The admin API's subscriptions: create, show, change, delete, pause, resume and rotate their
secrets (app/subscriptions/manage.py does each), and the audit of changes. Admin token only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.api_types import NewSubscription, RotateSecret, SubscriptionPatch, decode
from app.config import Settings
from app.errors import TooManyJobs
from app.http import json_response
from app.ops.access import require
from app.params import int_param
from app.runtime import Runtime
from app.store.client import now_ms
from app.subscriptions import manage
from app.subscriptions.manage import Actor
from app.subscriptions.replay import backfill_range, start_backfill

DEFAULT_AUDIT_PAGE = 50
MAX_AUDIT_PAGE = 500
MAX_AUDIT_OFFSET = 10**6

Endpoint = Callable[[Request], Awaitable[Response]]


class SubscriptionsApi:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _admin(self, request: Request) -> tuple[Runtime, Actor]:
        role = require(request, self.settings, "admin")
        runtime: Runtime = request.app.state.runtime
        return runtime, Actor("api", role)

    async def listing(self, request: Request) -> Response:
        runtime, _ = self._admin(request)
        return json_response({"subscriptions": await manage.listing(runtime)})

    async def create(self, request: Request) -> Response:
        runtime, actor = self._admin(request)
        body = decode(await request.body(), NewSubscription)
        since = body.backfill_since
        if since is not None:  # refused before the subscription is made
            backfill_range(since, now_ms(), runtime.settings.log_retention_s)
        made = await manage.create(runtime, body.spec(), actor)
        if since is not None:
            try:
                made["backfill"] = {"job": await start_backfill(runtime, body.id, since)}
            except TooManyJobs as exc:  # it exists now: said, and the replay left to the caller
                made["backfill"] = {"error": exc.message}
        return json_response(made, 201)

    async def show(self, request: Request) -> Response:
        runtime, _ = self._admin(request)
        return json_response(await manage.show(runtime, request.path_params["id"]))

    async def update(self, request: Request) -> Response:
        runtime, actor = self._admin(request)
        patch = decode(await request.body(), SubscriptionPatch)
        return json_response(await manage.update(runtime, request.path_params["id"], patch, actor))

    async def delete(self, request: Request) -> Response:
        runtime, actor = self._admin(request)
        return json_response(await manage.delete(runtime, request.path_params["id"], actor))

    async def pause(self, request: Request) -> Response:
        runtime, actor = self._admin(request)
        return json_response(await manage.pause(runtime, request.path_params["id"], actor))

    async def resume(self, request: Request) -> Response:
        runtime, actor = self._admin(request)
        return json_response(await manage.resume(runtime, request.path_params["id"], actor))

    async def rotate_secret(self, request: Request) -> Response:
        runtime, actor = self._admin(request)
        raw = await request.body()
        grace_s = decode(raw, RotateSecret).grace_s if raw.strip() else RotateSecret().grace_s
        sub_id = request.path_params["id"]
        return json_response(await manage.rotate_secret(runtime, sub_id, grace_s, actor))

    async def audit(self, request: Request) -> Response:
        runtime, _ = self._admin(request)
        params = request.query_params
        offset = int_param(params, "offset", 0, 0, MAX_AUDIT_OFFSET)
        limit = int_param(params, "limit", DEFAULT_AUDIT_PAGE, 1, MAX_AUDIT_PAGE)
        return json_response(await manage.audit(runtime, offset, limit))

    def routes(self) -> list[Route]:
        one = "/admin/subscriptions/{id}"
        return [
            by_method("/admin/subscriptions", GET=self.listing, POST=self.create),
            by_method(one, GET=self.show, PATCH=self.update, DELETE=self.delete),
            Route(one + "/pause", self.pause, methods=["POST"]),
            Route(one + "/resume", self.resume, methods=["POST"]),
            Route(one + "/rotate-secret", self.rotate_secret, methods=["POST"]),
            Route("/admin/audit", self.audit, methods=["GET"]),
        ]


def by_method(path: str, **handlers: Endpoint) -> Route:
    """One route for a path that several methods take (a 405 names them all in `Allow`)."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return Route(path, endpoint, methods=list(handlers))

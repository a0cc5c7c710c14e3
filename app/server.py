"""The Starlette application: its routes, and a lifespan that opens and closes the runtime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app import logs, pull, tracing
from app.alerts.unavailable import warn_while_unreachable
from app.bodies import limit_bodies
from app.config import Settings, load_settings
from app.connections import BoundedHttpProtocol, bounded_receive
from app.errors import StoreMayEvict, StoreUnavailable
from app.http import EXCEPTION_HANDLERS, json_response
from app.ingest import HOOK_DEADLINE_S, HOOK_PATH, HookEndpoint, append_traced
from app.lifecycle import tune_gc
from app.openapi import OpenApiEndpoint
from app.ops import metrics
from app.ops.admin import Admin
from app.ops.alerts import AlertsApi
from app.ops.forms import MAX_FORM_BYTES
from app.ops.guards import SameOriginWrites, SecurityHeaders, SignInThrottle
from app.ops.jobs import Jobs
from app.ops.routes import Ops
from app.ops.subscription_routes import FORMS as SUBSCRIPTION_FORMS
from app.ops.subscriptions import SubscriptionsApi
from app.relay import Relay
from app.runtime import open_runtime
from app.store.batcher import Batcher
from app.store.client import Store
from app.subscriptions.replay import ReplayJobs
from app.vtex import jsonata

log = logging.getLogger("orderhook.server")


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    """200 when Redis answers, runs noeviction and takes a write (is not out of memory)."""
    try:
        await request.app.state.runtime.store.check_ready()
    except StoreUnavailable as exc:
        return json_response({"status": "unavailable", "error": exc.public}, 503)
    return json_response({"status": "ready"})


POLICY_CHECK_EVERY_S = 30.0


async def check_eviction_policy(store: Store, known: str | None = None) -> str | None:
    """Check Redis's maxmemory-policy (hooks are refused while it may evict); log a change
    from what was `known`. Returns what is now known to be wrong, or None."""
    try:
        await store.check_eviction()
    except StoreMayEvict as exc:
        if str(exc) != known:
            log.error("%s; events are refused with 503 meanwhile", exc)
        return str(exc)
    except StoreUnavailable:
        return known  # not answering: hooks get 503 anyway; checked again next time
    if known is not None:
        log.warning("redis runs maxmemory-policy noeviction again: events are accepted")
    return None


async def watch_eviction_policy(store: Store, known: str | None) -> None:
    """Check the policy again now and then: a Redis restarted (or reconfigured) with another
    maxmemory-policy is noticed within POLICY_CHECK_EVERY_S (and by every /readyz)."""
    while True:
        await asyncio.sleep(POLICY_CHECK_EVERY_S)
        known = await check_eviction_policy(store, known)


class Gateway(Starlette):
    """The Starlette app, with one shortcut: `POST /hooks/vtex`, the one path VTEX loads,
    goes straight to its handler, which answers every error itself (and bounds its body's
    time); the middleware and the router (which still list it, for 405s and /openapi.json) are
    for the other endpoints, whose bodies must be in within `body_timeout_s` (else 408)."""

    def __init__(self, hook: HookEndpoint, body_timeout_s: float, **options: Any) -> None:
        super().__init__(**options)
        self.hook = hook
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
        elif scope["path"] == HOOK_PATH and scope["method"] == "POST":
            scope["app"] = self
            await self.hook(scope, receive, metrics.counting_responses(send))
        else:
            await super().__call__(scope, bounded_receive(receive, self.body_timeout_s), send)


# Body limits of the routes that need another than DEFAULT_MAX_BODY_BYTES (app/bodies.py).
BODY_LIMITS = {
    jsonata.PATH: jsonata.MAX_BODY_BYTES,
    "/feed/{subscription}/commit": pull.MAX_COMMIT_BYTES,
    "/ops/login": MAX_FORM_BYTES,
    "/ops/replay": MAX_FORM_BYTES,
    **{path: MAX_FORM_BYTES for path in SUBSCRIPTION_FORMS},
}


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not settings.sources:
            log.warning("no [[sources]] configured: every hook request will be refused with 401")
        async with open_runtime(settings, apply=True) as runtime:
            store = runtime.store
            known_problem = await check_eviction_policy(store)  # before any hook is taken
            tracing.setup()  # in each process (serve --workers N: each of them)
            commit = Batcher(append_traced(store), name="ingest", deadline_s=HOOK_DEADLINE_S)
            commit.start()
            relay = Relay(runtime)
            await relay.start()
            app.state.runtime, app.state.commit, app.state.relay = runtime, commit, relay
            # background jobs (replays of a time range): stopped, and marked failed, first
            jobs = app.state.jobs = ReplayJobs(runtime, relay.deliverer.wake)
            jobs.start()
            flusher = asyncio.create_task(logs.flush_periodically())
            watch = asyncio.create_task(watch_eviction_policy(store, known_problem))
            every_s = settings.unreachable_warning_s
            stop_pinging = asyncio.Event()
            ping = asyncio.create_task(
                warn_while_unreachable(store, every_s, stop_pinging, relay.alerts.reachability)
            )
            try:
                yield
            finally:
                flusher.cancel()
                watch.cancel()
                stop_pinging.set()
                ping.cancel()
                await asyncio.wait([ping], timeout=every_s)  # done before the store closes
                logs.outcomes.flush()
                await jobs.close()
                await relay.stop()
                await commit.close()
                await tester.close()
                tracing.shutdown()

    hook = HookEndpoint(settings)
    tester = jsonata.JsonataEndpoint(settings)
    routes = [
        Route(HOOK_PATH, hook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", OpenApiEndpoint(settings).handle, methods=["GET"]),
        *Admin(settings).routes(),
        *AlertsApi(settings).routes(),
        *Jobs(settings).routes(),
        *SubscriptionsApi(settings).routes(),
        *Ops(settings).routes(),
        *pull.Feed(settings).routes(),
        Route(jsonata.PATH, tester.handle, methods=["POST"]),
    ]
    guards = [  # outermost first; the hook skips them (Gateway)
        Middleware(SecurityHeaders),
        Middleware(SameOriginWrites),
        Middleware(SignInThrottle, settings=settings),
    ]
    app = Gateway(
        hook,
        settings.body_timeout_s,
        routes=limit_bodies(routes, BODY_LIMITS),
        middleware=guards,
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.settings = settings
    return app


def app_from_environment() -> Starlette:
    """The app of one `serve --workers N` process: its config from ORDERHOOK_CONFIG and the
    environment, as its parent checked them."""
    logs.configure()
    tune_gc()
    settings = load_settings(None)
    BoundedHttpProtocol.configure(settings)
    return create_app(settings)

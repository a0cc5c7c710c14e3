"""The dashboard's subscription pages and their forms (app/ops/subscription_page.py renders):

- `GET /ops/subscriptions/{id}`: its state, config (secrets `***`), version, origin and
  recent changes, for either role;
- `POST /ops/subscriptions/{id}/pause|resume|retry-now`: then back to its page;
- `POST .../rotate-secret` (`grace_s`): answered with the new secret, on that page alone;
- `POST .../replay` (`since`, `until`): a replay job started, then its page,
  `GET /ops/jobs/{job}`, which follows it.

Actions are the admin's (the ops role gets 403), made by app/subscriptions/manage.py's
functions as `Actor("dashboard", role)`, through the same guards as every form
(app/ops/guards.py) and with its fields checked by app/ops/forms.py.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from msgspec import to_builtins
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from app.api_types import MAX_GRACE_S, RotateSecret
from app.config import Settings
from app.errors import BadRequest, NotFound
from app.ops import dashboard, subscription_page
from app.ops.access import Role, allowed
from app.ops.forms import form_fields
from app.ops.jobs import MAX_JOB_ID_CHARS
from app.runtime import Runtime
from app.store.client import now_ms
from app.subscriptions import manage
from app.subscriptions.manage import Actor
from app.subscriptions.replay import ReplayJobs, replay_range

PAGE = "/ops/subscriptions/{id}"
ACTIONS = ("pause", "resume", "retry-now", "rotate-secret", "replay")
FORMS = tuple(f"{PAGE}/{action}" for action in ACTIONS)  # each a form (app/ops/forms.py)
AUDIT_SCAN = 200  # audit entries read at a time, looking for one subscription's

RoleOf = Callable[[Request], Awaitable[Role | None]]
Render = Callable[[Request, Role], Awaitable[str]]


class SubscriptionPages:
    def __init__(self, settings: Settings, role_of: RoleOf) -> None:
        self.settings = settings
        self.role_of = role_of

    async def _html(self, request: Request, render: Render) -> Response:
        """A page either role may read; the sign-in form to a stranger (403 with no token
        configured)."""
        role = await self.role_of(request)
        if role is None and (self.settings.admin_token or self.settings.ops_token):
            return HTMLResponse(dashboard.login_page(), 401)
        return HTMLResponse(await render(request, allowed(role, self.settings, "ops")))

    async def _admin(
        self, request: Request, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()
    ) -> tuple[Runtime, str, Actor, dict[str, str]]:
        """An admin's form: the runtime, the subscription's id, who acts, the form's fields."""
        role = allowed(await self.role_of(request), self.settings, "admin")
        fields = await form_fields(request, required, optional)
        runtime: Runtime = request.app.state.runtime
        return runtime, request.path_params["id"], Actor("dashboard", role), fields

    async def page(self, request: Request) -> Response:
        return await self._html(request, self._page)

    async def _page(self, request: Request, role: Role) -> str:
        runtime: Runtime = request.app.state.runtime
        sub_id = request.path_params["id"]
        view = await manage.show(runtime, sub_id)
        changes = await recent_changes(runtime, sub_id)
        return subscription_page.page(view, changes, role, self.settings.dashboard_refresh_s)

    async def pause(self, request: Request) -> Response:
        runtime, sub_id, actor, _ = await self._admin(request)
        await manage.pause(runtime, sub_id, actor)
        return _to_page(sub_id)

    async def resume(self, request: Request) -> Response:
        runtime, sub_id, actor, _ = await self._admin(request)
        await manage.resume(runtime, sub_id, actor)
        return _to_page(sub_id)

    async def retry_now(self, request: Request) -> Response:
        """Close its breaker and make its queue due now (as /ops/retry-now)."""
        runtime, sub_id, _, _ = await self._admin(request)
        _known(runtime, sub_id)
        await runtime.deliveries.retry_now(sub_id)
        return _to_page(sub_id)

    async def rotate_secret(self, request: Request) -> Response:
        runtime, sub_id, actor, fields = await self._admin(request, optional=("grace_s",))
        grace_s = _grace_s(fields.get("grace_s") or None)
        rotated = await manage.rotate_secret(runtime, sub_id, grace_s, actor)
        return HTMLResponse(subscription_page.rotated_page(sub_id, rotated))

    async def replay(self, request: Request) -> Response:
        """Start replaying [since, until) to it (until: now), then to the job's page."""
        runtime, sub_id, _, fields = await self._admin(request, ("since",), ("until",))
        _known(runtime, sub_id)
        retention_s = self.settings.log_retention_s
        wanted = replay_range(fields["since"], fields.get("until") or None, now_ms(), retention_s)
        jobs: ReplayJobs = request.app.state.jobs
        job = await jobs.replay(sub_id, wanted)
        return RedirectResponse(f"/ops/jobs/{quote(job, safe='')}", 303)

    async def job(self, request: Request) -> Response:
        return await self._html(request, self._job)

    async def _job(self, request: Request, role: Role) -> str:
        """A replay job's page (the same for either role)."""
        jobs: ReplayJobs = request.app.state.jobs
        job_id = request.path_params["id"]
        status = await jobs.status(job_id) if len(job_id) <= MAX_JOB_ID_CHARS else None
        if status is None:
            raise NotFound(f"no job {job_id[:MAX_JOB_ID_CHARS]!r} (a job is kept a day)")
        shown: dict[str, Any] = to_builtins(status)
        return subscription_page.job_page(job_id, shown, self.settings.dashboard_refresh_s)

    def routes(self) -> list[Route]:
        actions = (self.pause, self.resume, self.retry_now, self.rotate_secret, self.replay)
        return [
            Route(PAGE, self.page, methods=["GET"]),
            *(Route(path, act, methods=["POST"]) for path, act in zip(FORMS, actions, strict=True)),
            Route("/ops/jobs/{id}", self.job, methods=["GET"]),
        ]


async def recent_changes(
    runtime: Runtime, sub_id: str, wanted: int = subscription_page.RECENT_CHANGES
) -> list[dict[str, Any]]:
    """The subscription's latest `wanted` audit entries, newest first."""
    found: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None and len(found) < wanted:
        audit = await manage.audit(runtime, offset, AUDIT_SCAN)
        found += [entry for entry in audit["items"] if entry.get("subscription") == sub_id]
        offset = audit["next"]
    return found[:wanted]


def _known(runtime: Runtime, sub_id: str) -> None:
    if runtime.subscriptions.get(sub_id) is None:
        raise NotFound(f"no subscription {sub_id[:100]!a}")


def _grace_s(given: str | None) -> float:
    """The form's `grace_s` (default: the API's), 0 to MAX_GRACE_S seconds."""
    if given is None:
        return RotateSecret().grace_s
    try:
        grace_s = float(given)
    except ValueError:
        grace_s = math.nan
    if not 0 <= grace_s <= MAX_GRACE_S:  # NaN too
        raise BadRequest(f"`grace_s` must be a number of seconds from 0 to {MAX_GRACE_S}")
    return grace_s


def _to_page(sub_id: str) -> Response:
    return RedirectResponse(f"/ops/subscriptions/{quote(sub_id, safe='')}", 303)

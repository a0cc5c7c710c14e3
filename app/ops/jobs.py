"""The admin API's background jobs: replay a subscription's time range, and read a job."""

from __future__ import annotations

from msgspec import UNSET, to_builtins
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.api_types import JobStarted, ReplayRange, decode
from app.config import Settings
from app.errors import NotFound
from app.http import json_response
from app.ops.access import require
from app.runtime import Runtime
from app.store.client import now_ms
from app.subscriptions.replay import ReplayJobs, replay_range

MAX_JOB_ID_CHARS = 64


class Jobs:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _jobs(self, request: Request) -> ReplayJobs:
        require(request, self.settings, "admin")
        jobs: ReplayJobs = request.app.state.jobs
        return jobs

    async def replay(self, request: Request) -> Response:
        """202: every retained event received in the range that matches the subscription's
        filter now is delivered to it again, by a background job."""
        jobs = self._jobs(request)
        runtime: Runtime = request.app.state.runtime
        sub_id = request.path_params["id"]
        if runtime.subscriptions.get(sub_id) is None:
            raise NotFound(f"no subscription {sub_id!r}")
        body = decode(await request.body(), ReplayRange)
        until = None if body.until is UNSET else body.until
        wanted = replay_range(body.since, until, now_ms(), self.settings.log_retention_s)
        job = await jobs.replay(sub_id, wanted)
        return json_response(to_builtins(JobStarted(job)), 202)

    async def job(self, request: Request) -> Response:
        jobs = self._jobs(request)
        job_id = request.path_params["id"]
        status = await jobs.status(job_id) if len(job_id) <= MAX_JOB_ID_CHARS else None
        if status is None:
            raise NotFound(f"no job {job_id!r} (a job is kept a day after it ends)")
        return json_response(to_builtins(status))

    def routes(self) -> list[Route]:
        return [
            Route("/admin/subscriptions/{id}/replay", self.replay, methods=["POST"]),
            Route("/admin/jobs/{id}", self.job, methods=["GET"]),
        ]

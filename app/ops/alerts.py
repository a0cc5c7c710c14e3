"""`GET /admin/alerts`: the alert conditions in force and the latest resolved, for the admin or
the read-only ops token. A target is named by its id only (never its URL or secret)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.config import Settings
from app.http import json_response
from app.ops.access import require
from app.runtime import Runtime
from app.store.alerts import Conditions, conditions

PATH = "/admin/alerts"


def iso(ms: object) -> str | None:
    if not isinstance(ms, int | float) or isinstance(ms, bool) or not 0 < ms < 2**45:
        return None
    return (
        datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def shown(record: dict[str, Any]) -> dict[str, Any]:
    """A stored condition as the API shows it."""
    details = record.get("details")
    row = {
        "event": str(record.get("event", "")),
        "subject": str(record.get("subject", "")),
        "target": str(record.get("target", "")),
        "since": iso(record.get("since")),
        "lastSent": iso(record.get("lastSentMs")),
        "details": details if isinstance(details, dict) else {},
    }
    if "resolvedMs" in record:
        row["resolved"] = iso(record.get("resolvedMs"))
    return row


def listing(settings: Settings, found: Conditions) -> dict[str, list[dict[str, Any]]]:
    """What the API and the dashboard show: the conditions of the configured targets."""
    active, resolved = found
    known = {t.id for t in settings.alerts}
    return {
        "active": [shown(r) for r in active if r.get("target") in known],
        "resolved": [shown(r) for r in resolved],
    }


class AlertsApi:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def alerts(self, request: Request) -> Response:
        require(request, self.settings, "ops")
        runtime: Runtime = request.app.state.runtime
        found = await runtime.queries.read(conditions(runtime.store.keys))
        return json_response(listing(self.settings, found))

    def routes(self) -> list[Route]:
        return [Route(PATH, self.alerts, methods=["GET"])]

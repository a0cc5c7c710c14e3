"""The baseline for `bench/ingest.py`: a bare Starlette app doing only the HTTP part of ingest.

`POST /hooks/vtex` reads the body, parses it with `orjson.loads` and answers 200
`{"status":"accepted"}`; no auth, no validation, no Redis. `GET /healthz` answers 200 so the
benchmark can tell when the server is up. Run it the way the gateway runs (one uvicorn worker):

    .venv/bin/python -m uvicorn bench.bare_app:app --host 127.0.0.1 --port 8001 \
        --no-access-log --log-level warning
"""

from __future__ import annotations

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def json_response(content: dict[str, str]) -> Response:
    return Response(orjson.dumps(content), 200, media_type="application/json")


async def hook(request: Request) -> Response:
    orjson.loads(await request.body())
    return json_response({"status": "accepted"})


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


app = Starlette(
    routes=[
        Route("/hooks/vtex", hook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)

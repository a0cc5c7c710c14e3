"""JSONata testing as VTEX's `POST /api/orders/expressions/jsonata` does it.

The body is `{"Expression": "...", "Document": "<the order as a JSON string>"}`; the answer is
`true` when the expression yields `true` on the document (VTEX's FromOrders rule), else `false`.
The expression runs in a worker process of the sandbox (app/sandbox.py), never in the gateway's:
400 for an expression that does not compile or fails, 422 naming the limit that stopped it
(`limit`: expression length, time, call depth, sequence length, memory), 503 while every worker
is busy.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson
from msgspec import to_builtins
from starlette.requests import Request
from starlette.responses import Response

from app.api_types import JsonataFailed, JsonataStopped, JsonataTest, decode
from app.config import Settings
from app.errors import BadRequest
from app.filters import EvaluationError, ExpressionError
from app.http import RETRY_AFTER_S, json_response
from app.ops.access import require
from app.sandbox import Sandbox, SandboxBusy

PATH = "/api/orders/expressions/jsonata"
# The route's body limit (app/bodies.py): a whole VTEX order as the document (the sample order
# with 2 items is 7 KB, ~3 KB an item) and an expression of at most MAX_EXPRESSION_CHARS.
MAX_BODY_BYTES = 1024 * 1024


def parse_request(body: bytes) -> tuple[str, str]:
    """The expression and the document (JSON text, checked here, parsed by the sandbox)."""
    test = decode(body, JsonataTest)
    try:
        orjson.loads(test.Document)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"`Document` is not valid JSON: {exc}") from exc
    return test.Expression, test.Document


def compile_error(exc: ExpressionError) -> Response:
    """400 for an expression that does not compile; 422 for one over the length limit."""
    if exc.limit is None:
        error = f"expression does not compile: {exc}"
        return _refused(JsonataFailed(error, exc.message, exc.position, None), 400)
    refused = f"expression refused: {exc.message}"
    return _refused(JsonataStopped(refused, exc.limit, exc.message, exc.position), 422)


def evaluation_error(exc: EvaluationError) -> Response:
    """400 for an expression that fails on the document; 422 when a limit stopped it."""
    error = f"evaluation failed: {exc}"
    if exc.limit is None:
        return _refused(JsonataFailed(error, limit=None), 400)
    return _refused(JsonataStopped(error, exc.limit), 422)


def _refused(answer: JsonataFailed | JsonataStopped, status: int) -> Response:
    return json_response(to_builtins(answer), status)


class JsonataEndpoint:
    """Evaluates in the sandbox's worker processes (app/sandbox.py), never in the gateway's."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sandbox = Sandbox()

    async def handle(self, request: Request) -> Response:
        require(request, self.settings, "ops")
        expression, document = parse_request(await request.body())  # within MAX_BODY_BYTES
        try:
            return json_response(await self.sandbox.test(expression, document))
        except ExpressionError as exc:
            return compile_error(exc)
        except EvaluationError as exc:
            return evaluation_error(exc)
        except SandboxBusy as exc:
            return json_response({"error": str(exc)}, 503, {"Retry-After": str(RETRY_AFTER_S)})

    async def close(self) -> None:
        await self.sandbox.close()


async def _test_in_sandbox(expression: str, document: str) -> bool:
    sandbox = Sandbox(workers=1)
    try:
        return await sandbox.test(expression, document)
    finally:
        await sandbox.close()


def cli_test(expression: str, document_path: str) -> int:
    """`orderhook jsonata test EXPRESSION --document FILE`: prints true or false."""
    try:
        document = Path(document_path).read_text()
        orjson.loads(document)
    except OSError as exc:
        print(f"orderhook: cannot read {document_path}: {exc.strerror}", file=sys.stderr)
        return 1
    except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        print(f"orderhook: {document_path} is not valid JSON: {exc}", file=sys.stderr)
        return 1
    try:
        print("true" if asyncio.run(_test_in_sandbox(expression, document)) else "false")
    except ExpressionError as exc:
        print(f"orderhook: expression does not compile: {exc}", file=sys.stderr)
        return 2
    except EvaluationError as exc:
        print(f"orderhook: evaluation failed: {exc}", file=sys.stderr)
        return 1
    return 0

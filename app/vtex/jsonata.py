"""JSONata testing as VTEX's `POST /api/orders/expressions/jsonata` does it.

The body is `{"Expression": "...", "Document": "<the order as a JSON string>"}`; the answer is
`true` when the expression yields `true` on the document (VTEX's FromOrders rule), else `false`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from app.config import Settings
from app.errors import BadRequest
from app.filters import EvaluationError, ExpressionError, compile_expression
from app.http import json_response
from app.ops.access import require

MAX_BODY_BYTES = 1024 * 1024


def test_expression(expression: str, document: Any) -> bool:
    """True when the expression yields `true`; ExpressionError or EvaluationError otherwise."""
    return compile_expression(expression).evaluate(document) is True


def parse_request(body: bytes) -> tuple[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("Expression"), str):
        raise BadRequest('give {"Expression": "<JSONata>", "Document": "<JSON as a string>"}')
    document = doc.get("Document")
    if not isinstance(document, str):
        raise BadRequest("`Document` must be the order as a JSON string, as in VTEX")
    try:
        return doc["Expression"], orjson.loads(document)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"`Document` is not valid JSON: {exc}") from exc


class JsonataEndpoint:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def handle(self, request: Request) -> Response:
        require(request, self.settings, "ops")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest(f"body is over {MAX_BODY_BYTES} bytes")
        expression, document = parse_request(body)
        try:
            return json_response(test_expression(expression, document))
        except ExpressionError as exc:
            return json_response(
                {
                    "error": f"expression does not compile: {exc}",
                    "message": exc.message,
                    "position": exc.position,
                },
                400,
            )
        except EvaluationError as exc:
            return json_response({"error": f"evaluation failed: {exc}"}, 400)


def cli_test(expression: str, document_path: str) -> int:
    """`orderhook jsonata test EXPRESSION --document FILE`: prints true or false."""
    try:
        document = orjson.loads(Path(document_path).read_bytes())
    except OSError as exc:
        print(f"orderhook: cannot read {document_path}: {exc.strerror}", file=sys.stderr)
        return 1
    except orjson.JSONDecodeError as exc:
        print(f"orderhook: {document_path} is not valid JSON: {exc}", file=sys.stderr)
        return 1
    try:
        print("true" if test_expression(expression, document) else "false")
    except ExpressionError as exc:
        print(f"orderhook: expression does not compile: {exc}", file=sys.stderr)
        return 2
    except EvaluationError as exc:
        print(f"orderhook: evaluation failed: {exc}", file=sys.stderr)
        return 1
    return 0

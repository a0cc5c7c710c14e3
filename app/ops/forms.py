"""The dashboard's forms: small urlencoded bodies (no multipart), their fields bounded."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl

from starlette.requests import Request

from app.errors import BadRequest, PayloadTooLarge

MAX_FORM_BYTES = 4096
MAX_FORM_FIELDS = 10
MAX_FIELD_CHARS = 200  # a dead letter's id: an event id (36) "." a subscription id (64)


async def read_form(request: Request) -> dict[str, str]:
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


async def form_fields(
    request: Request, required: Sequence[str] = (), optional: Sequence[str] = ()
) -> dict[str, str]:
    """A dashboard form of the `required` fields (not empty) and perhaps the `optional` ones,
    each at most MAX_FIELD_CHARS; any other field is refused."""
    fields = await read_form(request)
    unknown = sorted(set(fields) - {*required, *optional})
    if unknown:
        raise BadRequest(f"unknown form field {unknown[0]!r}")
    for name in required:
        if not fields.get(name):
            raise BadRequest(f"the form needs `{name}`")
    for name, value in fields.items():
        if len(value) > MAX_FIELD_CHARS:
            raise BadRequest(f"form field `{name}` is over {MAX_FIELD_CHARS} characters")
    return fields

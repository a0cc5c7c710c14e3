"""The API's typed bodies (app/api_types.py) and `/openapi.json` cannot differ.

Every JSON request body the document describes is the schema msgspec generates from the type its
handler decodes with, every generated component is in the document as generated, and a body the
type refuses is a 400 whose `error` names the field (so the handler does decode with that type).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from app.api_types import (
    REF_TEMPLATE,
    Commit,
    DlqPage,
    JsonataTest,
    NewSubscription,
    Replay,
    ReplayBody,
    Replayed,
    ReplayRange,
    RetryNow,
    RotateSecret,
    Stats,
    SubscriptionPatch,
    Subscriptions,
    decode,
)
from app.config import load_settings
from app.errors import BadRequest
from app.openapi import SCHEMAS, TYPED, document
from app.vtex.jsonata import PATH as JSONATA_PATH
from tests.conftest import gateway_config
from tests.relaying import ADMIN, Gateway, subscription
from tests.subscribers import Sink

# (path, method) -> the type its handler decodes the JSON body with (ReplayBody: Replay, and
# the either-or that the handler checks after decoding).
DECODED_WITH: dict[tuple[str, str], Any] = {
    ("/admin/dlq/replay", "post"): ReplayBody,
    (JSONATA_PATH, "post"): JsonataTest,
    ("/feed/{subscription}/commit", "post"): Commit,
    ("/admin/subscriptions/{id}/replay", "post"): ReplayRange,
    ("/admin/subscriptions", "post"): NewSubscription,
    ("/admin/subscriptions/{id}", "patch"): SubscriptionPatch,
    ("/admin/subscriptions/{id}/rotate-secret", "post"): RotateSecret,
}
# Bodies still read by hand, and described by hand: the hook (app.events.parse_body gives VTEX's
# own error texts; tests/test_openapi.py holds its patterns to what ingest takes).
READ_BY_HAND = {("/hooks/vtex", "post")}


def generated(kind: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    (schema,), components = msgspec.json.schema_components((kind,), ref_template=REF_TEMPLATE)
    return schema, components


def json_bodies(tmp_path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    doc = document(load_settings(gateway_config(tmp_path, "unused"), {}))
    return {
        (path, method): op["requestBody"]["content"]["application/json"]["schema"]
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if "application/json" in op.get("requestBody", {}).get("content", {})
    }


def test_every_json_request_body_is_the_generated_schema_of_its_type(tmp_path: Path) -> None:
    bodies = json_bodies(tmp_path)
    assert set(bodies) == set(DECODED_WITH) | READ_BY_HAND
    for where, kind in DECODED_WITH.items():
        schema, components = generated(kind)
        assert bodies[where] == schema, where
        assert {name: SCHEMAS[name] for name in components} == components, where


def test_every_typed_component_is_in_the_document_as_generated() -> None:
    _, components = msgspec.json.schema_components(TYPED, ref_template=REF_TEMPLATE)
    assert {name: SCHEMAS[name] for name in components} == components


@pytest.mark.parametrize(
    ("kind", "body", "field"),
    [
        (Replay, b'{"ids": [1]}', "$.ids[0]"),
        (Replay, b'{"subscription": ["a"]}', "$.subscription"),
        (Replay, b'{"ids": [], "id": "x"}', "unknown field 'id'"),
        (JsonataTest, b'{"Expression": "", "Document": "{}"}', "$.Expression"),
        (JsonataTest, b'{"Expression": "x"}', "`Document`"),
    ],
)
def test_decode_names_the_field_it_refuses(kind: Any, body: bytes, field: str) -> None:
    with pytest.raises(BadRequest, match=r"give ") as refused:
        decode(body, kind)
    assert field in str(refused.value)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/admin/dlq/replay", {"ids": "x"}, "$.ids"),
        ("/admin/dlq/replay", {"subscription": 7}, "$.subscription"),
        (JSONATA_PATH, {"Expression": "", "Document": "{}"}, "$.Expression"),
        (JSONATA_PATH, {"Expression": "x", "Document": ""}, "$.Document"),
    ],
)
async def test_a_body_its_type_refuses_is_a_400_naming_the_field(
    gateway: Gateway, sink: Sink, path: str, body: dict[str, Any], field: str
) -> None:
    assert (path, "post") in DECODED_WITH
    async with gateway(subscription(sink, "erp")) as client:
        r = await client.post(path, headers=ADMIN, json=body)
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    assert field in r.json()["error"]


@pytest.mark.anyio
async def test_the_answers_are_their_types(gateway: Gateway, sink: Sink) -> None:
    """Each typed answer decodes strictly as its type (no field missing, mistyped or extra)."""
    answers = {
        "/admin/subscriptions": Subscriptions,
        "/admin/dlq": DlqPage,
        "/ops/stats": Stats,
    }
    async with gateway(subscription(sink, "erp")) as client:
        for path, kind in answers.items():
            r = await client.get(path, headers=ADMIN)
            msgspec.json.decode(r.content, type=kind)
        r = await client.post("/admin/subscriptions/erp/retry-now", headers=ADMIN)
        msgspec.json.decode(r.content, type=RetryNow)
        r = await client.post("/admin/dlq/replay", headers=ADMIN, json={"ids": []})
        assert msgspec.json.decode(r.content, type=Replayed) == Replayed(0)

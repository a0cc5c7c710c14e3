"""VTEX filter semantics and JSONata compile errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from app.config import load_settings
from app.errors import ConfigError
from app.filters import (
    SINGLE_FIRE_RETENTION_S,
    EvaluationError,
    EveryEvent,
    ExpressionError,
    FromOrders,
    FromWorkflow,
    compile_expression,
    order_document,
    single_fire_s,
)

ORDER = json.loads((Path(__file__).parent / "data" / "order-ready-for-handling.json").read_text())
EVENT: dict[str, Any] = {
    "id": "e",
    "account": "mystore",
    "domain": "Fulfillment",
    "orderId": "1456780123456-01",
    "state": "ready-for-handling",
    "lastState": "window-to-cancel",
    "lastChange": "2024-03-15T14:25:02Z",
    "currentChange": "2024-03-15T14:25:03Z",
}


def test_order_document_names_fields_as_vtex_does() -> None:
    assert order_document(EVENT) == {
        "orderId": "1456780123456-01",
        "status": "ready-for-handling",
        "domain": "Fulfillment",
        "lastState": "window-to-cancel",
        "lastChange": "2024-03-15T14:25:02Z",
        "currentChange": "2024-03-15T14:25:03Z",
        "hostname": "mystore",
    }


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('status = "ready-for-handling"', True),
        ('status = "payment-pending"', False),
        ("value > 100", True),
        ('(status = "ready-for-handling" and salesChannel="2")', False),
        ("$count(items[name ~> /.*basica 2.*/i and price>=1000]) > 0", True),
        ("$count(items[price >= 10000]) > 0", False),
        ("orderId", False),  # a string result is not `true`
    ],
)
def test_vtex_documented_expressions_on_an_enriched_order(expression: str, expected: bool) -> None:
    flt = FromOrders(compile_expression(expression))
    enriched = {**EVENT, "order": ORDER}
    assert flt.matches(enriched, order_document(enriched)) is expected


def test_from_workflow_matches_the_state_including_null() -> None:
    flt = FromWorkflow(frozenset({"invoiced", None}))
    assert flt.matches({**EVENT, "state": "invoiced"}, {})
    assert flt.matches({**EVENT, "state": None}, {})
    assert not flt.matches(EVENT, {})


def test_run_time_failure_is_an_evaluation_error() -> None:
    with pytest.raises(EvaluationError, match="D3030"):
        compile_expression('$number("x")').evaluate({})


@pytest.mark.parametrize(
    ("expression", "position"),
    [("status = = 1", 10), ("value > 10000 andd status", 18), ("a.b[", 4)],
)
def test_compile_errors_carry_message_and_position(expression: str, position: int) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(expression)
    assert info.value.position == position
    assert info.value.message.startswith("S0")


def test_only_from_orders_fires_once_and_by_default_for_two_years() -> None:
    """VTEX: "If this field is `false` orders will appear in the feed only once"; it is sent
    with FromOrders only; orders are kept "created in the last two years"."""
    expression = compile_expression("true")
    assert single_fire_s(FromOrders(expression)) == SINGLE_FIRE_RETENTION_S == 63_072_000
    assert single_fire_s(FromOrders(expression, 0)) == 0  # disableSingleFire = true
    assert single_fire_s(FromWorkflow(frozenset({"invoiced"}))) == 0
    assert single_fire_s(EveryEvent()) == 0


SUBSCRIPTION = """
[[subscriptions]]
id = "s"
url = "https://example.com/in"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
filter = {filter}
"""


@pytest.mark.parametrize(
    ("filter_toml", "expected"),
    [
        ('{ type = "FromOrders", expression = "true" }', SINGLE_FIRE_RETENTION_S),
        ('{ type = "FromOrders", expression = "true", disableSingleFire = false }', 63_072_000),
        ('{ type = "FromOrders", expression = "true", disableSingleFire = true }', 0),
        ('{ type = "FromOrders", expression = "true", single_fire_retention_s = 86400 }', 86400),
    ],
)
def test_config_single_fire(tmp_path: Path, filter_toml: str, expected: int) -> None:
    path = tmp_path / "orderhook.toml"
    path.write_text(SUBSCRIPTION.format(filter=filter_toml))
    [sub] = load_settings(path, {}).subscriptions
    assert single_fire_s(sub.filter) == expected


@pytest.mark.parametrize(
    ("filter_toml", "message"),
    [
        (
            '{ type = "FromWorkflow", status = ["invoiced"], disableSingleFire = false }',
            "`subscriptions[0].filter.disableSingleFire` is for FromOrders filters only",
        ),
        (
            '{ type = "FromOrders", expression = "true", single_fire_retention_s = 0 }',
            "`subscriptions[0].filter.single_fire_retention_s` must be a positive number",
        ),
    ],
)
def test_config_refuses_single_fire_misuse(tmp_path: Path, filter_toml: str, message: str) -> None:
    path = tmp_path / "orderhook.toml"
    path.write_text(SUBSCRIPTION.format(filter=filter_toml))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(path, {})

"""VTEX's filter types, evaluated the way VTEX evaluates them, and JSONata transforms.

- `FromWorkflow`: the event's state is one of the listed statuses.
- `FromOrders`: a JSONata expression over the order document matches when it yields `true`.
- No filter: every event (VTEX's hook without a filter notifies every status change).

Expressions are compiled once, at start-up, by jsonatapy. One that fails at run time is a
non-match (for a filter) or a failed transform: counted and logged by the caller, never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jsonatapy

# Errors that only say "the expression stopped too early": a prefix of a valid expression.
_INCOMPLETE = ("S0207", "S0101", "S0203", "S0202", "Unexpected end")


class ExpressionError(ValueError):
    """A JSONata expression that does not compile; `position` is a 1-based character offset."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at character {position})")
        self.message = message
        self.position = position


class EvaluationError(Exception):
    """A compiled expression failed on this document."""


@dataclass(frozen=True)
class Expression:
    source: str
    compiled: Any = field(repr=False, compare=False)

    def evaluate(self, document: dict[str, Any]) -> Any:
        try:
            return self.compiled.evaluate(document)
        except Exception as exc:  # jsonatapy raises ValueError, but a Rust panic is not one
            raise EvaluationError(str(exc)) from exc


def compile_expression(source: str) -> Expression:
    """Compile, or raise ExpressionError with the message and where it went wrong."""
    try:
        return Expression(source, jsonatapy.compile(source))
    except ValueError as exc:
        raise ExpressionError(_clean(exc), error_position(source)) from exc


def _clean(exc: Exception) -> str:
    return str(exc).removeprefix("Parse error: ").removeprefix("Invalid syntax: ")


def error_position(source: str) -> int:
    """Where a bad expression goes wrong: jsonatapy reports no position, so find the shortest
    prefix that fails for a reason other than ending too early."""
    for end in range(1, len(source) + 1):
        if end < len(source) and _word(source[end - 1]) and _word(source[end]):
            continue  # never cut a name or a number in two
        try:
            jsonatapy.compile(source[:end])
        except ValueError as exc:
            if not any(code in str(exc) for code in _INCOMPLETE):
                return end
    return len(source)


def _word(char: str) -> bool:
    return char.isalnum() or char in "_$."


@dataclass(frozen=True)
class FromWorkflow:
    statuses: frozenset[str | None]

    def matches(self, event: dict[str, Any], document: dict[str, Any]) -> bool:
        return event.get("state") in self.statuses


@dataclass(frozen=True)
class FromOrders:
    expression: Expression

    def matches(self, event: dict[str, Any], document: dict[str, Any]) -> bool:
        return self.expression.evaluate(document) is True


@dataclass(frozen=True)
class EveryEvent:
    def matches(self, event: dict[str, Any], document: dict[str, Any]) -> bool:
        return True


Filter = FromWorkflow | FromOrders | EveryEvent


def order_document(event: dict[str, Any]) -> dict[str, Any]:
    """The order as far as the gateway knows it, named as in VTEX's order (Get Order)."""
    document = {
        "orderId": event["orderId"],
        "status": event["state"],
        "domain": event["domain"],
        "lastState": event["lastState"],
        "lastChange": event["lastChange"],
        "currentChange": event["currentChange"],
        "hostname": event["account"],
    }
    order = event.get("order")  # the full VTEX order, once enrichment exists
    return {**document, **order} if isinstance(order, dict) else document

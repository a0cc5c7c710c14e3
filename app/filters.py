"""VTEX's filter types, evaluated the way VTEX evaluates them, and JSONata transforms.

- `FromWorkflow`: the event's state is one of the listed statuses.
- `FromOrders`: a JSONata expression over the order document matches when it yields `true`;
  unless `disableSingleFire`, only an order's first match is notified (single fire, below).
- No filter: every event (VTEX's hook without a filter notifies every status change).

Expressions are compiled once, at start-up, by jsonatapy, and evaluated within limits (time,
call depth, sequence length: `Limits`); one longer than MAX_EXPRESSION_CHARS is refused. One that
fails at run time, or runs into a limit, is a non-match (for a filter) or a failed transform:
counted and logged by the caller, never a crash. Expressions from callers the gateway does not
trust are evaluated in app/sandbox.py's worker processes, never here; so are the config's
FromOrders filters (the router) and push transforms (delivery), whose workers compile them once
(app/sandbox.py's ConfigExpressions). A pull subscription's transform runs here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import jsonatapy

# Every expression the gateway compiles: longer ones are refused before jsonatapy sees them.
MAX_EXPRESSION_CHARS = 8 * 1024
# Filters and transforms from the config are evaluated with these limits (jsonatapy's own
# guardrails), in a worker process capped in memory (app/sandbox.py); where one is evaluated in
# the gateway's process (a pull subscription's transform), the time limit is also the longest
# it holds the loop, and callers in a loop let the loop run between evaluations. 25 ms: VTEX's
# documented filters take microseconds on a hook's order document and up to ~20 ms on an
# enriched order of 200 items (the regex one); `[delivery] jsonata_timeout_ms` raises it for
# larger orders (a filter over its limit is a non-match).
EVALUATION_TIMEOUT_MS = 25
MAX_JSONATA_TIMEOUT_MS = 1000
# A caller evaluating in a loop (the router, a feed take) pauses for EVALUATION_PAUSE_S after
# each EVALUATION_SLICE_S of work: long enough for the requests waiting on the event loop to get
# through the several turns each needs (`sleep(0)` would give them one).
EVALUATION_SLICE_S = 0.005
EVALUATION_PAUSE_S = 0.001
MAX_CALL_DEPTH = 500  # nested function calls; a recursive helper over an order needs tens
MAX_SEQUENCE_LENGTH = 100_000  # items in one intermediate sequence ([1..N], items[...], **)
MAX_MESSAGE_CHARS = 500  # of an error message kept (it may quote the document)
# Single fire (a FromOrders filter with `disableSingleFire: false`, VTEX's default): "If this
# field is `false` orders will appear in the feed only once" (VTEX's Orders API reference). An
# order's first match is remembered, per subscription, for as long as VTEX keeps the order: "You
# can only access information from orders created in the last two years" (Get order). The
# filter's `single_fire_retention_s` may shorten it, to bound the memory one key per order takes.
SINGLE_FIRE_RETENTION_S = 2 * 365 * 24 * 3600

# Errors that only say "the expression stopped too early": a prefix of a valid expression.
_INCOMPLETE = ("S0207", "S0101", "S0203", "Unexpected end")
# Two-character operators, never cut in two when looking for an error's position.
_OPERATORS = frozenset({"~>", ":=", "<=", ">=", "!=", "..", "**"})
# jsonatapy's codes for its guardrails, by the limit each enforces.
_LIMIT_CODES = {
    "D1012": "time",
    "D1011": "call depth",
    "U1001": "call depth",
    "D2014": "sequence length",
    "D2015": "sequence length",
}


@dataclass(frozen=True)
class Limits:
    """The guardrails jsonatapy applies to each evaluation of an expression."""

    timeout_ms: int = EVALUATION_TIMEOUT_MS
    max_call_depth: int = MAX_CALL_DEPTH
    max_sequence_length: int = MAX_SEQUENCE_LENGTH

    def describe(self, limit: str) -> str:
        value = {
            "time": f"{self.timeout_ms} ms",
            "call depth": f"{self.max_call_depth} nested calls",
            "sequence length": f"{self.max_sequence_length} items",
        }
        return f"the {limit} limit ({value.get(limit, '?')})"


IN_PROCESS = Limits()


class ExpressionError(ValueError):
    """A JSONata expression that does not compile; `position` is a 1-based character offset.
    `limit` names the limit it is over, if that is why (its length)."""

    def __init__(self, message: str, position: int, limit: str | None = None) -> None:
        super().__init__(f"{message} (at character {position})")
        self.message = message
        self.position = position
        self.limit = limit


class EvaluationError(Exception):
    """A compiled expression failed on this document; `limit` names the limit it hit, if any
    (time, call depth, sequence length, or, in the sandbox, memory)."""

    def __init__(self, message: str, limit: str | None = None) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class Expression:
    source: str
    compiled: Any = field(repr=False, compare=False)
    limits: Limits = IN_PROCESS

    def evaluate(self, document: dict[str, Any]) -> Any:
        try:
            return self.compiled.evaluate(document)  # within self.limits, set at compile time
        except Exception as exc:  # jsonatapy raises ValueError, but a Rust panic is not one
            raise evaluation_error(str(exc), self.limits) from exc


class Slices:
    """Tells a loop of evaluations when it has worked for EVALUATION_SLICE_S (and starts the
    next slice): then it should pause for EVALUATION_PAUSE_S."""

    def __init__(self) -> None:
        self._ends = time.monotonic() + EVALUATION_SLICE_S

    def over(self) -> bool:
        now = time.monotonic()
        if now < self._ends:
            return False
        self._ends = now + EVALUATION_SLICE_S
        return True


def evaluation_error(message: str, limits: Limits) -> EvaluationError:
    """The error for jsonatapy's message, saying which limit was hit if one was."""
    message = message[:MAX_MESSAGE_CHARS]
    limit = next((name for code, name in _LIMIT_CODES.items() if message.startswith(code)), None)
    if limit is None:
        return EvaluationError(message)
    return EvaluationError(f"stopped at {limits.describe(limit)}: {message}", limit)


def check_length(source: str) -> None:
    if len(source) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(
            f"the expression is {len(source)} characters, over the limit of {MAX_EXPRESSION_CHARS}",
            MAX_EXPRESSION_CHARS + 1,
            "expression length",
        )


def compile_expression(source: str, limits: Limits = IN_PROCESS) -> Expression:
    """Compile, or raise ExpressionError with the message and where it went wrong."""
    check_length(source)
    try:
        compiled = jsonatapy.compile(
            source,
            timeout=limits.timeout_ms,
            max_stack_depth=limits.max_call_depth,
            max_sequence_length=limits.max_sequence_length,
        )
    except ValueError as exc:
        raise ExpressionError(_clean(exc), error_position(source)) from exc
    return Expression(source, compiled, limits)


def _clean(exc: Exception) -> str:
    message = str(exc).removeprefix("Parse error: ").removeprefix("Invalid syntax: ")
    return message[:MAX_MESSAGE_CHARS]


def error_position(source: str) -> int:
    """Where a bad expression goes wrong: jsonatapy reports no position, so find the shortest
    prefix that fails for a reason other than ending too early. A binary search over the
    prefixes (never cutting a name or a number in two): O(n log n), where trying every prefix
    was O(n²) (10 s for 16 KB)."""
    ends = [end for end in range(1, len(source)) if not _inside_word(source, end)]
    ends.append(len(source))
    if not _fails_before_the_end(source):
        return len(source)
    low, high = 0, len(ends) - 1  # the prefix ending at ends[high] is known to fail
    while low < high:
        middle = (low + high) // 2
        if _fails_before_the_end(source[: ends[middle]]):
            high = middle
        else:
            low = middle + 1
    return ends[low]


def _fails_before_the_end(prefix: str) -> bool:
    try:
        jsonatapy.compile(prefix)
    except ValueError as exc:
        message = str(exc)
        if "S0208" in message and prefix.rstrip().endswith(("(", ",")):
            return False  # cut in a function's parameter list: `function(` at the end
        return not any(code in message for code in _INCOMPLETE)
    return False


def _inside_word(source: str, end: int) -> bool:
    """Cutting at `end` would split a name, a number or an operator."""
    if _word(source[end - 1]) and _word(source[end]):
        return True
    return source[end - 1 : end + 1] in _OPERATORS


def _word(char: str) -> bool:
    return char.isalnum() or char in "_$."


@dataclass(frozen=True)
class FromWorkflow:
    statuses: frozenset[str | None]

    def matches(self, event: dict[str, Any], document: dict[str, Any]) -> bool:
        return event.get("state") in self.statuses


@dataclass(frozen=True)
class FromOrders:
    """`single_fire_s`: how long an order's first match is remembered, so that its later matches
    are not notified (single fire); 0 with `disableSingleFire`: every match is notified."""

    expression: Expression
    single_fire_s: int = SINGLE_FIRE_RETENTION_S

    def matches(self, event: dict[str, Any], document: dict[str, Any]) -> bool:
        return self.expression.evaluate(document) is True


@dataclass(frozen=True)
class EveryEvent:
    def matches(self, event: dict[str, Any], document: dict[str, Any]) -> bool:
        return True


Filter = FromWorkflow | FromOrders | EveryEvent


def single_fire_s(flt: Filter) -> int:
    """How long an order's first match is remembered (0: every match is notified). Only
    FromOrders filters fire once: VTEX takes `disableSingleFire` with them alone."""
    return flt.single_fire_s if isinstance(flt, FromOrders) else 0


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

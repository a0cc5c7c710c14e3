"""Numbers that arrive as text (query strings, forms, headers): ASCII digits only.

`str.isdigit()` is True for "²" and "١٢", which `int()` refuses or reads as 12, and `int()`
refuses more than 4,300 digits: every number from outside is read here, so none of that reaches
a handler as a 500.
"""

from __future__ import annotations

from collections.abc import Mapping

from app.errors import BadRequest


def ascii_digits(raw: str) -> bool:
    """True for a non-empty run of 0-9 and nothing else (no sign, space, exponent or other
    script's digits)."""
    return raw.isascii() and raw.isdigit()


def parse_int(raw: str, name: str, low: int, high: int) -> int:
    """`raw` as an integer from `low` to `high` (both >= 0); BadRequest naming `name` if not."""
    if not (ascii_digits(raw) and len(raw) <= len(str(high)) and low <= int(raw) <= high):
        raise BadRequest(f"`{name}` must be an integer from {low} to {high}")
    return int(raw)


def int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """The query parameter `name` as an integer from `low` to `high`; `default` when absent."""
    raw = params.get(name)
    return default if raw is None else parse_int(raw, name, low, high)

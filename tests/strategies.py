"""Hypothesis strategies for what ingest accepts: the generic suites draw from the same values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

# Letters, digits and inner hyphens: a host name label, as VTEX account names are.
accounts = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?\Z")

# Order ids: VTEX's shapes, and any other text one path segment can carry (unicode included).
_SAFE_TEXT = st.characters(
    blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"),
    blacklist_characters="/\\?#%",
)
order_ids = st.from_regex(r"\A(v\d{8}[a-z]{4}|\d{13}|SLR-\d{6})-0[1-9]\Z") | st.text(
    _SAFE_TEXT, min_size=1, max_size=40
).filter(lambda s: s not in (".", ".."))


def rfc3339(moment: datetime, decimals: int) -> str:
    """`moment` as VTEX writes times (UTC, `decimals` fractional digits)."""
    base = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{moment.microsecond:06d}0"[:decimals] if decimals else ""
    return base + (f".{fraction.ljust(decimals, '0')}" if decimals else "") + "Z"


# Change times within what ingest accepts: from 1970 to the gateway's clock, any precision.
change_times = st.builds(
    rfc3339,
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime.now() - timedelta(days=1)).map(
        lambda d: d.replace(tzinfo=UTC)
    ),
    st.integers(0, 9),
)

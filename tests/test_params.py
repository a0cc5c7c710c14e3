"""Numbers from outside (query strings, a subscriber's Retry-After): ASCII digits or a 400."""

from __future__ import annotations

import pytest

from app.errors import BadRequest
from app.params import parse_int
from app.retry import parse_retry_after
from tests.relaying import ADMIN, Gateway, hook, subscription, until
from tests.subscribers import Reply, Sink
from tests.test_pull import FEED, PULL

NOT_NUMBERS = ["²", "١٢", "-1", "1e3", "99999999999999999999", "", " 5", "5 ", "+5", "9" * 5000]


@pytest.mark.parametrize("raw", NOT_NUMBERS)
def test_parse_int_takes_ascii_digits_in_range_only(raw: str) -> None:
    with pytest.raises(BadRequest, match="`limit` must be an integer from 1 to 500"):
        parse_int(raw, "limit", 1, 500)


@pytest.mark.parametrize(("raw", "value"), [("1", 1), ("500", 500), ("007", 7)])
def test_parse_int_reads_plain_numbers(raw: str, value: int) -> None:
    assert parse_int(raw, "limit", 1, 500) == value


@pytest.mark.anyio
@pytest.mark.parametrize("raw", NOT_NUMBERS)
async def test_limit_and_maxlot_superscript_two_is_400(gateway: Gateway, raw: str) -> None:
    """`limit=²` and `maxlot=²` were 500s (isdigit() is True, int() refuses); `maxlot=١٢` took
    12 items. Every numeric query parameter: a 400 naming it."""
    async with gateway(PULL.format(retention=60)) as client:
        cases = [
            ("/admin/dlq", "limit", ADMIN),
            ("/admin/dlq", "offset", ADMIN),
            ("/feed/pull", "maxlot", FEED),
        ]
        for path, name, headers in cases:
            r = await client.get(path, params={name: raw}, headers=headers)
            assert r.status_code == 400, (name, raw, r.status_code, r.text)
            assert r.json()["error"].startswith(f"`{name}` must be an integer from ")


@pytest.mark.parametrize("value", ["²", "١٢", "1e3", "-1"])
def test_retry_after_in_another_script_is_unusable(value: str) -> None:
    assert parse_retry_after(value) is None


@pytest.mark.anyio
async def test_retry_after_superscript_two_still_retries(gateway: Gateway, sink: Sink) -> None:
    """A subscriber's `Retry-After: ²` raised out of the delivery attempt: no retry, no dead
    letter, the event stuck in flight. It is an unusable Retry-After: the schedule applies."""
    sink.script("/up", Reply(503, headers={"Retry-After": "²"}))
    async with gateway(subscription(sink, "up")) as client:
        await hook(client)
        received = await sink.wait_for("/up", 2)
        await until(
            lambda: client.get("/ops/stats", headers=ADMIN),
            lambda r: r.json()["subscriptions"][0]["delivered"] == 1,
        )
    assert [r.status for r in received] == [503, 200]

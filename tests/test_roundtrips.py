"""Round trips to Redis where people wait: a page reads everything it shows in a fixed number of
pipelines, however many subscriptions there are (counted by bench/roundtrips.py's wrapper on
redis-py's connection: one send is one round trip)."""

from __future__ import annotations

import pytest
import redis

from app.store.client import open_store
from app.store.queries import Queries
from app.store.reads import Read, both, constant, gather, record
from app.store.schema import Keys
from bench.roundtrips import PAGES, counting_redis, seed, tallied
from tests.relaying import ADMIN, Gateway, subscription
from tests.subscribers import Sink

pytestmark = pytest.mark.anyio

AUTH_CHECK = 1  # the sign-in lockout check of a bearer token (app/ops/access.py)
# the dashboard: its snapshot, then the page's dead letters and the order's events
BUDGET = {
    "dashboard": AUTH_CHECK + 2,
    "dashboard+order": AUTH_CHECK + 2,
    "stats": AUTH_CHECK + 1,
    "metrics": AUTH_CHECK + 3,  # the figures, then /readyz's check (CONFIG GET, a write)
    "admin subscriptions": AUTH_CHECK + 2,  # the catalog, then every subscription's figures
}


async def round_trips(
    gateway: Gateway, sink: Sink, rdb: redis.Redis, keys: Keys, subs: int
) -> dict[str, int]:
    seed(rdb, keys, subs)
    config = "".join(subscription(sink, f"s{n}") for n in range(subs))
    async with gateway(config) as client:
        await client.get("/ops", headers=ADMIN)  # connections made
        with counting_redis():
            return {
                name: (await tallied(client, url, ADMIN)).round_trips for name, url in PAGES.items()
            }


@pytest.mark.parametrize("subs", [1, 5, 20])
async def test_each_page_costs_a_fixed_number_of_round_trips(
    gateway: Gateway, sink: Sink, rdb: redis.Redis, keys: Keys, subs: int
) -> None:
    assert await round_trips(gateway, sink, rdb, keys, subs) == BUDGET


def fake(size: int, tag: str) -> Read[list[str]]:
    """A read of `size` commands whose value is its replies, tagged."""
    return Read(lambda pipe: None, size, lambda replies: [f"{tag}{r}" for r in replies])


def test_combined_reads_take_their_own_replies_in_order() -> None:
    combined = record(
        lambda a, b, c: (a, b, c),
        fake(2, "a"),
        gather([fake(1, "g"), fake(0, "z"), fake(2, "h")]),
        constant(7),
    )
    assert combined.size == 5
    assert combined.parse([1, 2, 3, 4, 5]) == (["a1", "a2"], [["g3"], [], ["h4", "h5"]], 7)
    pair = both(fake(1, "x"), fake(1, "y"))
    assert pair.size == 2 and pair.parse([1, 2]) == (["x1"], ["y2"])
    assert fake(1, "m").map(len).parse([9]) == 1


async def test_dead_letters_refuse_one_str_for_the_subscriptions(
    redis_url: str, keys: Keys
) -> None:
    async with open_store(redis_url, keys, 2.0, 60) as store:
        queries = Queries(store)
        with pytest.raises(TypeError):
            await queries.dead_letters("erp", 0, 10)  # type: ignore[arg-type]
        assert await queries.dead_letters(("erp",), 0, 10) == ([], 0)

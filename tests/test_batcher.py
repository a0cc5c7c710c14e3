"""The group commit: each caller gets its own result, and one bad item fails only itself."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
import pytest

from app.errors import StoreUnavailable
from app.store.batcher import Batcher

pytestmark = pytest.mark.anyio


async def test_one_item_that_cannot_be_written_fails_alone_not_its_batch() -> None:
    """12.1/12.17 (the class): a batch that raised failed every caller in it; now its items are
    written one by one, and only the one at fault gets the error."""
    written: list[list[object]] = []

    async def write(items: Sequence[object]) -> list[bytes]:
        written.append(list(items))
        return [orjson.dumps(item) for item in items]  # a nesting orjson cannot write raises

    batcher: Batcher[object, bytes] = Batcher(write, "test", linger_s=0.01)
    batcher.start()
    bad: object = 1
    for _ in range(300):
        bad = [bad]
    try:
        results = await asyncio.gather(
            *(batcher.submit(item) for item in ({"a": 1}, bad, {"b": 2})), return_exceptions=True
        )
    finally:
        await batcher.close()
    assert results[0] == b'{"a":1}' and results[2] == b'{"b":2}'
    assert isinstance(results[1], orjson.JSONEncodeError)
    assert len(written[0]) == 3  # tried together first


async def test_store_unavailable_fails_the_whole_batch_at_once() -> None:
    calls = 0

    async def write(items: Sequence[object]) -> list[object]:
        nonlocal calls
        calls += 1
        raise StoreUnavailable("redis is unreachable")

    batcher: Batcher[object, object] = Batcher(write, "test", linger_s=0.01)
    batcher.start()
    try:
        results = await asyncio.gather(
            *(batcher.submit(i) for i in range(5)), return_exceptions=True
        )
    finally:
        await batcher.close()
    assert all(isinstance(r, StoreUnavailable) for r in results)
    assert calls == 1  # not retried item by item: Redis is the one thing down

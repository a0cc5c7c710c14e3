"""Router planning and transform cost: config expressions in-process (main) vs in the worker pool.

Run from the repository root (under a minute; no Redis, no network):

    .venv/bin/python -m bench.filters [--rounds 5] [--batches 20]

Planning: one 200-entry batch through `Router._plan_all` with 3 subscriptions (one FromOrders
filter, one FromWorkflow, one without a filter), for events as a hook carries them and for
events enriched with a full VTEX order (tests/data). Wall time per batch, and the gateway
process's own CPU time ("CPU": what the event loop spends; the worker's is not counted).
"before" is app/router.py at `--baseline` (default BASELINE_REV, the last commit whose router
evaluated every filter in the gateway's process; loaded with `git show`); "after" is this
tree's (FromOrders filters in one round trip to their worker). The two run interleaved,
`--rounds` times `--batches` batches each; medians are printed per batch.

Transforms: the CloudEvent body of one delivery attempt, built in-process (`build_body`, main)
and through `Transforms.body` (the pool): one attempt alone, and 64 attempts at once (they share
round trips), per attempt.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

from app.config import Settings
from app.delivery import Transforms, build_body
from app.filters import EveryEvent, FromOrders, FromWorkflow, compile_expression
from app.router import Router
from app.subscriptions.spec import Subscription

ROOT = Path(__file__).resolve().parent.parent
ORDER = orjson.loads((ROOT / "tests" / "data" / "order-ready-for-handling.json").read_bytes())
FILTER = 'status = "ready-for-handling" and $contains(orderId, "atmc") and hostname = "mystore"'
TRANSFORM = '{"order": orderId, "status": status, "account": hostname}'
BATCH = 200
CONCURRENT = 64


# The last commit whose router evaluated FromOrders filters in the gateway's own process.
BASELINE_REV = "f35ffeb"


def main_router(rev: str = BASELINE_REV) -> ModuleType:
    source = subprocess.run(
        ["git", "show", f"{rev}:app/router.py"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    spec = importlib.util.spec_from_loader("router_on_main", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{rev}:app/router.py", "exec"), module.__dict__)  # noqa: S102
    return module


def subscriptions() -> tuple[Subscription, ...]:
    url = "http://127.0.0.1:9/hook"
    return (
        Subscription("orders", url, (), FromOrders(compile_expression(FILTER))),
        Subscription("workflow", url, (), FromWorkflow(frozenset({"ready-for-handling"}))),
        Subscription("all", url, (), EveryEvent(), transform=compile_expression(TRANSFORM)),
    )


def event(n: int, enriched: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": f"evt-{n}",
        "account": "mystore",
        "orderId": f"v{5227774000 + n}atmc-01",
        "state": "ready-for-handling" if n % 2 else "invoiced",
        "domain": "Fulfillment",
        "lastState": "window-to-cancel",
        "lastChange": "2019-08-14T17:11:39.2550122Z",
        "currentChange": "2019-08-14T17:12:48.0965893Z",
        "receivedAt": "2019-08-14T17:12:48.100Z",
    }
    return {**doc, "order": ORDER} if enriched else doc


def entries(enriched: bool) -> list[tuple[str, bytes]]:
    return [(f"1-{n}", orjson.dumps(event(n, enriched))) for n in range(BATCH)]


def router(cls: type, settings: Settings) -> Any:
    return cls(settings, None, None)  # planning touches neither the store nor the deliverer


async def time_batches(
    plan: Any, batch: list[tuple[str, bytes]], count: int
) -> tuple[list[float], list[float]]:
    """Wall time and this process's CPU time (what the event loop spends) per batch."""
    wall, cpu = [], []
    for _ in range(count):
        started, started_cpu = time.perf_counter(), time.process_time()
        routed = await plan(batch)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
        assert len(routed) == BATCH
    return wall, cpu


async def planning(rounds: int, batches: int, baseline: str) -> None:
    settings = Settings(subscriptions=subscriptions())
    before = router(main_router(baseline).Router, settings)
    after = Router(settings, None, None, None)  # type: ignore[arg-type]
    for enriched in (False, True):
        batch = entries(enriched)
        await after._plan_all(batch)  # the worker started, its expressions compiled
        routed = await after._plan_all(batch)
        expected = await before._plan_all(batch)
        assert [[d.sub for d in r.deliveries] for r in routed] == [
            [d.sub for d in r.deliveries] for r in expected
        ]
        times: dict[str, list[float]] = {
            "before": [],
            "after": [],
            "before, CPU": [],
            "after, CPU": [],
        }
        for _ in range(rounds):
            for name, plan in (("before", before._plan_all), ("after", after._plan_all)):
                wall, cpu = await time_batches(plan, batch, batches)
                times[name] += wall
                times[f"{name}, CPU"] += cpu
        size = len(batch[0][1])
        what = f"planning, {BATCH} entries of {size:,} bytes ({'enriched' if enriched else 'hook'})"
        report(what, times, "per batch")
    await after.close()


async def transforms(rounds: int) -> None:
    sub = subscriptions()[2]
    pool = Transforms([sub])
    pool.start()
    items = [(event(n, True), orjson.dumps(event(n, True))) for n in range(CONCURRENT)]
    assert await pool.body(sub, *items[0]) == build_body(sub, items[0][0])
    times: dict[str, list[float]] = {"before": [], "after": [], "after, 64 at once": []}
    for _ in range(rounds):
        for doc, _ in items:
            started = time.perf_counter()
            build_body(sub, doc)
            times["before"].append(time.perf_counter() - started)
        for doc, raw in items:
            started = time.perf_counter()
            await pool.body(sub, doc, raw)
            times["after"].append(time.perf_counter() - started)
        started = time.perf_counter()
        await asyncio.gather(*(pool.body(sub, doc, raw) for doc, raw in items))
        times["after, 64 at once"].append((time.perf_counter() - started) / CONCURRENT)
    report("transform of an enriched order, per delivery attempt", times, "per attempt")
    await pool.close()


def report(what: str, times: dict[str, list[float]], unit: str) -> None:
    print(f"{what}: median {unit}")
    for name, values in times.items():
        print(f"  {name:<20} {statistics.median(values) * 1000:8.3f} ms   (n={len(values)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--baseline", default=BASELINE_REV, help="the router to compare with")
    args = parser.parse_args()
    print(
        f"Python {sys.version.split()[0]}; "
        f"before = {args.baseline}:app/router.py, after = this tree"
    )
    asyncio.run(planning(args.rounds, args.batches, args.baseline))
    asyncio.run(transforms(args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())

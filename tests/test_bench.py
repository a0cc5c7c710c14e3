"""The benchmarks: their README states the targets the code checks, and without wrk those that
need it stop at once with one line saying how to install it (exit 2), not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import delivery, ingest, ordering

ROOT = Path(__file__).resolve().parent.parent
README = ROOT.joinpath("bench", "README.md").read_text(encoding="utf-8")


def test_the_bench_readme_states_the_targets_the_code_checks() -> None:
    assert f"gateway requests/s >= {ingest.TARGET_RPS_RATIO:.0%} of the bare app's" in README
    assert f"gateway p99 < {ingest.TARGET_P99_MS:g} ms" in README
    steady = f"p50 < {delivery.TARGET_P50_MS:g} ms and p99 < {delivery.TARGET_P99_MS:g} ms"
    assert steady in README
    assert f">= {delivery.TARGET_DELIVERIES_PER_S:,.0f} deliveries/s sustained" in README
    assert f"target: at least {ordering.TARGET_RATIO:.0%}" in README


@pytest.mark.parametrize(
    "command",
    [["bench/ingest.py"], ["-m", "bench.delivery"], ["-m", "bench.scaleout"]]
    + [["-m", "bench.profile", "ingest"]],
)
def test_without_wrk_a_benchmark_says_to_install_it_and_exits_2(
    command: list[str], tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, *command],
        cwd=ROOT,
        env={"PATH": str(tmp_path), "HOME": str(tmp_path)},  # no wrk there
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert (
        done.stderr == "bench: wrk is not installed: apt-get install wrk (or put it on the PATH)\n"
    )
    assert done.stdout == ""

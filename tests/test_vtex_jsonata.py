"""JSONata testing, compatible with VTEX's endpoint, and its CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.relaying import ADMIN, Gateway, subscription
from tests.subscribers import Sink

ORDER = Path(__file__).parent / "data" / "order-ready-for-handling.json"
DOCUMENT = ORDER.read_text()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('status = "ready-for-handling"', True),
        ('status = "canceled"', False),
        ("value > 10000", True),
        ("$count(items[price >= 7000]) > 0", True),
        ("$count(items[price >= 10000]) > 0", False),
        ("items[0].name", False),  # not `true`
    ],
)
async def test_endpoint_answers_true_or_false_like_vtex(
    gateway: Gateway, sink: Sink, expression: str, expected: bool
) -> None:
    async with gateway(subscription(sink, "erp")) as client:
        r = await client.post(
            "/api/orders/expressions/jsonata",
            headers=ADMIN,
            json={"Expression": expression, "Document": DOCUMENT},
        )
    assert (r.status_code, r.json()) == (200, expected)


@pytest.mark.anyio
async def test_endpoint_errors(gateway: Gateway, sink: Sink) -> None:
    url = "/api/orders/expressions/jsonata"
    async with gateway(subscription(sink, "erp")) as client:
        bad = await client.post(
            url, headers=ADMIN, json={"Expression": "value > 1 andd x", "Document": DOCUMENT}
        )
        assert bad.status_code == 400
        assert (bad.json()["position"], bad.json()["message"].startswith("S0201")) == (14, True)
        doc = await client.post(url, headers=ADMIN, json={"Expression": "x", "Document": {}})
        assert doc.status_code == 400 and "as a JSON string" in doc.json()["error"]
        assert (
            await client.post(url, json={"Expression": "x", "Document": "{}"})
        ).status_code == 401


def jsonata_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "jsonata", "test", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_cli(tmp_path: Path) -> None:
    assert jsonata_cli("value > 10000", "--document", str(ORDER)).stdout == "true\n"
    assert jsonata_cli('status = "canceled"', "--document", str(ORDER)).stdout == "false\n"
    bad = jsonata_cli("value >", "--document", str(ORDER))
    assert bad.returncode == 2 and "at character" in bad.stderr
    missing = jsonata_cli("x", "--document", str(tmp_path / "nope.json"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    junk = tmp_path / "junk.json"
    junk.write_bytes(b"{")
    assert "not valid JSON" in jsonata_cli("x", "--document", str(junk)).stderr
    assert orjson.loads(jsonata_cli("true", "--document", str(ORDER)).stdout) is True

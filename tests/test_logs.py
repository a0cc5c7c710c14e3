"""One JSON line per ingest and delivery outcome; no token, secret or auth header, ever."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from app.logs import LINE_FORMAT, OneLineFormatter, one_line
from app.store.schema import Keys
from tests.conftest import AUTH, CONFIG_TOML, HEADER, TOKEN, Gateway, notification
from tests.relaying import SECRET, subscription
from tests.subscribers import Reply, Sink
from tests.test_dashboard_browser import config


def test_outcome_lines_are_json_and_hold_no_secret(
    redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    log = tmp_path / "gateway.log"
    with Sink() as sink:
        sink.script("/wms", Reply(500))
        env = {**os.environ, "REDIS_URL": redis_url, "ORDERHOOK_ADMIN_TOKEN": "admin-s3cret"}
        gateway = Gateway(config(tmp_path, keys.prefix, sink), env, log).start()
        try:
            event_id = httpx.post(
                gateway.url + "/hooks/vtex", json=notification(), headers=AUTH
            ).json()["id"]
            httpx.post(gateway.url + "/hooks/vtex", json=notification(), headers=AUTH)
            wrong = {HEADER: "not-" + TOKEN, "Content-Type": "application/json"}
            httpx.post(gateway.url + "/hooks/vtex", json=notification(), headers=wrong)
            httpx.get(gateway.url + "/ops/stats", headers={"Authorization": "Bearer admin-s3cret"})
            sink.wait_for_sync(lambda: len(sink.at("/wms")) >= 2, 10, "the retry")
        finally:
            gateway.stop()
    text = log.read_text()
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    ingest = [(rec["outcome"], rec.get("eventId")) for rec in lines if rec["kind"] == "ingest"]
    assert ingest == [("accepted", event_id), ("duplicate", event_id), ("rejected", None)]
    deliveries = {
        (rec["subscription"], rec["outcome"], rec["status"])
        for rec in lines
        if rec["kind"] == "delivery"
    }
    assert {
        ("erp", "delivered", 200),
        ("wms", "retry", 500),
        ("wms", "delivered", 200),
    } <= deliveries
    assert all(rec["orderId"] == "v52277740atmc-01" for rec in lines if rec.get("orderId"))
    for secret in (TOKEN, "not-" + TOKEN, "admin-s3cret", SECRET, SECRET.removeprefix("whsec_")):
        assert secret not in text


INJECTION = "handling\nINJECTED 2024-01-01 00:00:00,000 ERROR forged line\x1b[31mred\u2028tail\x85"


def test_newline_in_an_event_cannot_forge_a_stderr_line(
    redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """A JSONata error quoting the event (here its State) holding a newline and an ANSI escape
    wrote two lines, the second forged, and a colour code to stderr. Now each record is one line,
    its control characters escaped."""
    log = tmp_path / "gateway.log"
    with Sink() as sink:
        failing = '{ type = "FromOrders", expression = "$error(status)" }'
        path = tmp_path / "orderhook.toml"
        path.write_text(
            CONFIG_TOML.replace("{prefix}", keys.prefix) + subscription(sink, "erp", filter=failing)
        )
        gateway = Gateway(path, {**os.environ, "REDIS_URL": redis_url}, log).start()
        try:
            r = httpx.post(
                gateway.url + "/hooks/vtex", json=notification(State=INJECTION), headers=AUTH
            )
            assert r.status_code == 200
            deadline = time.monotonic() + 10
            while "INJECTED" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            gateway.stop()
    text = log.read_text()
    assert "\x1b" not in text and "\u2028" not in text and "\x85" not in text
    records = [line for line in text.splitlines() if not line.startswith("{")]
    assert records and all(
        re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ", line) for line in records
    ), records
    [injected] = [line for line in records if "INJECTED" in line]
    assert "handling\\nINJECTED 2024-01-01" in injected
    assert "\\x1b[31mred\\u2028tail\\x85" in injected
    assert any(" uvicorn.error " in line for line in records)  # uvicorn's lines: the same format


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("a\nb", "a\\nb"),
        ("a\r\nb", "a\\r\\nb"),
        ("\x1b[2J", "\\x1b[2J"),
        ("\x00\x07\x7f\x9b", "\\x00\\x07\\x7f\\x9b"),
        ("line\u2028sep\u2029", "line\\u2028sep\\u2029"),
        ("\u202eevil", "\\u202eevil"),
        ("tab\there", "tab\\there"),
        ("é ü 中 ✓", "é ü 中 ✓"),
    ],
)
def test_one_line_escapes_controls_only(text: str, shown: str) -> None:
    assert one_line(text) == shown


def test_formatter_folds_a_traceback_into_its_record() -> None:
    formatter = OneLineFormatter(LINE_FORMAT)
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed: %s", ("x\ny",), None)
        record.exc_info = sys.exc_info()
    line = formatter.format(record)
    assert "\n" not in line
    assert "failed: x\\ny\\nTraceback" in line and "ValueError: bad\\nvalue" in line

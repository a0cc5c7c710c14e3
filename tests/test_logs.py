"""One JSON line per ingest and delivery outcome; no token, secret or auth header, ever."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import orjson

from app.store.keys import Keys
from tests.conftest import AUTH, HEADER, TOKEN, Gateway, notification
from tests.relaying import SECRET
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

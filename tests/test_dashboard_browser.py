"""The dashboard in a real headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from app.store.keys import Keys
from tests.conftest import AUTH, CONFIG_TOML, Gateway, notification
from tests.relaying import SECRET
from tests.subscribers import Reply, Sink

CHROMIUM = os.environ.get("ORDERHOOK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def config(tmp_path: Path, prefix: str, sink: Sink) -> Path:
    text = CONFIG_TOML.replace("{prefix}", prefix)
    for sub in ("erp", "wms"):
        text += (
            f'\n[[subscriptions]]\nid = "{sub}"\nurl = "{sink.url("/" + sub)}"\n'
            f'secret = "{SECRET}"\nretry_schedule = [0.05, 0.05]\ntimeout = 2\n'
        )
    path = tmp_path / "dashboard.toml"
    path.write_text(text)
    return path


def test_dashboard_shows_deliveries_and_dead_letters_and_replays(
    redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does)")
    import httpx

    with Sink() as sink:
        sink.script("/wms", Reply(200), Reply(500), Reply(500), Reply(500))
        env = {**os.environ, "REDIS_URL": redis_url, "ORDERHOOK_ADMIN_TOKEN": "admin-token"}
        gateway = Gateway(config(tmp_path, keys.prefix, sink), env, tmp_path / "gw.log").start()
        try:
            for state in ("ready-for-handling", "invoiced"):
                r = httpx.post(
                    gateway.url + "/hooks/vtex", json=notification(State=state), headers=AUTH
                )
                assert r.status_code == 200
            sink.wait_for_sync(lambda: len(sink.at("/wms")) >= 4, 10, "dead letter")
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1500, "height": 1100})
                console: list[str] = []
                page.on("console", lambda message: console.append(message.text))
                page.goto(gateway.url + "/ops")
                page.fill("#token", "admin-token")
                page.click("#login")
                page.wait_for_selector("#subscriptions")
                page.wait_for_function(
                    "document.querySelector('#dlq') && "
                    "document.querySelector('#dlq').innerText.includes('HTTP 500')",
                    timeout=10_000,
                )
                assert "delivered" in page.inner_text("#attempts")
                # the Content-Security-Policy lets the page's own stylesheet apply, nothing else
                background = page.evaluate("getComputedStyle(document.body).backgroundColor")
                assert background == "rgb(250, 250, 250)"
                assert "invoiced" not in page.inner_text("#sub-erp")  # a table of health
                assert page.get_attribute("#sub-wms", "class") == "bad"
                assert page.get_attribute("#sub-erp", "class") == "ok"
                screenshot = tmp_path / "dashboard.png"
                page.screenshot(path=str(screenshot), full_page=True)
                if os.environ.get("ORDERHOOK_SCREENSHOT"):
                    shutil.copy(screenshot, os.environ["ORDERHOOK_SCREENSHOT"])
                page.click("#replay-wms")  # the subscriber answers 200 again by now
                sink.wait_for_sync(lambda: len(sink.at("/wms")) >= 5, 10, "the replay")
                page.wait_for_selector("p#dlq", timeout=10_000)  # "the queue is empty"
                browser.close()
            assert not [m for m in console if "Content Security Policy" in m], console
            replayed = sink.at("/wms")[-1]
            assert replayed.headers["webhook-id"] == sink.at("/wms")[1].headers["webhook-id"]
        finally:
            gateway.stop()

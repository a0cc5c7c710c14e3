"""The dashboard in a real headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from app.store.schema import Keys
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


@pytest.fixture(autouse=True)
def needs_chromium() -> None:
    """Every test here needs Chromium: skipped, saying how to get it, where it is absent;
    under CI (`CI=true`) a failure instead, so a CI run without the browser cannot pass."""
    if Path(CHROMIUM).exists():
        return
    missing = (
        f"{CHROMIUM} is missing: `apt-get install chromium` (Debian's), or set "
        "ORDERHOOK_CHROMIUM to a Chromium binary"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"{missing}; CI=true: the browser test must run")
    pytest.skip(missing)


@contextmanager
def signed_in_page(url: str, height: int = 1100, javascript: bool = True) -> Iterator[Page]:
    """The dashboard at `url` in headless Chromium, signed in as admin; afterwards, no
    Content-Security-Policy complaint may have reached the console."""
    console: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(
            viewport={"width": 1500, "height": height}, java_script_enabled=javascript
        )
        page.on("console", lambda message: console.append(message.text))
        page.goto(url + "/ops")
        page.fill("#token", "admin-token")
        page.click("#login")
        page.wait_for_selector("#subscriptions")
        page.wait_for_load_state()
        yield page
        browser.close()
    assert not [m for m in console if "Content Security Policy" in m], console


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
            with signed_in_page(gateway.url) as page:
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
            replayed = sink.at("/wms")[-1]
            assert replayed.headers["webhook-id"] == sink.at("/wms")[1].headers["webhook-id"]
        finally:
            gateway.stop()


REFRESH_S = 1  # the dashboard's refresh, shortened for these tests ([ops] dashboard_refresh_s)


@contextmanager
def signed_in(
    redis_url: str, keys: Keys, tmp_path: Path, javascript: bool = True
) -> Iterator[Page]:
    """A dashboard refreshing every REFRESH_S, open and signed in as admin in Chromium."""
    with Sink() as sink:
        path = config(tmp_path, keys.prefix, sink)
        path.write_text(path.read_text() + f"\n[ops]\ndashboard_refresh_s = {REFRESH_S}\n")
        env = {**os.environ, "REDIS_URL": redis_url, "ORDERHOOK_ADMIN_TOKEN": "admin-token"}
        gateway = Gateway(path, env, tmp_path / "gw.log").start()
        try:
            with signed_in_page(gateway.url, javascript=javascript) as page:
                yield page
        finally:
            gateway.stop()


def test_typing_an_order_id_survives_the_refresh(
    redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """The 5-second refresh wiped the search box while someone typed in it."""
    with signed_in(redis_url, keys, tmp_path) as page:
        page.wait_for_event("load", timeout=REFRESH_S * 3000)  # idle: it refreshes
        assert page.evaluate("performance.getEntriesByType('navigation')[0].type") == "reload"
        loads: list[str] = []
        page.on("load", lambda _: loads.append(page.url))
        box = page.locator('input[name="orderId"]')
        box.click()
        started = time.monotonic()
        box.press_sequentially("v52277740atmc-01", delay=200)  # over 3 refresh periods
        assert time.monotonic() - started > 2 * REFRESH_S
        assert box.input_value() == "v52277740atmc-01" and not loads
        page.click("h1")  # elsewhere: the box keeps what was typed, so no refresh yet
        page.wait_for_timeout(REFRESH_S * 2500)
        assert box.input_value() == "v52277740atmc-01" and not loads
        box.press("End")
        box.press("Enter")  # the search: its results refresh while no one types again
        page.wait_for_selector("#search")
        page.wait_for_event("load", timeout=REFRESH_S * 3000)
        assert "orderId=v52277740atmc-01" in page.url
        assert page.locator('input[name="orderId"]').input_value() == "v52277740atmc-01"


def test_without_script_the_dashboard_still_refreshes(
    redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    with signed_in(redis_url, keys, tmp_path, javascript=False) as page:
        page.wait_for_event("load", timeout=REFRESH_S * 3000)  # the <noscript> meta refresh
        assert page.locator("#subscriptions").count() == 1


OUTAGE_EVENTS = 70
OUTAGE_BREAKER = 55  # failures in a row that open wms's breaker: by then 55 dead letters


def outage_config(tmp_path: Path, prefix: str, sink: Sink) -> Path:
    """erp healthy; wms dead-letters each failure at once and opens its breaker (cooling down
    10 minutes) after OUTAGE_BREAKER failures in a row."""
    text = CONFIG_TOML.replace("{prefix}", prefix)
    text += (
        f'\n[[subscriptions]]\nid = "erp"\nurl = "{sink.url("/erp")}"\nsecret = "{SECRET}"\n'
        f'\n[[subscriptions]]\nid = "wms"\nurl = "{sink.url("/wms")}"\nsecret = "{SECRET}"\n'
        f"retry_schedule = []\nbreaker_threshold = {OUTAGE_BREAKER}\nbreaker_cooldown = 600\n"
    )
    path = tmp_path / "outage.toml"
    path.write_text(text)
    return path


def screenshots(tmp_path: Path) -> Path:
    """Where the screenshots go: $ORDERHOOK_SCREENSHOTS (a directory), else the test's own."""
    folder = Path(os.environ.get("ORDERHOOK_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_outage_shows_the_open_breaker_pages_dead_letters_and_retry_now_closes_it(
    redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """A subscriber answering 500 until its breaker opens with over 50 dead letters: the
    dashboard shows the breaker and its next probe, the dead letters' total and a second page;
    Retry now closes the breaker and the waiting deliveries go."""
    import httpx

    shots = screenshots(tmp_path)
    with Sink() as sink:
        sink.rule("/wms", fail=lambda body: True)
        env = {**os.environ, "REDIS_URL": redis_url, "ORDERHOOK_ADMIN_TOKEN": "admin-token"}
        path = outage_config(tmp_path, keys.prefix, sink)
        gateway = Gateway(path, env, tmp_path / "gw.log").start()
        try:
            for n in range(OUTAGE_EVENTS):
                order = notification(OrderId=f"v{5000 + n}-01", State="invoiced")
                r = httpx.post(gateway.url + "/hooks/vtex", json=order, headers=AUTH)
                assert r.status_code == 200
            sink.wait_for_sync(lambda: len(sink.at("/erp")) >= OUTAGE_EVENTS, 20, "erp")
            sink.wait_for_sync(lambda: len(sink.at("/wms")) >= OUTAGE_BREAKER, 20, "failures")
            with signed_in_page(gateway.url, height=1000) as page:
                breaker = page.inner_text("#breaker-wms")
                assert breaker.startswith("open"), breaker
                assert f"{OUTAGE_BREAKER} failures in a row" in breaker
                assert re.search(
                    r"next probe 20[-\d]{8} [:\d]{8} UTC \(in \d+(\.\d)? min\)", breaker
                )
                assert page.get_attribute("#sub-wms", "class") == "bad"
                summary = page.inner_text("#dlq-summary")
                total = int(summary.split()[0])
                assert total > 50 and f"1 to 50, page 1 of {-(-total // 50)}" in summary
                assert page.locator("#dlq tr").count() == 51  # the heading and 50 rows
                page.screenshot(path=str(shots / "outage-breaker-open.png"))
                page.click("#dlq-older")
                page.wait_for_url("**/ops?page=2")
                assert f"51 to {min(total, 100)}, page 2" in page.inner_text("#dlq-summary")
                assert page.locator("#dlq tr").count() == min(total, 100) - 50 + 1
                assert "UTC" in page.inner_text("#dlq tr:nth-child(2) td:first-child")
                page.screenshot(path=str(shots / "dlq-paged.png"))
                sent_before = len(sink.at("/wms"))
                sink.rule("/wms")  # the subscriber is back
                page.click("#retry-now-wms")
                page.wait_for_function(
                    "document.querySelector('#breaker-wms').innerText.startsWith('closed')",
                    timeout=10_000,
                )
                assert page.locator("#retry-now-wms").count() == 0
                sink.wait_for_sync(
                    lambda: len(sink.at("/wms")) >= sent_before + OUTAGE_EVENTS - total,
                    10,
                    "the waiting deliveries, sent at once",
                )
            assert all(r.status == 200 for r in sink.at("/wms")[sent_before:])
        finally:
            gateway.stop()


def test_pause_then_resume_from_the_subscription_page(
    redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    with signed_in(redis_url, keys, tmp_path) as page:
        page.click('#sub-erp a[href="/ops/subscriptions/erp"]')
        page.wait_for_selector("#pause")
        assert page.inner_text("td#state") == "enabled"
        assert page.inner_text("td#origin") == "config"
        page.click("#pause")
        page.wait_for_selector("#resume")
        assert page.inner_text("td#state") == "paused" and page.url.endswith("/subscriptions/erp")
        page.click("#resume")
        page.wait_for_selector("#pause")
        assert page.inner_text("td#state") == "enabled"
        changes = page.inner_text("#changes")
        assert changes.index("resume") < changes.index("pause")
        assert "dashboard (admin)" in changes

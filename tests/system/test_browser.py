"""A real browser (Debian's chromium, driven by selenium through chromedriver) uses the
service: a page from another origin calls the API and follows the event stream, and
`/docs` renders with no request leaving the service.

Chromium is not optional here: without it this test fails, it is never skipped
(`.ci/run` installs `chromium` and `chromium-driver`). Nothing is downloaded."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from devtools.simulator_server import serve_in_thread
from tests.servers import app_process
from tests.support import Tenant, new_number
from tests.system.conftest import post_telnyx_inbound

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
PAGE = Path(__file__).parent / "pages" / "frontend.html"
# Generous: a browser start on a busy machine, not an assumption about speed.
WAIT_SECONDS = 30


@contextmanager
def chromium() -> Iterator[WebDriver]:
    """Headless chromium with a fresh profile; fails loudly when it is not installed."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: apt-get install -y {package} (.ci/run does)")
    # Selenium never looks for (or downloads) a browser or a driver of its own.
    os.environ["SE_OFFLINE"] = "true"
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            yield driver
        finally:
            driver.quit()


def wait_for_text(driver: WebDriver, css: str, wanted: str) -> None:
    """Until the element's text holds `wanted` (with the page's log when it never does)."""

    def holds(d: WebDriver) -> bool:
        return wanted in d.find_element(By.CSS_SELECTOR, css).text

    try:
        WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.1).until(holds)
    except Exception as exc:
        shown = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(
            f"{wanted!r} never shown in {css}; page: {shown!r}; log: {driver.get_log('browser')}"
        ) from exc


async def frontend_page(_: Request) -> HTMLResponse:
    return HTMLResponse(PAGE.read_text())


async def test_a_page_from_another_origin_calls_the_api_and_follows_the_event_stream(
    system_env: dict[str, str], telnyx_key: Any
) -> None:
    """The page (served from another port: another origin) reads the caller, sends a
    message (a JSON POST with Authorization and Idempotency-Key: preflighted), gets a
    stream ticket and opens `new EventSource(url + "?ticket=...")`. A patient's text
    then arrives as a signed carrier webhook, and the page shows it and the auto-reply."""
    frontend = serve_in_thread(Starlette(routes=[Route("/", frontend_page)]))
    try:
        env = {**system_env, "CORS_ALLOWED_ORIGINS": frontend.url}
        with app_process(env) as api:
            async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
                tenant = await Tenant.create(client)
                bob, line = await tenant.add_auto_replying_user(
                    "bob", "102", "Thanks, the clinic will call you back."
                )
                with chromium() as browser:
                    browser.get(frontend.url + "/")
                    assert browser.execute_script("return location.origin") != api.url
                    browser.execute_script(
                        "start(arguments[0], arguments[1], arguments[2])",
                        api.url,
                        bob.token,
                        tenant.admin.username,
                    )
                    wait_for_text(browser, "#status", "open")
                    # The send went through its preflight; the exposed request id is read.
                    sent = browser.find_element(By.ID, "sent").text
                    assert sent.startswith("201 ") and len(sent.split()[1]) > 8, sent

                    patient = new_number()
                    r = await post_telnyx_inbound(
                        client, telnyx_key, patient, line, "Can I come at 3pm?"
                    )
                    assert r.status_code == 200, r.text
                    wait_for_text(browser, "#events", "inbound: Can I come at 3pm?")
                    wait_for_text(
                        browser, "#events", "outbound: Thanks, the clinic will call you back."
                    )
    finally:
        frontend.stop()


async def test_docs_render_in_a_browser_with_nothing_loaded_from_elsewhere(
    system_env: dict[str, str],
) -> None:
    with app_process(system_env) as api, chromium() as browser:
        browser.get(api.url + "/docs")
        wait_for_text(browser, ".swagger-ui .info .title", "Messaging service")
        wait_for_text(browser, ".swagger-ui", "/v1/events/tickets")
        loaded = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert loaded, "the page loaded nothing"
        assert [u for u in loaded if not u.startswith(api.url + "/")] == [], loaded

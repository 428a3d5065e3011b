"""The dashboard in a real browser: headless Chromium, driven by Playwright, logs in, creates a key, and sees a
request sent with that key (through the gateway, by the official SDK) on the requests page and in the charts.

Without Chromium or Playwright the test skips and says why, except under CI, which installs both
(scripts/test.sh runs scripts/install-browser.sh): there it fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.test_admin import TOKEN, admin_gateway
from tests.browser.chromium import browser, problem
from tests.conftest import Gateway, Upstream


@pytest.fixture()
def gw(upstream: Upstream, tmp_path: Path) -> Iterator[Gateway]:
    why = problem()
    if why is not None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"no browser for the dashboard test: {why}")
        pytest.skip(f"no browser for the dashboard test: {why}")
    gateway = admin_gateway(upstream, tmp_path / "tollway.db")
    yield gateway
    gateway.server.close()


def test_log_in_create_a_key_and_see_its_request(gw: Gateway) -> None:
    with browser() as context:
        page = context.new_page()
        page.goto(gw.url + "/dashboard/")
        assert page.url.endswith("/dashboard/login")
        page.fill("input[name=token]", "not-the-admin-token")
        page.click("button[type=submit]")
        assert "That is not the admin token." in page.inner_text("[role=alert]")
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url("**/dashboard/")
        # Chromium kept the Secure cookie on plain http://127.0.0.1, and no script can read it.
        (cookie,) = [c for c in context.cookies() if c["name"] == "tollway_session"]
        assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.get_attribute("svg[data-chart=requests]", "data-total") == "0"

        page.click("text=Accounts & keys")
        page.fill("#create-key input[name=name]", "browser-key")
        page.fill("#create-key input[name=rpm]", "30")
        page.click("#create-key button[type=submit]")
        secret = page.inner_text("#secret").strip()
        assert secret.startswith("tw-")

        raw = gw.client(secret).messages.with_raw_response.create(
            model="claude-sonnet-4-6", max_tokens=16, messages=[{"role": "user", "content": "hello"}])
        request_id = raw.headers["request-id"]

        page.click("text=Requests")
        row = page.locator(f'tr[data-request-id="{request_id}"]')
        assert row.count() == 1
        assert request_id in row.inner_text() and "browser-key" in row.inner_text()
        page.fill("input[name=key]", "browser-key")
        page.click("form.filters button[type=submit]")
        assert page.locator("#requests tbody tr[data-request-id]").count() == 1

        page.click("text=Overview")
        assert page.get_attribute("svg[data-chart=requests]", "data-total") == "1"
        bars = page.locator('svg[data-chart=requests] rect[data-series="answered"]')
        assert bars.count() == 1 and bars.get_attribute("data-value") == "1"
        assert int(page.get_attribute("svg[data-chart=tokens]", "data-total") or 0) > 0
        assert page.inner_text("#total-requests") == "1"

        page.click("text=Accounts & keys")
        assert secret not in page.content()
        page.click("text=Log out")
        page.wait_for_url("**/dashboard/login")
        page.goto(gw.url + "/dashboard/requests")
        assert page.url.endswith("/dashboard/login")

"""The console in a real browser: headless Chromium (Debian's package, driven by Playwright) signs
in through the login form, with JavaScript off, and opens every page of a running `retentiond
run`; each page is screenshotted (var/test-artifacts/console/) and its DOM shows the figures the
admin API returns."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from db.database import close_database, init_database
from db.models import InboundEvent
from ops.harness.daemon import REPO, DaemonProcess, base_env, cli
from tests.support.prometheus import require_tool
from tests.support.waiting import wait_until

TOKEN = "admin-token-0123456789abcdef"
ARTIFACTS = REPO / "var" / "test-artifacts" / "console"
CAMPAIGN = {"slug": "welcome", "name": "Welcome series", "trigger": {"event": "contact.upsert"},
            "steps": [{"channel": "email", "delay": "0s", "subject": "Hi {{ contact.name }}",
                       "body": "Offer: {{ link('https://example.com/o') }}"},
                      {"channel": "sms", "delay": "1d", "body": "Still there?"}]}


def api(daemon: DaemonProcess, method: str, path: str, body: object | None = None) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.admin_port}/api/v1{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.fixture
def daemon(tmp_path: Path, daemons: list) -> Iterator[DaemonProcess]:
    env = base_env(DATABASE_URL=f"sqlite:///{tmp_path / 'r.db'}", ADMIN_TOKEN=TOKEN, DAILY_CAP="0", QUIET_HOURS="off")
    assert cli("migrate", env=env).returncode == 0
    running = DaemonProcess(env, tmp_path)
    daemons.append(running)
    running.start()
    api(running, "PUT", "/campaigns", CAMPAIGN)
    for i, name in enumerate(("Ada", "Grace", "Edsger")):
        api(running, "POST", "/contacts", {"email": f"c{i}@example.com", "name": name})
    api(running, "POST", "/contacts/1/suppressions", {"channel": "sms"})
    init_database(running.env["RETENTIOND_DATABASE_URL"])
    try:  # one failure to show: an event a sender got wrong
        InboundEvent.create(source="shop", event_id="bad-1", type="conversion", payload="{}", status="failed",
                            error="InvalidContact: email: not a valid email address")
    finally:
        close_database()
    # the console provider sends at once: wait for the three welcome emails
    wait_until(lambda: api(running, "GET", "/campaigns/welcome/analytics")["overall"]["sent"] == 3, 30,
               "the three welcome emails sent")
    yield running


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    chromium = require_tool("chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def test_every_console_page_renders_in_chromium_without_javascript_and_shows_the_apis_figures(
        daemon: DaemonProcess, browser: Any) -> None:
    base = f"http://127.0.0.1:{daemon.admin_port}"
    page = browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 900}).new_page()
    refused: list[str] = []
    page.on("console", lambda message: refused.append(message.text) if message.type == "error" else None)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # Not signed in: the console sends the browser to the login form; a wrong token is refused
    page.goto(base + "/")
    assert page.url == base + "/login"
    page.fill("#token", "not-the-token")
    page.click("input[type=submit]")
    assert page.inner_text("#problem") == "That is not the admin token."
    page.screenshot(path=str(ARTIFACTS / "login.png"), full_page=True)
    # Signed in with the admin token: the overview
    page.fill("#token", TOKEN)
    page.click("input[type=submit]")
    assert page.url == base + "/"
    refused.clear()  # the wrong token's 401 was logged as a failed load
    page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)
    analytics = api(daemon, "GET", "/campaigns/welcome/analytics")
    step0 = analytics["steps"][0]["funnel"]
    card = page.locator("#funnel-welcome-0")
    for figure in ("planned", "sent"):
        assert card.locator(f"[data-figure={figure}]").inner_text() == str(step0[figure]), figure
    health = json.loads(urllib.request.urlopen(f"{base}/health/details", timeout=10).read())
    assert page.inner_text("#health-status") == health["status"]
    listed = page.locator("#health td:first-child").all_inner_texts()
    assert listed == list(health["components"])
    assert "not a valid email address" in page.inner_text("#failed-events")
    email = page.locator("#channels tr[data-channel=email] td").all_inner_texts()
    assert email[0] == "email" and email[1] == "10 per 1 s"
    # The campaign's page: its funnel overall and per step, the API's figures
    page.click("#campaign-welcome h3 a")
    assert page.url == base + "/campaigns/welcome"
    page.screenshot(path=str(ARTIFACTS / "campaign.png"), full_page=True)
    overall = page.locator("#funnel-overall")
    for figure in ("planned", "sent", "delivered", "clicked", "converted"):
        api_name = {"clicked": "clicked", "converted": "converted"}.get(figure, figure)
        assert overall.locator(f"[data-figure={figure}]").inner_text() == str(analytics["overall"][api_name]), figure
    assert analytics["enrolled"]
    for status, count in analytics["enrolled"].items():
        assert page.inner_text(f"[data-enrolled={status}]") == str(count), status
    # A contact's decision log, by the search box
    page.goto(base + "/contacts")
    page.fill("#q", "C0@example.com")
    page.click("form.search input[type=submit]")
    page.screenshot(path=str(ARTIFACTS / "contact.png"), full_page=True)
    decisions = api(daemon, "GET", "/contacts/1/decisions")["items"]
    rows = page.locator("#decisions tr").all_inner_texts()[1:]
    assert len(rows) == len(decisions) >= 1 and decisions[0]["outcome"] in rows[0]
    assert "Ada" in page.inner_text("#contact")
    # The pages need no script and load nothing the security policy refuses
    assert refused == []
    # Logged out: back to the form
    page.click("header form button")
    assert page.url == base + "/login"
    page.goto(base + "/campaigns/welcome")
    assert page.url == base + "/login"



async def test_a_malformed_session_cookie_is_no_session_not_a_500(aiohttp_client, migrated_db: str) -> None:  # type: ignore[no-untyped-def]
    # found by a review: "²" passed isdigit() and failed int(); 5,000 digits are more than int() reads
    from daemon.web.app import build_admin_app
    from daemon.web.console.session import COOKIE
    from tests.support.settings import make_settings

    client = await aiohttp_client(build_admin_app(make_settings(DATABASE_URL=migrated_db, ADMIN_TOKEN=TOKEN)))
    for value in ("².x", "9" * 5000 + ".x", "", ".", "1.", "0", "99999999999999999999.ab", "-1.x"):
        async with client.get("/", cookies={COOKIE: value}, allow_redirects=False) as response:
            assert (response.status, response.headers.get("Location")) == (303, "/login"), value
    # and a logout posted without the session (another site's form) ends nothing
    async with client.post("/logout", allow_redirects=False) as response:
        assert response.status == 303 and COOKIE not in response.cookies

"""End to end in a real browser: the page at / and its live seat map.

Two browser contexts show one seated event. A registers on the page, reserves a seat,
reloads (the hold is still shown), pays and signs out (its refresh token is revoked); B,
already showing the seat map, sees that seat turn HELD and then BOOKED without reloading:
the page's own graphql-transport-ws client over the browser's WebSocket. The app runs under
uvicorn in this event loop on the embedded SQLite database; the browser is Debian's
Chromium (`apt-get install chromium`), driven by Playwright without `playwright install`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import replace
from pathlib import Path

import jwt
import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, async_playwright
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import Seat
from app.settings import Settings
from app.web import create_app
from tests.conftest import _service_missing
from tests.factories import SMALL_SEAT_MAP, make_event, make_user, token_for
from tests.servers import serve_in_process

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TIMEOUT_MS = 10_000  # turns a hang into a failure; every wait below ends far sooner when all is well


@pytest.fixture
def backend() -> str:
    """The embedded database only: this test is about the page, not the storage."""
    return "sqlite"


def require_chromium() -> None:
    if not CHROMIUM.exists():
        # Skips loudly (the session summary names it), or fails when REQUIRE_SERVICES=1.
        _service_missing("Chromium", f"{CHROMIUM} not found; install it with `apt-get install chromium`")


async def seat_id(sessionmaker: async_sessionmaker[AsyncSession], event_id: int, section: str, row: str,
                  number: int) -> str:
    async with sessionmaker() as session:
        found = await session.scalar(select(Seat.id).where(
            Seat.event_id == event_id, Seat.section == section, Seat.row == row, Seat.number == number))
    assert found is not None
    return str(found)


async def open_page(browser: Browser, problems: list[str], locale: str | None = None) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(viewport={"width": 1200, "height": 800}, locale=locale)
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(
        f"console: {message.text} ({message.location.get('url')})") if message.type == "error" else None)
    return context, page


async def register_on_page(page: Page, name: str) -> None:
    """Sign up through the page's form, as a buyer would, and wait until it shows the buyer."""
    email = f"{name.lower()}@example.com"
    await page.fill("#auth-email", email)
    await page.fill("#auth-password", "correct horse battery")
    await page.fill("#auth-name", name)
    await page.click("#register-btn")
    await page.wait_for_selector(f"#user-name:text('{name} ({email})')")


async def outlive_access_token(page: Page) -> str:
    """Wait until the page's access token has expired (tests give it a short lifetime); that token."""
    token = await page.evaluate("sessionStorage.getItem('bme.token')")
    expires_at = jwt.decode(token, options={"verify_signature": False})["exp"]
    await asyncio.sleep(max(0.0, expires_at - time.time()) + 0.5)
    return str(token)


async def test_seat_map_follows_another_browser_live(settings: Settings,
                                                     sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    require_chromium()
    event = await make_event(sessionmaker, seat_map=SMALL_SEAT_MAP, name="Browser Night")
    seat = await seat_id(sessionmaker, event.id, "Stalls", "A", 5)
    viewer = await make_user(sessionmaker)
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    seat_in = f'#seat-map [data-seat-id="{seat}"]'

    async with serve_in_process(create_app(settings)) as address, async_playwright() as playwright:
        base = f"http://{address}"
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                                   headless=True, timeout=30_000)
        try:
            # B: signed in by a token put in sessionStorage, watching the event's seat map.
            b_context, b = await open_page(browser, problems)
            await b_context.add_init_script(
                f"sessionStorage.setItem('bme.token', {json.dumps(token_for(viewer, settings))})")
            await b.goto(f"{base}/#event/{event.id}")
            await b.wait_for_selector(f"#user-name:text('{viewer.email}')")
            await b.wait_for_selector('#live-state[data-state="live"]')
            await b.wait_for_selector(f'{seat_in}[data-status="AVAILABLE"]')
            await b.evaluate("window.sameDocument = true")  # gone if the page reloads

            # A: picks the event from the list, fails to sign in, registers.
            a_context, a = await open_page(browser, problems)
            await a.goto(base)
            await a.click(f'#event-list [data-event-id="{event.id}"]')
            await a.wait_for_selector('#live-state[data-state="live"]')
            assert await a.text_content("#reserve-hint") == "Sign in to reserve."
            await a.fill("#auth-email", "buyer@example.com")
            await a.fill("#auth-password", "correct horse battery")
            await a.click("#login-btn")
            await a.wait_for_selector("#messages .error:text('Email or password is incorrect')")
            await a.fill("#auth-name", "Buyer")
            await a.click("#register-btn")
            await a.wait_for_selector("#user-name:text('Buyer (buyer@example.com)')")
            assert await a.evaluate("sessionStorage.getItem('bme.token')")

            # A reserves the seat: A sees its hold with a countdown, B sees the seat HELD.
            await a.click(seat_in)
            assert await a.get_attribute(seat_in, "aria-pressed") == "true"
            await a.click("#reserve-btn")
            await a.wait_for_selector('#hold[data-status="PENDING"]')
            assert re.fullmatch(r"expires in [45]:\d\d", await a.text_content("#hold-countdown") or "")
            await a.wait_for_selector(f'{seat_in}.mine[data-status="HELD"]')
            await a.screenshot(path=ARTIFACTS / "browser-a-held.png", full_page=True)
            await b.wait_for_selector(f'{seat_in}[data-status="HELD"]')
            assert await b.is_disabled(seat_in)
            await b.screenshot(path=ARTIFACTS / "browser-b-held.png", full_page=True)
            # A reloads: still signed in, and the hold is still there to pay for.
            await a.reload()
            await a.wait_for_selector("#user-name:text('Buyer (buyer@example.com)')")
            await a.wait_for_selector('#hold[data-status="PENDING"]')
            await a.wait_for_selector(f'{seat_in}.mine[data-status="HELD"]')

            # A pays: a ticket link; B sees the seat BOOKED and one place fewer.
            await a.click("#pay-btn")
            await a.wait_for_selector('#hold[data-status="CONFIRMED"]')
            ticket_url = await a.get_attribute("#ticket-link", "href")
            assert ticket_url and ticket_url.startswith(f"{base}/tickets/")
            assert (await a_context.request.get(ticket_url)).status == 200
            await b.wait_for_selector(f'{seat_in}[data-status="BOOKED"]')
            await b.wait_for_selector("#available-seats:text-is('29')")
            assert await b.evaluate("window.sameDocument") is True
            await a.screenshot(path=ARTIFACTS / "browser-a-booked.png", full_page=True)
            await b.screenshot(path=ARTIFACTS / "browser-b-booked.png", full_page=True)
            # A signs out: the session ends on the server too, so its refresh token is dead.
            refresh = await a.evaluate("sessionStorage.getItem('bme.refresh')")
            assert refresh
            await a.click("#logout-btn")
            await a.wait_for_selector("#auth-form:not([hidden])")
            assert await a.evaluate("[sessionStorage.getItem('bme.token'), sessionStorage.getItem('bme.refresh')]") \
                == [None, None]
            assert await a.is_hidden("#hold")
            renewed = await a_context.request.post(f"{base}/graphql", data={"query": (
                "mutation($t: String!) { refreshToken(refreshToken: $t) { accessToken errors { code } } }"),
                "variables": {"t": refresh}})
            assert (await renewed.json())["data"]["refreshToken"]["accessToken"] is None
            assert problems == []
        finally:
            await browser.close()


async def test_a_page_left_open_past_its_access_token_still_reserves(
        settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    require_chromium()
    event = await make_event(sessionmaker, seat_map=SMALL_SEAT_MAP, name="Late Show")
    seat_in = f'#seat-map [data-seat-id="{await seat_id(sessionmaker, event.id, "Stalls", "B", 2)}"]'
    problems: list[str] = []
    short_lived = replace(settings, access_token_ttl_seconds=2)
    async with serve_in_process(create_app(short_lived)) as address, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                                   headless=True, timeout=30_000)
        try:
            _, page = await open_page(browser, problems)
            await page.goto(f"http://{address}/#event/{event.id}")
            await register_on_page(page, "Late")
            first = await outlive_access_token(page)
            # The reserve is refused for the expired token, renewed, and sent again: the buyer
            # sees only the hold.
            await page.click(seat_in)
            await page.click("#reserve-btn")
            await page.wait_for_selector('#hold[data-status="PENDING"]')
            assert await page.text_content("#messages") == ""
            assert await page.evaluate("sessionStorage.getItem('bme.token')") != first
            # The refused call is a 401 (UNAUTHENTICATED), which the browser's console reports.
            assert [problem for problem in problems if "status of 401" not in problem] == []
        finally:
            await browser.close()


async def test_playground_works_offline(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """GraphiQL at /graphql with every request to another host refused: its scripts, styles and
    fonts all come from the app; the default query runs; the docs explorer reads the schema."""
    require_chromium()
    await make_event(sessionmaker, name="Offline Gala")
    problems: list[str] = []
    elsewhere: list[str] = []
    async with serve_in_process(create_app(settings)) as address, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                                   headless=True, timeout=30_000)
        try:
            context, page = await open_page(browser, problems)

            async def only_the_app(route: Route) -> None:
                if route.request.url.startswith((f"http://{address}/", f"ws://{address}/")):
                    await route.continue_()
                else:
                    elsewhere.append(route.request.url)
                    await route.abort()

            await context.route("**/*", only_the_app)
            await page.goto(f"http://{address}/graphql")
            await page.wait_for_selector(".graphiql-container")
            headers = await page.evaluate("document.querySelector("
                                          "'.graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror')"
                                          ".CodeMirror.getValue()")
            assert json.loads(headers) == {"Authorization": "Bearer "}  # open, ready for a token
            await page.click(".graphiql-execute-button")
            await page.wait_for_selector(".result-window:has-text('Offline Gala')")
            result = await page.evaluate("document.querySelector('.result-window .CodeMirror').CodeMirror.getValue()")
            assert json.loads(result)["data"]["events"]["totalCount"] == 1
            await page.click("[aria-label='Show Documentation Explorer']")
            await page.wait_for_selector(".graphiql-doc-explorer :text('Root Types')")
            await page.screenshot(path=ARTIFACTS / "playground.png", full_page=True)
            assert elsewhere == []
            assert problems == []
        finally:
            await browser.close()
